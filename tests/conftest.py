"""Shared fixtures: tiny models trained and exported in the test session (seconds, not minutes).

Tests write only under their own ``tmp_path``. The session fixtures below build into session tmp folders that are
read-only afterwards (``frozen`` fails the run if a test changed one), and a test that writes anywhere inside the
repository fails (``WorkingTreeWrites``); see tests/isolation.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.isolation import IGNORED_PARTS, WorkingTreeWrites, frozen

REPO = Path(__file__).resolve().parents[1]
REFERENCE_BUNDLE = REPO / "exported" / "digits-vqa"
WRITES = WorkingTreeWrites(REPO)
_LATE: list[str] = []  # working-tree writes outside any test: while collecting, or after the last one
_TREE: dict[str, set[str]] = {}  # the repository's file list when the tests start, for the end-of-session note


def _tree_files() -> set[str]:
    """Untracked files git does not ignore, and the repository's top-level entries: what a stray write would add."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(out) | {p.name + "/" for p in REPO.iterdir() if p.name not in IGNORED_PARTS}


def pytest_collection_finish(session):
    _LATE.extend(f"while collecting: {w}" for w in WRITES.take())
    _TREE["before"] = _tree_files()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test phase (setup, call, teardown) that wrote inside the repository fails, naming what it wrote."""
    outcome = yield
    report = outcome.get_result()
    written = WRITES.take()
    if not written:
        return
    message = (
        f"{item.nodeid} wrote inside the working tree during {call.when}: {', '.join(written[:10])}"
        f"{' ...' if len(written) > 10 else ''}; tests write under tmp_path (pass it as the output or working folder)."
    )
    if report.outcome == "failed":  # keep the test's own failure, and add this one
        report.sections.append(("working tree writes", message))
    else:
        report.outcome = "failed"
        report.longrepr = message


def pytest_sessionfinish(session, exitstatus):
    _LATE.extend(f"after the tests: {w}" for w in WRITES.take())
    if _LATE and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _LATE:
        terminalreporter.section("writes inside the working tree outside any test", red=True)
        for line in _LATE:
            terminalreporter.line(line)
    if "before" in _TREE:
        # Child processes are not audited; this catches what they left. A note, not a failure: other people and
        # processes may add files to the same working tree while the tests run.
        new = sorted(_tree_files() - _TREE["before"])
        if new:
            terminalreporter.section("files new in the working tree since the tests started", yellow=True)
            terminalreporter.line(", ".join(new[:20]) + (" ..." if len(new) > 20 else ""))


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
def tiny_checkpoints(tmp_path_factory, data_cfg):
    from mmedge.train import run_training

    root = tmp_path_factory.mktemp("ckpt")
    checkpoints = {
        fam: run_training(fam, opts, data_cfg, tiny_train_config(), root / fam, progress="off")[0]
        for fam, opts in TINY.items()
    }
    with frozen(root, what="tiny_checkpoints"):
        yield checkpoints


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoints):
    from mmedge.export.onnx import export_checkpoint

    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for fam, ckpt in tiny_checkpoints.items():
        out[fam] = root / f"{fam}.onnx"
        export_checkpoint(ckpt, out[fam])
    with frozen(root, what="tiny_onnx"):
        yield out


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, data_cfg):
    """A cnn-lstm that has learned the images (~78 % test accuracy after ~1 minute), for the steps whose effect
    only shows on a model beyond the text-only prior (~40 %): distillation, pruning recovery, quantize.auto."""
    from mmedge.train import TrainConfig, run_training

    cfg = TrainConfig(epochs=8, batch_size=64, lr=3e-3, patience=99, augment=False, seed=0)
    options = {"hidden_size": 64, "fusion_dim": 128}
    root = tmp_path_factory.mktemp("trained")
    checkpoint = run_training("cnn-lstm", options, data_cfg, cfg, root / "ckpt", "off")[0]
    with frozen(root, what="trained_checkpoint"):
        yield checkpoint


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
    onnx.save(onnx_model(graph), str(path))
    return path


def onnx_model(graph, opsets=(("", 18),)):
    """A ModelProto of ``graph`` importing ``opsets`` ((domain, version) pairs) at the lowest IR version they allow
    (IR 8 for opset 18), as an exporter writes it. ``helper.make_model`` would stamp onnx's newest IR instead (14 in
    onnx 1.23), which onnxruntime before 1.32 refuses to load, and onnxruntime-gpu 1.31 is a supported install."""
    from onnx import helper

    imports = [helper.make_opsetid(domain, version) for domain, version in opsets]
    return helper.make_model(graph, opset_imports=imports, ir_version=helper.find_min_ir_version_for(imports, True))


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
