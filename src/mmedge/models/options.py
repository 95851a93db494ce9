"""The options of every model family — the zoo's and the ``hf:`` / ``py:`` sources' — importable without torch.

A recipe's ``model.options`` are validated when the recipe is parsed, and parsing a recipe needs no torch. A family
module defines an ``nn.Module`` subclass, which needs torch the moment the class is defined, so a family's options
cannot live beside its module and still be read without torch. They live here instead, in one module that imports
only pydantic: the registry's table (:mod:`mmedge.models.registry`) names each zoo family's options class, and the
family module registers its model with that same class (a test checks that they agree).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FamilyConfig(BaseModel):
    """Base of every family's hyper-parameters. Sizes that come from the data are filled in by the caller."""

    model_config = ConfigDict(frozen=True, extra="forbid")


MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # MNIST's training set: the built-in digits' statistics


class ImageOptions(FamilyConfig):
    """The image input of a zoo family. A field the recipe leaves out is taken from the training data when the model
    is built for it (:func:`mmedge.train.fit_image_options`): size and channels from the training pictures, mean and
    std measured on the training split. The defaults below are the built-in digits' (28x28 gray MNIST), which a model
    built without data (tests, a checkpoint from before these fields) keeps."""

    image_size: int = Field(
        28, ge=8, description="Input height and width in pixels; default: the training images' size (longest side)."
    )
    channels: Literal[1, 3] = Field(
        1, description="1 (grayscale) or 3 (RGB); default: 3 when any training image has colour, else 1."
    )
    image_mean: tuple[float, ...] = Field(
        MNIST_MEAN, min_length=1, description="Per-channel mean of [0, 1] pixels; default: measured on train."
    )
    image_std: tuple[float, ...] = Field(
        MNIST_STD, min_length=1, description="Per-channel std of [0, 1] pixels; default: measured on train."
    )
    foreground: Literal["light-on-dark", "natural"] = Field(
        "light-on-dark",
        description="'light-on-dark' for digit-style pictures (predict offers --invert for dark-on-light input), "
        "'natural' for photos and drawings; default: light-on-dark for MNIST-format (IDX) data, else natural.",
    )

    @model_validator(mode="after")
    def _check_image(self):
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, not {list(self.image_std)}")
        given = self.model_fields_set
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if name in given and "channels" in given and len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs {self.channels} value(s) (one per channel), not {list(values)}")
        return self


IMAGE_OPTIONS = ("image_size", "channels", "image_mean", "image_std", "foreground")


def image_options(options: dict) -> dict:
    """The image options among a model's ``options`` (a checkpoint's, fitted to its data): a fresh model of another
    width built with them on top of its own takes the same input, e.g. a distillation student of its teacher."""
    return {k: options[k] for k in IMAGE_OPTIONS if k in options}


class CnnLstmConfig(ImageOptions):
    """cnn-lstm (:mod:`mmedge.models.cnn_lstm`): conv image branch, Embedding + LSTM text branch, MLP fusion."""

    conv_channels: tuple[int, ...] = Field(
        (16, 32, 64, 64),
        min_length=1,
        description="Output channels per 3x3 conv block; a 2x2 max-pool follows "
        "every block but the last (28 -> 14 -> 7 -> 3), so the last block sees the whole digit before global "
        "pooling. Measured: (32, 64, 64) without the last pool stalled near 97% at twice the cost.",
    )
    embed_dim: int = Field(64, ge=1, description="Word embedding width; the vocabulary is ~50 words.")
    hidden_size: int = Field(
        128, ge=1, description="LSTM hidden size; the text branch carries the question's operator and operand."
    )
    fusion_dim: int | tuple[int, int] = Field(
        256,
        description="Width of the two fusion layers (one number, or one per layer after structured pruning). "
        "Arithmetic questions make the fusion MLP learn a digit x operand lookup, which needs the width and depth.",
    )
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the fused representation.")
    max_text_length: int = Field(12, ge=1, description="Longest question in tokens; longer ones are truncated.")

    @field_validator("fusion_dim")
    @classmethod
    def _positive(cls, v):
        if min(v if isinstance(v, tuple) else (v,)) < 1:
            raise ValueError(f"fusion widths must be >= 1, not {v}")
        return v

    def fusion_widths(self) -> tuple[int, int]:
        return self.fusion_dim if isinstance(self.fusion_dim, tuple) else (self.fusion_dim, self.fusion_dim)


class VitTransformerConfig(ImageOptions):
    """vit-transformer (:mod:`mmedge.models.vit_transformer`): ViT image encoder, transformer text encoder, fusion."""

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

    @model_validator(mode="after")
    def _check(self):
        if self.dim % self.heads or self.dim % 4:
            raise ValueError(f"dim {self.dim} must be divisible by 4 and by heads {self.heads}")
        # an image size taken from the data is rounded to a multiple of patch_size when the model is fitted to it
        if "image_size" in self.model_fields_set and self.image_size % self.patch_size:
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


class EffnetMiniLMConfig(FamilyConfig):
    """effnet-minilm (:mod:`mmedge.models.effnet_minilm`): the pretrained EfficientNet-Lite0 image tower and the
    pretrained all-MiniLM-L6-v2 text tower, each projected to ``fusion_dim``, fused by an MLP over
    [image, text, image * text]. The image input is RGB normalized as the ImageNet weights expect (not measured on
    the data): a pretrained tower only works on the statistics it was trained on."""

    image_size: int = Field(
        64,
        ge=32,
        description="Input side in pixels. 64 is easy-VQA's native size; EfficientNet-Lite0 was trained at 224, and "
        "larger inputs cost latency roughly with the pixel count.",
    )
    pretrained: bool = Field(
        True,
        description="Start both towers from their packaged weights (EfficientNet-Lite0 ImageNet, all-MiniLM-L6-v2); "
        "False starts from random weights (tests).",
    )
    train_image_blocks: int = Field(
        0,
        ge=0,
        le=16,
        description="How many of the image tower's last blocks (with its head conv) train; 0 freezes the tower. The "
        "frozen part's outputs are computed once per image and cached, so a frozen tower costs one pass over the "
        "data, not one per epoch.",
    )
    train_text_layers: int = Field(
        0,
        ge=0,
        description="How many of the text tower's last layers train; 0 freezes it (its pooled outputs are computed "
        "once per distinct question and cached).",
    )
    fusion_dim: int = Field(256, ge=8, description="Width each tower is projected to before the fusion.")
    fusion_hidden: int = Field(256, ge=8, description="Width of the fusion MLP's hidden layer.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the fused representation.")
    max_text_length: int = Field(
        24, ge=4, le=512, description="Longest question in tokens with [CLS] and [SEP]; easy-VQA's are at most 13."
    )
    # Shapes after structured pruning (None: the pretrained towers' own).
    image_blocks: tuple[tuple[int, int, int, int], ...] | None = Field(
        None, description="Per image block (expanded width, output width, kernel, stride) after pruning."
    )
    image_stem: int | None = Field(None, ge=1, description="Stem width after pruning (None: 32).")
    image_head: int | None = Field(None, ge=1, description="Head conv width after pruning (None: 1280).")
    text_layers: int = Field(6, ge=0, description="Text layers kept (depth pruning drops the last ones).")
    text_heads: tuple[int, ...] | None = Field(None, description="Attention heads per text layer after pruning.")
    text_ffn: tuple[int, ...] | None = Field(None, description="Feed-forward width per text layer after pruning.")
    text_positions: int | None = Field(
        None, ge=1, description="Position embeddings kept after vocabulary pruning (None: MiniLM's 512)."
    )

    @model_validator(mode="after")
    def _check(self):
        if self.train_text_layers > self.text_layers:
            raise ValueError(
                f"train_text_layers {self.train_text_layers} is more than the {self.text_layers} text layers"
            )
        if self.text_positions is not None and self.text_positions < self.max_text_length:
            raise ValueError(
                f"text_positions {self.text_positions} is fewer than max_text_length {self.max_text_length}"
            )
        for name in ("text_heads", "text_ffn"):
            widths = getattr(self, name)
            if widths is not None and (len(widths) != self.text_layers or min(widths, default=1) < 1):
                raise ValueError(f"{name} needs {self.text_layers} positive numbers (one per layer), not {widths}")
        return self


class HFOptions(FamilyConfig):
    """``hf:PATH`` (:mod:`mmedge.models.hf`): a Hugging Face dual encoder, zero-shot or with a trained fusion head."""

    task: Literal["zero-shot", "fusion-head"] = Field(
        "zero-shot",
        description="zero-shot: image-label similarity against label prompts (no training); fusion-head: an MLP "
        "on image and text embeddings, trained on the recipe's data.",
    )
    prompt: str = Field(
        "a photo of a {label}.",
        description="zero-shot: the text each label becomes; CLIP was trained on captions, so a caption-like "
        "prompt scores better than the bare label.",
    )
    text_max_length: int = Field(
        32, ge=4, le=512, description="Longest text in tokens (special tokens included); longer ones are truncated."
    )
    head_hidden: int = Field(256, ge=1, description="fusion-head: width of the MLP's hidden layer.")
    freeze_encoders: bool = Field(
        True, description="fusion-head: train only the head; the pretrained encoders stay as they are."
    )


class ExternalOptions(FamilyConfig):
    """``py:package.module:factory`` (:mod:`mmedge.models.external`): keyword arguments passed to the factory as
    they are. Only the factory knows which it takes, so they are checked when it is called, not when parsed."""

    model_config = ConfigDict(frozen=True, extra="allow")
