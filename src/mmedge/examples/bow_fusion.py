"""Bring any PyTorch module: ``mmedge run --model py:mmedge.examples.bow_fusion:build --trust-code``.

mmedge calls ``build(vocab_size=..., num_classes=..., **options)`` — the recipe's ``model.options`` are passed
through — and takes back the module and its ModelSpec. The module's ``forward`` takes the spec's inputs in order
and returns the logits; the spec says the input names, dtypes and dynamic axes, the image preprocessing and which
modules make up each modality branch (for per-branch quantization and reports). From there mmedge trains it on the
recipe's data, exports it, quantizes, validates, benches and bundles it as it does its own models.

Your own factory lives in your own package or next to your recipe (mmedge adds the working folder to the import
path): ``--model py:my_models:build``.
"""

from __future__ import annotations

import torch
from torch import nn

from mmedge.data.images import ImagePreprocessing
from mmedge.models.spec import ModelSpec, image_text_spec


class BowFusion(nn.Module):
    """A small CNN for the image, the mean of word embeddings for the text, an MLP on both."""

    def __init__(self, vocab_size: int, num_classes: int, width: int = 32):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, width, 3, padding=1),
            nn.ReLU(),
        )
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.fusion = nn.Sequential(nn.Linear(2 * width, 64), nn.ReLU())
        self.head = nn.Linear(64, num_classes)

    def forward(self, image, input_ids, attention_mask):
        x = (image - 0.1307) / 0.3081  # (B, 1, 28, 28); normalization inside the graph
        img = self.image(x).mean((2, 3))  # (B, W)
        m = attention_mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        txt = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, W)
        return self.head(self.fusion(torch.cat([img, txt], dim=-1)))


def build(vocab_size: int, num_classes: int, width: int = 32) -> tuple[nn.Module, ModelSpec]:
    model = BowFusion(vocab_size, num_classes, width)
    spec = image_text_spec(
        "bow-fusion",
        ImagePreprocessing(),  # 28x28 grayscale in [0, 1], as digits-vqa provides
        text_max_length=12,
        num_classes=num_classes,
        branches={"image": ("image",), "text": ("embed",), "fusion": ("fusion",), "head": ("head",)},
    )
    return model, spec
