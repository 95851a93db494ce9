"""Hugging Face dual encoders from a local folder (``hf:PATH``): CLIPModel and VisionTextDualEncoderModel.

Two tasks, chosen with the model option ``task``:

- ``zero-shot``: the labels become prompts ("a photo of a {label}."), the text tower embeds them once, and the
  exported graph holds those label embeddings as a constant: ``image -> logits`` = scaled cosine similarity of the
  image embedding with every label embedding. The device runs only the vision encoder.
- ``fusion-head``: ``(image, input_ids, attention_mask) -> logits`` through a small MLP on
  ``[image, text, image * text]`` embeddings, trained on the recipe's data with both encoders frozen.

The exported graph also outputs the normalized embeddings (``image_embeds``, and ``text_embeds`` for
fusion-head), so the bundle can split it into ``vision.onnx``, ``text.onnx`` and ``head.onnx``. Images are fed as
the zoo models are: pixels scaled to [0, 1], resized to the processor's size; mean/std normalization is inside the
graph. The tokenizer is the folder's ``tokenizer.json``, run on the device with the ``tokenizers`` package.

Nothing is downloaded: the folder must hold config.json, the weights and tokenizer.json (or a tokenizer that
transformers can convert to one, offline). The folder is checked, without torch, by
``mmedge.models.external.hf_family``; this module is imported only to build the model or load its tokenizer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from mmedge.data.images import ImagePreprocessing
from mmedge.data.text import HFTokenizer
from mmedge.errors import InputPathError, MissingDependencyError, brief
from mmedge.models.options import HFOptions
from mmedge.models.spec import ModelSpec, TensorSpec
from mmedge.models.trust import code_trusted

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_tokenizer(path: Path, max_length: int) -> HFTokenizer:
    """The folder's tokenizer.json (or its tokenizer converted to one by transformers, offline)."""
    file = path / "tokenizer.json"
    if file.is_file():
        text = file.read_text()
    else:
        try:
            from transformers import AutoTokenizer

            # never transformers' own prompt to run the folder's code: only --trust-code allows it
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=code_trusted())
            text = tok.backend_tokenizer.to_str()
        except Exception as exc:  # transformers raises many kinds here; the sentence below is what a user needs
            raise InputPathError(
                f"{path} has no tokenizer.json and its tokenizer cannot be converted to one ({type(exc).__name__}); "
                "save the model's fast tokenizer into the folder (tokenizer.save_pretrained)."
            ) from None
    from tokenizers import Tokenizer

    pad = json.loads(text).get("padding") or {}
    pad_id = pad.get("pad_id")
    if pad_id is None:
        tok = Tokenizer.from_str(text)
        pad_id = next(
            (tok.token_to_id(t) for t in ("[PAD]", "<pad>", "<|endoftext|>") if tok.token_to_id(t) is not None), 0
        )
    return HFTokenizer(text, max_length, int(pad_id))


def image_preprocessing(path: Path, vision_config) -> ImagePreprocessing:
    """Size, mean and std from preprocessor_config.json, else the vision config's size and CLIP's statistics."""
    size = int(getattr(vision_config, "image_size", 224))
    mean, std = CLIP_MEAN, CLIP_STD
    proc = path / "preprocessor_config.json"
    if proc.is_file():
        p = json.loads(proc.read_text())
        crop = p.get("crop_size") or p.get("size") or {}
        if isinstance(crop, int):
            size = crop
        elif isinstance(crop, dict):
            size = int(crop.get("height") or crop.get("shortest_edge") or size)
        mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
    return ImagePreprocessing(
        height=size, width=size, channels=3, mean=mean, std=std, normalize_in_graph=True, foreground="natural"
    )


def _features(out):
    """transformers 5 returns model outputs from get_*_features, 4.x the projected tensor."""
    import torch

    return out if torch.is_tensor(out) else out.pooler_output


class HFDualEncoder(nn.Module):
    """A Hugging Face dual encoder with mmedge's contract: pixels in [0, 1] and token ids in, logits out."""

    def __init__(self, hf_model, cfg: HFOptions, num_classes: int, prep: ImagePreprocessing, kind: str):
        super().__init__()
        self.hf = hf_model
        self.task = cfg.task
        self.options = cfg
        self.prep = prep
        self.kind = kind
        self.num_classes = num_classes
        self.export_embeddings = False  # set by the exporter: also output the normalized embeddings
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std).view(1, -1, 1, 1))
        dim = int(hf_model.config.projection_dim)
        if cfg.task == "zero-shot":
            self.register_buffer("label_embeds", torch.zeros(num_classes, dim))  # (classes, D), from prepare()
        else:
            self.head = nn.Sequential(
                nn.Linear(3 * dim, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, num_classes)
            )
            if cfg.freeze_encoders:
                for p in self.hf.parameters():
                    p.requires_grad_(False)

    @classmethod
    def from_folder(
        cls, path: Path, cfg: HFOptions, num_classes: int, kind: str, architecture: str, remote: bool = False
    ) -> HFDualEncoder:
        """Load the folder (checked by ``mmedge.models.external.hf_family``) with the transformers class named
        ``architecture``; ``remote`` lets the folder's own code run (the caller has checked trust)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only; never reach for the hub
        try:
            import transformers
        except ModuleNotFoundError as exc:
            raise MissingDependencyError(
                "Hugging Face models need transformers; run `pip install 'mmedge[hf]'`."
            ) from exc
        transformers.logging.set_verbosity_error()  # mmedge reports what matters; no per-load progress bars
        transformers.logging.disable_progress_bar()
        loader = getattr(transformers, architecture)
        try:
            model = loader.from_pretrained(str(path), local_files_only=True, trust_remote_code=remote)
        except Exception as exc:  # transformers raises many kinds for a folder it cannot load; one sentence here
            raise InputPathError(
                f"transformers cannot load the Hugging Face model {path} as {architecture} ({type(exc).__name__}: "
                f"{brief(exc, 160)}); restore the folder as save_pretrained wrote it."
            ) from None
        model.eval()
        vision = getattr(model.config, "vision_config", None)
        return cls(model, cfg, num_classes, image_preprocessing(path, vision), kind)

    # (B, 3, H, W) pixels in [0, 1] -> (B, D) unit-length image embeddings
    def embed_image(self, image):
        x = (image - self.mean) / self.std
        return nn.functional.normalize(_features(self.hf.get_image_features(pixel_values=x)), dim=-1)

    # (B, T) ids and mask -> (B, D) unit-length text embeddings
    def embed_text(self, input_ids, attention_mask):
        out = self.hf.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return nn.functional.normalize(_features(out), dim=-1)

    def forward(self, image, input_ids=None, attention_mask=None):
        img = self.embed_image(image)
        if self.task == "zero-shot":
            logits = self.hf.logit_scale.exp() * img @ self.label_embeds.t()  # (B, classes)
            return (logits, img) if self.export_embeddings else logits
        txt = self.embed_text(input_ids, attention_mask)
        logits = self.head(torch.cat([img, txt, img * txt], dim=-1))
        return (logits, img, txt) if self.export_embeddings else logits

    @torch.no_grad()
    def prepare(self, classes: tuple[str, ...], tokenizer) -> None:
        """zero-shot: embed the label prompts once; they ship inside the graph."""
        if self.task != "zero-shot":
            return
        ids, mask = tokenizer.encode([self.options.prompt.format(label=c) for c in classes])
        self.label_embeds.copy_(self.embed_text(torch.from_numpy(ids), torch.from_numpy(mask)))

    def spec(self) -> ModelSpec:
        dim = int(self.hf.config.projection_dim)
        image = TensorSpec("image", "float32", ("batch", 3, self.prep.height, self.prep.width))
        inputs = (image,)
        outputs = (TensorSpec("logits", "float32", ("batch", self.num_classes)),)
        outputs += (TensorSpec("image_embeds", "float32", ("batch", dim)),)
        if self.task == "fusion-head":
            inputs += (
                TensorSpec("input_ids", "int64", ("batch", "text_length")),
                TensorSpec("attention_mask", "int64", ("batch", "text_length")),
            )
            outputs += (TensorSpec("text_embeds", "float32", ("batch", dim)),)
        names = dict(self.hf.named_children())
        vision = tuple(f"hf.{n}" for n in ("vision_model", "visual_projection") if n in names)
        text = tuple(f"hf.{n}" for n in ("text_model", "text_projection") if n in names)
        return ModelSpec(
            family=f"hf:{self.kind}",
            inputs=inputs,
            outputs=outputs,
            branches={"image": vision, "text": text, "head": ("head",) if self.task == "fusion-head" else ()},
            image=self.prep,
            text_max_length=self.options.text_max_length,
            # deep transformers in float32: the exporter's fused kernels differ from PyTorch's by ~1e-5 relative
            atol=1e-3,
            rtol=1e-3,
        )

    def current_options(self) -> dict:
        return self.options.model_dump()
