"""cnn-lstm: convolutional image branch, Embedding + LSTM text branch, concatenation fusion, MLP head.

    image (B,C,S,S)   -> normalize -> conv blocks -> mean over H,W -> (B, C)          image branch
    input_ids (B,T)   -> Embedding -> LSTM -> output at the last real token (B, H)     text branch
    concat (B, C+H)   -> Linear + ReLU (B, F)                                          fusion
                      -> Linear (B, classes)                                           head

Global pooling before the concat keeps the fused width small whatever the image size. ``x.mean((2, 3))``
rather than AdaptiveAvgPool2d + flatten: the latter hides the conv channels behind a Reshape. The options
(:class:`~mmedge.models.options.CnnLstmConfig`) live in ``mmedge.models.options`` so recipes validate them
without torch.
"""

from __future__ import annotations

import torch
from torch import nn

from mmedge.data.images import ImagePreprocessing
from mmedge.models.options import CnnLstmConfig, ImageOptions
from mmedge.models.registry import register_model
from mmedge.models.spec import ModelSpec, image_text_spec


class ImageNormalize(nn.Module):
    """(x - mean) / std inside the graph, so an app feeds pixels scaled to [0, 1] and cannot forget it."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def image_preprocessing(config: ImageOptions) -> ImagePreprocessing:
    """The model's image input as its options say (fitted to the training data by mmedge.train)."""
    return ImagePreprocessing(
        height=config.image_size,
        width=config.image_size,
        channels=config.channels,
        mean=tuple(config.image_mean),
        std=tuple(config.image_std),
        foreground=config.foreground,
    )


def last_token(seq: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """seq (B, T, H) at each row's last real token -> (B, H). Empty text takes position 0."""
    last = (attention_mask.sum(1) - 1).clamp(min=0)  # (B,)
    index = last.view(-1, 1, 1).expand(-1, 1, seq.shape[2])  # (B, 1, H)
    return torch.gather(seq, 1, index)[:, 0]  # index, not squeeze(1): squeeze exports as an If node


@register_model("cnn-lstm", CnnLstmConfig)
class CnnLstm(nn.Module):
    def __init__(self, config: CnnLstmConfig, vocab_size: int, num_classes: int):
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        prep = image_preprocessing(config)
        self.prep = prep
        self.normalize = ImageNormalize(prep.mean, prep.std)
        blocks: list[nn.Module] = []
        c_in = prep.channels
        for i, c_out in enumerate(config.conv_channels):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i < len(config.conv_channels) - 1:
                blocks.append(nn.MaxPool2d(2))
            c_in = c_out
        self.image_encoder = nn.Sequential(*blocks)
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=0)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden_size, batch_first=True)
        f1, f2 = config.fusion_widths()
        self.fusion = nn.Sequential(
            nn.Linear(c_in + config.hidden_size, f1),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(f1, f2),
            nn.ReLU(),
            nn.Dropout(config.dropout),
        )
        self.head = nn.Linear(f2, num_classes)

    def spec(self) -> ModelSpec:
        return image_text_spec(
            "cnn-lstm",
            self.prep,
            self.config.max_text_length,
            self.num_classes,
            branches={
                "image": ("normalize", "image_encoder"),
                "text": ("embedding", "lstm"),
                "fusion": ("fusion",),
                "head": ("head",),
            },
        )

    def prune_fixed_modules(self) -> list[nn.Module]:
        """Layers whose output width structured pruning must keep: the classifier (one output per label)."""
        return [self.head]

    def current_options(self) -> dict:
        """The options that rebuild this model as it is now (widths read from the layers, e.g. after pruning)."""
        convs = [m for m in self.image_encoder if isinstance(m, nn.Conv2d)]
        f1, f2 = self.fusion[0].out_features, self.fusion[3].out_features
        return {
            **self.config.model_dump(mode="json"),
            "conv_channels": [c.out_channels for c in convs],
            "embed_dim": self.embedding.embedding_dim,
            "hidden_size": self.lstm.hidden_size,
            "fusion_dim": f1 if f1 == f2 else [f1, f2],
        }

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(self.normalize(image)).mean((2, 3))  # (B, C)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq, _ = self.lstm(self.embedding(input_ids))  # (B, T, H); padding is at the end, so
        return last_token(seq, attention_mask)  # outputs up to the last real token ignore it

    def forward_features(
        self, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits from encoded images (B, C): training encodes each image once for all its questions."""
        both = torch.cat([image_features, self.encode_text(input_ids, attention_mask)], dim=1)
        return self.head(self.fusion(both))  # (B, classes)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_features(self.encode_image(image), input_ids, attention_mask)
