"""vit-transformer: ViT image encoder, transformer text encoder with a padding mask, cross-attention fusion.

    image (B,1,28,28) -> normalize -> patch embedding (B, P, D) + positions -> encoder blocks   image branch
    input_ids (B,T)   -> [query] + word embeddings (B, 1+T, D) + positions -> masked blocks   text branch
    fusion="cross":  text tokens attend to image patches; the query token's output (B, D)       fusion
    fusion="concat": [mean of patches, query token] -> Linear (B, D)
                     -> LayerNorm + Linear (B, classes)                                          head

Attention uses separate q/k/v/out Linear layers (not nn.MultiheadAttention) so that heads can be pruned
channel-wise later. The learned query token is always present, so a question that is empty still yields a
representation (and, with cross-attention, still looks at the image). The padding mask is additive and
finite (-1e4, not -inf): an -inf mask ruins int8 calibration and overflows float16.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from mmedge.data.images import ImagePreprocessing
from mmedge.models import FamilyConfig, register_model
from mmedge.models.cnn_lstm import ImageNormalize
from mmedge.models.spec import ModelSpec, image_text_spec

MASK_VALUE = -1e4


class VitTransformerConfig(FamilyConfig):
    dim: int = Field(64, ge=8, description="Token width of both encoders; small enough for ~2 minutes of CPU training.")
    heads: int = Field(4, ge=1, description="Attention heads per block (dim must divide evenly).")
    patch_size: int = Field(
        7, ge=1, description="Square patch side in pixels; 7 gives 4x4 = 16 patches of a 28x28 digit."
    )
    patch_embed: Literal["linear", "conv-stem"] = Field(
        "linear",
        description="'linear': one strided conv per patch (the original ViT). 'conv-stem': stride-2 3x3 "
        "conv + BatchNorm blocks down to the same grid (Xiao et al. 2021); it learned digits faster when trained on "
        "digit labels, but not on digits-vqa's questions, where 'linear' with learned positions did better.",
    )
    image_positions: Literal["learned", "sincos"] = Field(
        "learned", description="Learned position table, or fixed 2-D sin-cos positions (Beyer et al. 2022)."
    )
    image_layers: int = Field(2, ge=0, description="Self-attention blocks in the image encoder.")
    text_layers: int = Field(2, ge=0, description="Self-attention blocks in the text encoder.")
    fusion_layers: int = Field(1, ge=1, description="Cross-attention blocks (text attends to image patches).")
    fusion: Literal["cross", "concat"] = Field(
        "cross", description="'cross': cross-attention fusion; 'concat': concatenate pooled image and text features."
    )
    mlp_ratio: int = Field(2, ge=1, description="Feed-forward width as a multiple of dim.")
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout inside blocks; 0 because this small model "
        "underfits 3,750 training images and dropout slowed it further.",
    )
    block_heads: tuple[int, ...] | None = Field(
        None,
        description="Heads per block (image blocks, then text, then fusion) when they differ, as after structured "
        "pruning removes whole heads; each head keeps dim / heads channels. None: `heads` everywhere.",
    )
    block_mlp: tuple[int, ...] | None = Field(
        None, description="Feed-forward width per block, in the same order, when it differs. None: dim * mlp_ratio."
    )
    max_text_length: int = Field(12, ge=1, description="Longest question in tokens (size of the position table).")
    image_size: int = Field(28, ge=8, description="Input height and width in pixels.")

    @model_validator(mode="after")
    def _check(self):
        if self.dim % self.heads or self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4 and by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        blocks = self.image_layers + self.text_layers + (self.fusion_layers if self.fusion == "cross" else 0)
        for name in ("block_heads", "block_mlp"):
            widths = getattr(self, name)
            if widths is not None and (len(widths) != blocks or min(widths, default=1) < 1):
                raise ValueError(f"{name} needs {blocks} positive numbers (one per block), not {list(widths)}")
        if self.patch_embed == "conv-stem" and self.patch_size & (self.patch_size - 1):
            raise ValueError(
                f"patch_embed 'conv-stem' needs a power-of-two patch_size, not {self.patch_size}; "
                "use patch_embed 'linear'"
            )
        return self


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
        self.prep = ImagePreprocessing(height=c.image_size, width=c.image_size)
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
