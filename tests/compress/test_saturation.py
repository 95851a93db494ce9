"""Saturation-free int8 weight scales: ONNX Runtime's integer MatMul then computes the exact integer product on any
x86 kernel, so the quantized model is as faithful as its 8-bit grid allows."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model
from mmedge.compress.saturation import saturation_free_file, saturation_free_scales
from mmedge.runtime.session import open_session
from tests.conftest import onnx_model


def _matmul(path, w):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w.shape[1]])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(onnx_model(graph), str(path))
    return path


def _exact_int8(path, x):
    """What an exact u8s8 kernel computes for the dynamically quantized single-MatMul model at ``path``."""
    consts = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    step = (hi - lo) / 255
    zero = np.round(-lo / step)
    xq = np.clip(np.round(x / step) + zero, 0, 255) - zero
    return (xq @ consts["w_quantized"].astype(np.float64)) * step * consts["w_scale"]


@pytest.mark.parametrize("per_column", [True, False])
def test_scaled_weights_cannot_saturate_an_int16_pair(per_column):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(65, 24)).astype(np.float32)  # odd K: the last row pairs with padding
    w[10, :] = w[11, :] = np.abs(w).max()  # two large same-signed neighbours in every column
    scale = saturation_free_scales(w, per_column)
    assert scale.shape == ((24,) if per_column else ())
    ints = np.clip(np.round(w / scale), -127, 127)
    padded = np.vstack([ints, np.zeros((1, 24))])
    for sign in (1, -1):
        part = np.maximum(sign * padded, 0)
        assert (255 * (part[0::2] + part[1::2])).max() <= 32767
    assert np.abs(ints).max() <= 127


def test_ort_computes_the_exact_integer_product_with_saturation_free_weights(tmp_path):
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(384, 256)) * 0.05).astype(np.float32)
    x = rng.uniform(0, 1, size=(32, 384)).astype(np.float32)  # post-activation-like: the uint8 codes fill 0..255
    src = _matmul(tmp_path / "m.onnx", w)
    errors, exact = {}, {}
    for name, cfg in {
        "max-abs": DynamicQuantConfig(op_types=("MatMul",), per_channel=True, saturation_free=False),
        "saturation-free": DynamicQuantConfig(op_types=("MatMul",), per_channel=True),
        "reduce-range": DynamicQuantConfig(op_types=("MatMul",), per_channel=True, reduce_range=True),
    }.items():
        out = tmp_path / f"{name}.onnx"
        info = quantize_dynamic_model(src, out, cfg)
        assert info["saturation_free_weights"] == (1 if name == "saturation-free" else 0)
        got = open_session(out).run(None, {"x": x})[0]
        exact[name] = np.allclose(got, _exact_int8(out, x), rtol=1e-4, atol=1e-4)
        errors[name] = float(np.abs(got - x @ w).mean())
    assert exact["saturation-free"] and exact["reduce-range"]  # whatever the CPU's int8 kernel
    assert errors["saturation-free"] < 0.85 * errors["reduce-range"], errors  # keeps most of the 8th bit
    if not exact["max-abs"]:  # this CPU's kernel saturates (x86 without VNNI): ORT's own scales lose more
        assert errors["saturation-free"] < errors["max-abs"], errors


def test_other_weights_are_left_alone(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = np.random.default_rng(2).normal(size=(8, 4)).astype(np.float32)
    src = _matmul(tmp_path / "m.onnx", w)
    quantize_dynamic(src, tmp_path / "u8.onnx", weight_type=QuantType.QUInt8)  # u8u8: exact kernel, nothing to do
    before = (tmp_path / "u8.onnx").read_bytes()
    assert saturation_free_file(tmp_path / "u8.onnx", src) == 0
    assert (tmp_path / "u8.onnx").read_bytes() == before
