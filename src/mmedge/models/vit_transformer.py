"""vit-transformer: ViT image encoder, transformer text encoder with a padding mask, cross-attention fusion.

    image (B,C,S,S)   -> normalize -> patch embedding (B, P, D) + positions -> encoder blocks   image branch
    input_ids (B,T)   -> [query] + word embeddings (B, 1+T, D) + positions -> masked blocks   text branch
    fusion="cross":  text tokens attend to image patches; the query token's output (B, D)       fusion
    fusion="concat": [mean of patches, query token] -> Linear (B, D)
                     -> LayerNorm + Linear (B, classes)                                          head

Attention uses separate q/k/v/out Linear layers (not nn.MultiheadAttention) so that heads can be pruned
channel-wise later. The learned query token is always present, so a question that is empty still yields a
representation (and, with cross-attention, still looks at the image). The padding mask is additive and
finite (-1e4, not -inf): an -inf mask ruins int8 calibration and overflows float16. The options
(:class:`~mmedge.models.options.VitTransformerConfig`) live in ``mmedge.models.options`` so recipes validate them
without torch.
"""

from __future__ import annotations

import torch
from torch import nn

from mmedge.models.cnn_lstm import ImageNormalize, image_preprocessing
from mmedge.models.options import VitTransformerConfig
from mmedge.models.registry import register_model
from mmedge.models.spec import ModelSpec, image_text_spec

MASK_VALUE = -1e4


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (prunable per head)."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.num_heads = heads  # structured pruning removes whole heads and updates this
        self.head_dim = head_dim
        self.q = nn.Linear(dim, heads * self.head_dim)
        self.k = nn.Linear(dim, heads * self.head_dim)
        self.v = nn.Linear(dim, heads * self.head_dim)
        self.out = nn.Linear(heads * self.head_dim, dim)
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(context)), self._split(self.v(context))
        scores = q @ k.transpose(-1, -2) * (self.head_dim**-0.5)  # (B, h, Tq, Tk)
        if bias is not None:
            scores = scores + bias  # (B, 1, 1, Tk) additive padding mask
        attn = self.drop(scores.softmax(-1))
        y = (attn @ v).transpose(1, 2)  # (B, Tq, h, d)
        return self.out(y.reshape(y.shape[0], y.shape[1], self.num_heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm transformer block; with ``cross=True`` the attention reads a separate context."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int, dropout: float, cross: bool = False):
        super().__init__()
        self.cross = cross
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.attn = Attention(dim, heads, head_dim, dropout)
        # The cross-attention output is layer-normed before it joins the text stream, so the image's
        # contribution (an average over patches, small at first) enters at the text token's scale.
        self.norm_cross = nn.LayerNorm(dim) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.norm1(x)
        ctx = self.norm_context(context) if self.norm_context is not None else h
        a = self.attn(h, ctx, bias)
        x = x + (self.norm_cross(a) if self.norm_cross is not None else a)
        return x + self.mlp(self.norm2(x))


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (1, height * width, dim); dim must be divisible by 4."""
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / max(1, dim // 4 - 1))
    y = y.flatten()[:, None] * omega[None]
    x = x.flatten()[:, None] * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)[None]


def _patch_embedding(c: VitTransformerConfig, channels: int) -> nn.Module:
    """(B, C, H, W) -> (B, dim, H / patch_size, W / patch_size)."""
    if c.patch_embed == "linear" or c.patch_size == 1:
        return nn.Conv2d(channels, c.dim, c.patch_size, stride=c.patch_size)
    layers: list[nn.Module] = []
    width, size = channels, c.patch_size
    while size > 1:  # each 3x3 stride-2 conv halves the grid; widths grow to dim at the last one
        out = c.dim if size == 2 else max(8, c.dim // size)
        layers += [nn.Conv2d(width, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        width, size = out, size // 2
    layers.append(nn.Conv2d(c.dim, c.dim, 1))  # the linear projection of ViT, on the stem's features
    return nn.Sequential(*layers)


@register_model("vit-transformer", VitTransformerConfig)
class VitTransformer(nn.Module):
    def __init__(self, config: VitTransformerConfig, vocab_size: int, num_classes: int):
        super().__init__()
        c = config
        self.config = c
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.prep = image_preprocessing(c)
        self.normalize = ImageNormalize(self.prep.mean, self.prep.std)
        self.patch_embed = _patch_embedding(c, self.prep.channels)
        grid = c.image_size // c.patch_size
        if c.image_positions == "sincos":
            self.register_buffer("image_pos", sincos_2d(grid, grid, c.dim))  # (1, P, D), fixed
        else:
            self.image_pos = nn.Parameter(torch.randn(1, grid * grid, c.dim) * 0.02)  # (1, P, D), learned
        n_cross = c.fusion_layers if c.fusion == "cross" else 0
        heads = list(c.block_heads or [c.heads] * (c.image_layers + c.text_layers + n_cross))
        hidden = list(c.block_mlp or [c.dim * c.mlp_ratio] * len(heads))

        def block(cross: bool = False) -> Block:  # consumes the next entry of the per-block widths
            return Block(c.dim, heads.pop(0), c.dim // c.heads, hidden.pop(0), c.dropout, cross=cross)

        self.image_blocks = nn.ModuleList(block() for _ in range(c.image_layers))
        self.image_norm = nn.LayerNorm(c.dim)
        self.embedding = nn.Embedding(vocab_size, c.dim, padding_idx=0)
        self.text_query = nn.Parameter(torch.randn(1, 1, c.dim) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, c.max_text_length + 1, c.dim) * 0.02)
        self.text_blocks = nn.ModuleList(block() for _ in range(c.text_layers))
        self.text_norm = nn.LayerNorm(c.dim)
        if c.fusion == "cross":
            self.fusion = nn.ModuleList(block(cross=True) for _ in range(c.fusion_layers))
        else:
            self.fusion = nn.ModuleList([nn.Sequential(nn.Linear(2 * c.dim, c.dim), nn.GELU())])
        self.head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, num_classes))

    def spec(self) -> ModelSpec:
        return image_text_spec(
            "vit-transformer",
            self.prep,
            self.config.max_text_length,
            self.num_classes,
            branches={
                "image": ("normalize", "patch_embed", "image_pos", "image_blocks", "image_norm"),
                "text": ("embedding", "text_query", "text_pos", "text_blocks", "text_norm"),
                "fusion": ("fusion",),
                "head": ("head",),
            },
            atol=2e-4,
        )

    def blocks(self) -> list[Block]:
        """Every transformer block in the order of ``block_heads``: image, text, fusion."""
        fusion = list(self.fusion) if self.config.fusion == "cross" else []
        return [*self.image_blocks, *self.text_blocks, *fusion]

    def prune_fixed_modules(self) -> list[nn.Module]:
        """Layers whose output width structured pruning must keep: the classifier, and every layer that writes
        the residual stream (patch embedding, attention and MLP outputs), whose width ``dim`` all blocks share."""
        fixed: list[nn.Module] = [self.head[1], *(m for m in self.patch_embed.modules() if isinstance(m, nn.Conv2d))]
        for b in self.blocks():
            fixed += [b.attn.out, b.mlp[3]]
        if self.config.fusion == "concat":
            fixed.append(self.fusion[0][0])
        return fixed

    def residual_blocks(self) -> dict[str, nn.ModuleList]:
        """Per branch, the blocks that only add to the residual stream, so that removing one leaves a working
        model (depth pruning): image and text encoder blocks; the fusion keeps at least one."""
        return {"image": self.image_blocks, "text": self.text_blocks}

    def current_options(self) -> dict:
        """The options that rebuild this model as it is now (depth, heads and widths read from the layers)."""
        blocks = self.blocks()
        heads = [b.attn.num_heads for b in blocks]
        hidden = [b.mlp[0].out_features for b in blocks]
        c = self.config
        return {
            **c.model_dump(mode="json"),
            "image_layers": len(self.image_blocks),
            "text_layers": len(self.text_blocks),
            "block_heads": None if set(heads) <= {c.heads} else heads,
            "block_mlp": None if set(hidden) <= {c.dim * c.mlp_ratio} else hidden,
        }

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(image)).flatten(2).transpose(1, 2) + self.image_pos  # (B, P, D)
        for block in self.image_blocks:
            x = block(x)
        return self.image_norm(x)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = input_ids.shape[0], input_ids.shape[1]
        x = torch.cat([self.text_query.expand(b, -1, -1), self.embedding(input_ids)], 1)  # (B, 1+T, D)
        x = x + self.text_pos[:, : t + 1]
        keep = torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask], 1)  # (B, 1+T)
        bias = (1.0 - keep[:, None, None, :].to(x.dtype)) * MASK_VALUE  # (B, 1, 1, 1+T)
        for block in self.text_blocks:
            x = block(x, bias=bias)
        return self.text_norm(x), bias

    def forward_features(
        self, patches: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits from encoded images (B, P, D): training encodes each image once for all its questions."""
        text, _ = self.encode_text(input_ids, attention_mask)
        if self.config.fusion == "cross":
            for block in self.fusion:
                text = block(text, context=patches)
            fused = text[:, 0]  # (B, D): the query token
        else:
            fused = self.fusion[0](torch.cat([patches.mean(1), text[:, 0]], 1))
        return self.head(fused)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.encode_image(image), input_ids, attention_mask)
