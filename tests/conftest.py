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

    return TrainConfig(**{"epochs": 1, "max_minutes": 0.5, "batch_size": 256, "seed": 0, **kw})


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
