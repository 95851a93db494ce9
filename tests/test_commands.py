"""The functions behind bench, mobile and inspect, called as a script would (no CLI)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mmedge.commands import bench_models, inspect_path, model_file, refuse_quantized_for_fp16
from mmedge.compress.quantize.graph import QUANTIZED_OPS
from mmedge.errors import InputPathError, MmedgeError
from tests.conftest import REFERENCE_BUNDLE, onnx_model, relu_onnx

FAST = {"batches": [1], "rounds": 2, "calls": 2, "warmup": 1}


def dequantize_onnx(path):
    """A one-node quantized model: int8 x -> DequantizeLinear -> float32 y."""
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["x", "scale"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])],
    )
    onnx.save(onnx_model(graph), str(path))
    return path


def test_model_file_of_a_bundle_is_a_private_copy_of_its_model_and_of_a_file_the_file(tmp_path):
    with model_file(REFERENCE_BUNDLE) as (path, bundle):
        assert path.read_bytes() == (REFERENCE_BUNDLE / "model.onnx").read_bytes()
        assert path.parent.name == REFERENCE_BUNDLE.name and not path.is_relative_to(REFERENCE_BUNDLE)
        assert bundle.model_path == REFERENCE_BUNDLE / "model.onnx"
    assert not path.exists()  # removed with the snapshot
    with model_file(tmp_path / "m.onnx") as (path, bundle):
        assert path == tmp_path / "m.onnx" and bundle is None


def test_bench_models_fp16_refuses_a_quantized_model_before_timing_anything(tmp_path):
    float_model, quantized = relu_onnx(tmp_path / "float.onnx"), dequantize_onnx(tmp_path / "q.onnx")
    with pytest.raises(MmedgeError) as info:
        bench_models([float_model, quantized], fp16=True, **FAST)
    assert str(info.value) == (
        "--fp16 converts float32 models, and q is already quantized (DequantizeLinear); "
        "pass its float32 .onnx, or drop --fp16."
    )
    refuse_quantized_for_fp16("float", float_model)  # a float32 model passes
    assert "DequantizeLinear" in QUANTIZED_OPS


def test_bench_models_times_each_model_and_its_fp16_copy_on_the_same_inputs(tmp_path):
    doc = bench_models([relu_onnx(tmp_path / "relu.onnx")], fp16=True, **FAST)
    assert {r["model"] for r in doc["results"]} == {"relu", "relu fp16"}
    assert all(r["batch"] == 1 and r["p50_ms"] > 0 for r in doc["results"])
    assert doc["models"]["relu"]["inputs"] == doc["models"]["relu fp16"]["inputs"]
    assert doc["models"]["relu"]["inputs"].startswith("synthetic")  # no bundle, no mmedge metadata


def test_bench_models_times_on_given_inputs(tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4))
    doc = bench_models([relu_onnx(tmp_path / "relu.onnx")], inputs=npz, eps=["cpu"], threads=[1], **FAST)
    assert doc["models"]["relu"]["inputs"] == str(npz)
    with pytest.raises(InputPathError, match="does not exist"):
        bench_models([tmp_path / "relu.onnx"], inputs=tmp_path / "none.npz", **FAST)


def test_inspect_path_summarizes_a_file_or_a_bundle_and_refuses_a_missing_path(tmp_path):
    assert inspect_path(relu_onnx(tmp_path / "relu.onnx"))["op_types"] == {"Relu": 1}
    assert inspect_path(REFERENCE_BUNDLE)["name"] == "digits-vqa"
    with pytest.raises(MmedgeError, match="does not exist; pass an .onnx file or a bundle folder"):
        inspect_path(tmp_path / "none.onnx")
