"""effnet-minilm: pretrained EfficientNet-Lite0 and all-MiniLM-L6-v2 towers, late fusion, an answer head.

    image (B,3,S,S) -> normalize (ImageNet weights' statistics) -> EfficientNet-Lite0 -> mean pool (B, 1280)
                    -> Linear (B, F)                                                            image branch
    input_ids (B,T) -> MiniLM (6 post-LN BERT layers) -> mean over real tokens (B, 384)
                    -> Linear (B, F)                                                            text branch
    [i, t, i * t] (B, 3F) -> Linear + GELU + dropout (B, H)                                     fusion
                          -> Linear (B, answers)                                                head

Late fusion keeps the towers apart until the last layers: each can be compressed, quantized and shipped as its own
part (vision, text, head), and a tower's output depends on its input alone. Training uses that: the frozen part
of each tower runs once per image and once per distinct question, and only the layers that train run every step
(``train_image_blocks``, ``train_text_layers``). The exported graph also outputs both projections
(``image_embeds``, ``text_embeds``, (B, F)), where ``bundle`` with ``split: true`` cuts it into its parts.
BatchNorm and dropout inside the towers stay in inference mode while the rest trains: the towers keep the
statistics they were pretrained with.

The towers' weights are loaded by :meth:`EffnetMiniLM.prepare`, which mmedge calls when it trains a model for data;
a model rebuilt from a checkpoint gets every weight from the checkpoint and needs no package.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from mmedge.data.images import ImagePreprocessing
from mmedge.models.cnn_lstm import ImageNormalize
from mmedge.models.efficientnet_lite import LITE0_BLOCKS, LITE0_MEAN, LITE0_STD, BlockSpec, EfficientNetLite
from mmedge.models.minilm import MiniLM, mean_pool
from mmedge.models.options import EffnetMiniLMConfig
from mmedge.models.registry import register_model
from mmedge.models.spec import ModelSpec, TensorSpec, image_text_spec


def _tokenizer(config: EffnetMiniLMConfig):
    from mmedge.models.minilm import minilm_tokenizer

    return minilm_tokenizer(config.max_text_length)


@register_model("effnet-minilm", EffnetMiniLMConfig, tokenizer=_tokenizer)
class EffnetMiniLM(nn.Module):
    late_fusion = True  # logits = fuse(encode_image(image), encode_text(text)): each tower cached on its own

    def __init__(self, config: EffnetMiniLMConfig, vocab_size: int, num_classes: int):
        super().__init__()
        c = config
        self.config = c
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.prep = ImagePreprocessing(
            height=c.image_size, width=c.image_size, channels=3, mean=LITE0_MEAN, std=LITE0_STD, foreground="natural"
        )
        self.normalize = ImageNormalize(self.prep.mean, self.prep.std)
        blocks = tuple(BlockSpec(*b) for b in c.image_blocks) if c.image_blocks else LITE0_BLOCKS
        self.image_tower = EfficientNetLite(blocks=blocks, stem=c.image_stem or 32, head=c.image_head or 1280)
        self.image_proj = nn.Linear(c.image_head or 1280, c.fusion_dim)
        self.text_tower = MiniLM(
            vocab_size=vocab_size,
            layers=c.text_layers,
            heads=c.text_heads,
            ffn=c.text_ffn,
            max_positions=c.text_positions or 512,
        )
        self.text_proj = nn.Linear(self.text_tower.dim, c.fusion_dim)
        self.fusion = nn.Sequential(nn.Linear(3 * c.fusion_dim, c.fusion_hidden), nn.GELU(), nn.Dropout(c.dropout))
        self.head = nn.Linear(c.fusion_hidden, num_classes)
        self.export_embeddings = False  # set by the exporter: also output each tower's projection, to split at
        self._freeze()

    def prepare(self, classes: tuple[str, ...], tokenizer) -> None:
        """Load the packaged pretrained weights into both towers (mmedge calls this before training)."""
        if not self.config.pretrained:
            return
        from mmedge.models.efficientnet_lite import load_lite0_imagenet
        from mmedge.models.minilm import load_minilm_weights

        load_lite0_imagenet(self.image_tower)
        load_minilm_weights(self.text_tower)

    def _freeze(self) -> None:
        """Frozen: every tower parameter but those of the last ``train_image_blocks`` image blocks (and the head
        conv) and the last ``train_text_layers`` text layers."""
        c = self.config
        for p in [*self.image_tower.parameters(), *self.text_tower.parameters()]:
            p.requires_grad_(False)
        for module in self.trained_image_modules() + list(
            self.text_tower.residual_layers()[c.text_layers - c.train_text_layers :]
        ):
            for p in module.parameters():
                p.requires_grad_(True)

    def set_trained(self, image_blocks: int, text_layers: int) -> None:
        """Train the last ``image_blocks`` image blocks (with the head conv) and the last ``text_layers`` text
        layers from now on, and freeze the rest (e.g. to fine-tune towers after pruning)."""
        self.config = self.config.model_copy(
            update={
                "train_image_blocks": min(image_blocks, len(self.image_tower.blocks)),
                "train_text_layers": min(text_layers, len(self.text_tower.layers)),
                "text_layers": len(self.text_tower.layers),
            }
        )
        self._freeze()

    def trained_image_modules(self) -> list[nn.Module]:
        n = self.config.train_image_blocks
        return [] if n == 0 else [*self.image_tower.blocks[-n:], *self.image_tower.head_modules()]

    def train(self, mode: bool = True):
        """Train mode for the projections, fusion and head; the towers' BatchNorm and dropout keep inference
        behaviour, so their pretrained statistics hold."""
        super().train(mode)
        self.image_tower.eval()
        self.text_tower.eval()
        return self

    def spec(self) -> ModelSpec:
        spec = image_text_spec(
            "effnet-minilm",
            self.prep,
            self.config.max_text_length,
            self.num_classes,
            branches={
                "image": ("normalize", "image_tower", "image_proj"),
                "text": ("text_tower", "text_proj"),
                "fusion": ("fusion",),
                "head": ("head",),
            },
            atol=2e-4,
        )
        embeds = tuple(
            TensorSpec(name, "float32", ("batch", self.image_proj.out_features))
            for name in ("image_embeds", "text_embeds")
        )
        return replace(spec, outputs=spec.outputs + embeds)  # the bundle splits at them: vision, text, head

    def prune_fixed_modules(self) -> list[nn.Module]:
        """Layers whose output width structured pruning must keep: the classifier (one output per answer) and the
        text layers that write MiniLM's residual stream."""
        return [self.head, *self.text_tower.prune_fixed_modules()]

    def residual_blocks(self) -> dict[str, nn.ModuleList]:
        """The blocks depth pruning may drop: the text tower's layers (each only adds to its residual stream)."""
        return {"text": self.text_tower.residual_layers()}

    def current_options(self) -> dict:
        """The options that rebuild this model as it is now (tower widths and depth read from the layers)."""
        stem, blocks, head = self.image_tower.current_shape()
        text = self.text_tower.current_options()
        return {
            **self.config.model_dump(mode="json"),
            "image_blocks": [list(b) for b in blocks],
            "image_stem": stem,
            "image_head": head,
            "text_layers": text["layers"],
            "text_heads": list(text["heads"]),
            "text_ffn": list(text["ffn"]),
            "text_positions": None if text["max_positions"] == 512 else text["max_positions"],
            "fusion_dim": self.image_proj.out_features,
            "fusion_hidden": self.fusion[0].out_features,
        }

    def keep_tokens(self, old_ids: list[int]) -> None:
        """Vocabulary pruning: keep the word embeddings of ``old_ids`` (see
        :func:`mmedge.compress.vocab.trim_wordpiece`) and the position embeddings of ``max_text_length`` tokens, the
        most the tokenizer gives."""
        self.text_tower.keep_tokens(old_ids, max_positions=self.config.max_text_length)
        self.vocab_size = len(old_ids)
        self._freeze()

    # --- cached forward: frozen prefix once per image / question, trained suffix every step ---

    def image_prefix(self, image: torch.Tensor) -> torch.Tensor:
        """What the frozen part of the image tower gives for ``image``: pooled features (B, 1280) when the tower is
        frozen, else the activation map entering the first trained block."""
        x = self.normalize(image)
        n = self.config.train_image_blocks
        return self.image_tower.forward_features(x) if n == 0 else self.image_tower.forward_until(x, -n)

    def image_suffix(self, prefix: torch.Tensor) -> torch.Tensor:
        n = self.config.train_image_blocks
        features = prefix if n == 0 else self.image_tower.forward_from(prefix, -n)
        return self.image_proj(features)

    def text_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled text features (B, 384) when the text tower is frozen, else the token states (B, T, 384) entering
        the first trained layer."""
        n = self.config.train_text_layers
        if n == 0:
            return mean_pool(self.text_tower(input_ids, attention_mask), attention_mask)
        return self.text_tower.forward_until(input_ids, attention_mask, self.config.text_layers - n)

    def text_suffix(self, prefix: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n = self.config.train_text_layers
        if n == 0:
            return self.text_proj(prefix)
        states = self.text_tower.forward_from(prefix, attention_mask, self.config.text_layers - n)
        return self.text_proj(mean_pool(states, attention_mask))

    # --- the whole model ---

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_suffix(self.image_prefix(image))  # (B, F)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text_suffix(self.text_prefix(input_ids, attention_mask), attention_mask)  # (B, F)

    def fuse(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.head(self.fusion(torch.cat([image, text, image * text], 1)))  # (B, answers)

    def forward_features(
        self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.fuse(features, self.encode_text(input_ids, attention_mask))

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        image_embeds, text_embeds = self.encode_image(image), self.encode_text(input_ids, attention_mask)
        logits = self.fuse(image_embeds, text_embeds)
        return (logits, image_embeds, text_embeds) if self.export_embeddings else logits
