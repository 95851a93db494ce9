"""Shared fixtures: tiny models trained and exported in the test session (seconds, not minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE_BUNDLE = REPO / "exported" / "digits-vqa"

TINY = {
    "cnn-lstm": {"conv_channels": [8, 16], "embed_dim": 16, "hidden_size": 24, "fusion_dim": 32},
    "vit-transformer": {"dim": 16, "heads": 2, "image_layers": 1, "text_layers": 1, "fusion_layers": 1, "mlp_ratio": 2},
}


def tiny_train_config(**kw):
    from mmedge.train import TrainConfig

    return TrainConfig(**{"epochs": 1, "batch_size": 256, "seed": 0, **kw})


@pytest.fixture(scope="session")
def data_cfg():
    from mmedge.data import DataConfig

    return DataConfig(test_images=200, val_images=100)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, data_cfg) -> dict[str, Path]:
    from mmedge.train import run_training

    root = tmp_path_factory.mktemp("ckpt")
    return {
        fam: run_training(fam, opts, data_cfg, tiny_train_config(), root / fam, progress="off")[0]
        for fam, opts in TINY.items()
    }


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:
    from mmedge.export.onnx import export_checkpoint

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for fam, ckpt in tiny_checkpoints.items():
        out[fam] = root / f"{fam}.onnx"
        export_checkpoint(ckpt, out[fam])
    return out


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, data_cfg) -> Path:
    """A cnn-lstm that has learned the images (~78 % test accuracy after ~1 minute), for the steps whose effect
    only shows on a model beyond the text-only prior (~40 %): distillation, pruning recovery, quantize.auto."""
    from mmedge.train import TrainConfig, run_training

    cfg = TrainConfig(epochs=8, batch_size=64, lr=3e-3, patience=99, augment=False, seed=0)
    options = {"hidden_size": 64, "fusion_dim": 128}
    return run_training("cnn-lstm", options, data_cfg, cfg, tmp_path_factory.mktemp("trained") / "ckpt", "off")[0]


def relu_onnx(path: Path, dims=("n", 4)) -> Path:
    """A one-node ONNX model from elsewhere (no mmedge metadata): y = relu(x), x float32 of shape ``dims``."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digits_manifest(folder: Path, digits=(0, 1, 2, 3), per_class: int = 24, size: int = 32, fmt: str = "jsonl") -> Path:
    """A user dataset on disk: real MNIST digits as RGB PNGs of ``size`` px, a caption each, labelled by word."""
    import json

    import numpy as np
    from PIL import Image

    from mmedge.data.digits_vqa import load_digit_images

    images, labels = load_digit_images("mnist")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for d in digits:
        for k, i in enumerate(np.flatnonzero(labels == d)[:per_class]):
            name = f"images/{d}_{k}.png"
            Image.fromarray(images[i]).convert("RGB").resize((size, size)).save(folder / name)
            rows.append(
                {
                    "image": name,
                    "text": f"a handwritten {DIGIT_WORDS[d]}" if k % 2 else "a digit",
                    "label": DIGIT_WORDS[d],
                }
            )
    path = folder / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        path.write_text("image,text,label\n" + "\n".join(f"{r['image']},{r['text']},{r['label']}" for r in rows) + "\n")
    return path


def word_tokenizer_json(words) -> str:
    """A Hugging Face tokenizer.json (word level, [CLS] text [SEP]) built in code with the tokenizers package."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted(set(words))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok.to_str()


def tiny_hf_folder(folder: Path, kind: str = "clip", image_size: int = 32) -> Path:
    """A tiny Hugging Face CLIPModel or VisionTextDualEncoderModel (random weights) saved with a tokenizer.json."""
    import torch
    from transformers import (
        BertConfig,
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    words = [*DIGIT_WORDS, "a", "photo", "of", "handwritten", "digit", "."]
    text = word_tokenizer_json(words)
    vocab_size = len(words) + 4
    torch.manual_seed(0)
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    vision.update(image_size=image_size, patch_size=8)
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    if kind == "clip":
        text_cfg = {**small, "vocab_size": vocab_size, "max_position_embeddings": 40}
        text_cfg.update(bos_token_id=2, eos_token_id=3, pad_token_id=0)
        model = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision, projection_dim=16))
    else:
        config = VisionTextDualEncoderConfig.from_vision_text_configs(
            CLIPVisionConfig(**vision), BertConfig(**small, vocab_size=vocab_size, max_position_embeddings=40),
            projection_dim=16,
        )  # fmt: skip
        model = VisionTextDualEncoderModel(config)
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(text)
    return folder
