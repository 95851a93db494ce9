"""Activation smoothing (SmoothQuant) before dynamic int8: exact in float, more faithful once quantized."""

import platform

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model, weight_quantizer
from mmedge.compress.smooth import WeightQuantizer, fake_quant_activation, smooth_matmuls
from mmedge.runtime.session import open_session
from tests.conftest import onnx_model


def _matmul_model(path, w1, w2):
    """x -> MatMul(w1) -> Relu -> MatMul(w2) -> y; both MatMuls read float activations."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w2.shape[1]])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    onnx.save(onnx_model(graph), str(path))
    return path


def test_smoothing_is_exact_in_float_and_cuts_int8_error_on_outlier_channels(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    x[:, 3] *= 80.0  # one outlier channel, as transformer activations have
    src = _matmul_model(tmp_path / "m.onnx", w1, w2)
    ort_max_abs = WeightQuantizer(per_channel=True, saturation_free=False)  # what quantize_dynamic below does
    info = smooth_matmuls(src, tmp_path / "s.onnx", {"x": x[:128]}, alpha=1.0, weights=ort_max_abs)
    assert info == {
        "smoothed_activations": 2,
        "smoothed_matmuls": 2,
        "folded_into_attention": 0,
        "alpha": 1.0,
        "simulated_weights": "per-channel 8-bit int8, max-abs scales",
    }
    ref = open_session(src).run(None, {"x": x[128:]})[0]
    smoothed = open_session(tmp_path / "s.onnx").run(None, {"x": x[128:]})[0]
    np.testing.assert_allclose(smoothed, ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())

    def int8_error(path):
        quantize_dynamic(path, tmp_path / "q.onnx", weight_type=QuantType.QInt8, per_channel=True)
        got = open_session(tmp_path / "q.onnx").run(None, {"x": x[128:]})[0]
        return float(np.abs(got - ref).mean())

    plain, smooth = int8_error(src), int8_error(tmp_path / "s.onnx")
    assert smooth < 0.7 * plain, (smooth, plain)  # measured on held-out rows, not the calibration ones
    auto = smooth_matmuls(src, tmp_path / "a.onnx", {"x": x[:128]}, alpha=None, weights=ort_max_abs)
    assert sum(auto["alphas_chosen"].values()) == 2  # one choice per smoothed activation
    assert int8_error(tmp_path / "a.onnx") <= plain  # the search may keep an activation as it is, never worse


def test_a_model_without_weight_matmuls_is_left_as_it_is(tmp_path):
    from tests.conftest import relu_onnx

    info = smooth_matmuls(relu_onnx(tmp_path / "r.onnx"), tmp_path / "o.onnx", {"x": np.ones((2, 4), np.float32)})
    assert (info["smoothed_activations"], info["smoothed_matmuls"]) == (0, 0)
    assert (tmp_path / "o.onnx").is_file()


def test_keep_float_leaves_the_least_faithful_matmul_in_float(tmp_path):
    from mmedge.compress.smooth import int8_sensitive_matmuls

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    x[:, 3] *= 80.0  # mm1 reads the outlier channel; int8 leaves its other channels a few levels
    src = _matmul_model(tmp_path / "m.onnx", w1, w2)
    assert int8_sensitive_matmuls(src, {"x": x[:128]}) == ["mm1", "mm2"]
    ref = open_session(src).run(None, {"x": x[128:]})[0]
    errors = {}
    for keep, storage in ((0, "float16"), (1, "float16"), (1, "float32")):
        out = tmp_path / f"q{keep}{storage}.onnx"
        cfg = DynamicQuantConfig(op_types=("MatMul",), per_channel=True, keep_float=keep, keep_float_storage=storage)
        info = quantize_dynamic_model(src, out, cfg, feeds={"x": x[:128]})
        assert info.get("float_matmuls", []) == ["mm1"][:keep]
        assert info["ops"].get("MatMul", 0) == keep  # the one left in float
        # float16 storage: the weight sits behind a Cast that the session folds
        casts = [n for n in onnx.load(str(out)).graph.node if n.op_type == "Cast" and n.input[0].endswith("_fp16")]
        assert len(casts) == (keep if storage == "float16" else 0)
        errors[keep, storage] = float(np.abs(open_session(out).run(None, {"x": x[128:]})[0] - ref).mean())
    assert errors[1, "float32"] < 0.5 * errors[0, "float16"], errors
    assert errors[1, "float16"] < 1.05 * errors[1, "float32"], errors  # float16 storage costs next to nothing


def _heavy_tailed(rng, rows: int, channels: int, outliers: tuple[int, ...]) -> np.ndarray:
    """Gaussian rows whose ``outliers`` channels spike 100x on a few rows: the per-token outliers that smoothing
    (one scale per channel) cannot tame."""
    x = rng.normal(size=(rows, channels)).astype(np.float32)
    for c in outliers:
        spikes = rng.choice(rows, rows // 20, replace=False)
        x[spikes, c] *= 100.0
    return x


def test_outlier_split_is_exact_in_float_and_cuts_int8_error(tmp_path):
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    x = _heavy_tailed(rng, 512, 16, (3, 11))
    src = _matmul_model(tmp_path / "m.onnx", w1, w2)
    info = smooth_matmuls(src, tmp_path / "s.onnx", {"x": x[:256]}, alpha=None, outlier_channels=2)
    assert info["outlier_matmuls"] == ["mm1_outliers"]  # mm2 reads Relu outputs without such spikes
    ref = open_session(src).run(None, {"x": x[256:]})[0]
    split = open_session(tmp_path / "s.onnx").run(None, {"x": x[256:]})[0]
    np.testing.assert_allclose(split, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    errors = {}
    for k in (0, 2):
        cfg = DynamicQuantConfig(op_types=("MatMul",), per_channel=True, smooth_alpha="auto", outlier_channels=k)
        q = quantize_dynamic_model(src, tmp_path / f"q{k}.onnx", cfg, feeds={"x": x[:256]})
        assert q["ops"].get("MatMul", 0) == (1 if k else 0)  # the side MatMul stays float, the rest is int8
        got = open_session(tmp_path / f"q{k}.onnx").run(None, {"x": x[256:]})[0]
        errors[k] = float(np.abs(got - ref).mean())
    assert errors[2] < 0.75 * errors[0], errors  # held-out rows; measured 0.63x


def test_outlier_split_joins_a_residual_sum_after_the_bias(tmp_path):
    """x -> MatMul -> Add(bias) -> Sum(., x) -> LayerNormalization, as optimize writes a residual block: the
    float part of the split becomes a third input of the Sum, with no Add of its own and the bias Add still
    right after the MatMul (where ORT folds it into the quantized MatMul)."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 16)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
            helper.make_node("Sum", ["hb", "x"], ["r"], name="residual"),
            helper.make_node("LayerNormalization", ["r", "g", "beta"], ["y"], axis=-1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(rng.normal(size=16).astype(np.float32), "b"),
            numpy_helper.from_array(np.ones(16, np.float32), "g"),
            numpy_helper.from_array(np.zeros(16, np.float32), "beta"),
        ],
    )
    src, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(onnx_model(graph), str(src))
    x = _heavy_tailed(rng, 512, 16, (3, 11))
    info = smooth_matmuls(src, out, {"x": x[:256]}, alpha=None, outlier_channels=2)
    assert info["outlier_matmuls"] == ["mm_outliers"]
    nodes = {n.name: n for n in onnx.load(str(out)).graph.node}
    assert list(nodes["residual"].input) == ["hb", "x", "mm_float_part"]
    assert list(nodes["bias"].input) == ["h", "b"] and not [n for n in nodes.values() if n.name.endswith("_add")]
    ref = open_session(src).run(None, {"x": x[256:]})[0]
    np.testing.assert_allclose(open_session(out).run(None, {"x": x[256:]})[0], ref, rtol=1e-4, atol=1e-4)


def test_outliers_are_split_only_where_that_pays(tmp_path):
    rng = np.random.default_rng(2)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    src = _matmul_model(tmp_path / "m.onnx", w1, w2)
    x = rng.normal(size=(256, 16)).astype(np.float32)  # no outliers: nothing worth three extra nodes
    info = smooth_matmuls(src, tmp_path / "s.onnx", {"x": x}, alpha=None, outlier_channels=2)
    assert info["outlier_matmuls"] == []
    assert not [n for n in onnx.load(str(tmp_path / "s.onnx")).graph.node if n.op_type == "Gather"]


def test_outlier_channels_need_smoothing():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set smooth_alpha too"):
        DynamicQuantConfig(outlier_channels=4)


def _attention_model(path, w_qkv, b_qkv, w_out, heads):
    """x -> fused Attention (com.microsoft, as onnxruntime.transformers writes it) -> MatMul(w_out) -> y."""
    hidden = w_out.shape[0]
    graph = helper.make_graph(
        [
            helper.make_node(
                "Attention", ["x", "w_qkv", "b_qkv"], ["a"], name="attn", domain="com.microsoft", num_heads=heads
            ),
            helper.make_node("MatMul", ["a", "w_out"], ["y"], name="out"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", hidden])],
        [
            numpy_helper.from_array(w_qkv, "w_qkv"),
            numpy_helper.from_array(b_qkv, "b_qkv"),
            numpy_helper.from_array(w_out, "w_out"),
        ],
    )
    onnx.save(onnx_model(graph, [("", 18), ("com.microsoft", 1)]), str(path))
    return path


def test_fused_attention_is_smoothed_and_its_int8_weights_are_saturation_free(tmp_path):
    rng = np.random.default_rng(3)
    hidden = 32
    src = _attention_model(
        tmp_path / "a.onnx",
        rng.normal(size=(hidden, 3 * hidden)).astype(np.float32) / 4,
        rng.normal(size=3 * hidden).astype(np.float32) / 4,
        rng.normal(size=(hidden, hidden)).astype(np.float32) / 4,
        heads=4,
    )
    x = rng.normal(size=(64, 12, hidden)).astype(np.float32)
    x[..., 5] *= 30.0  # an outlier channel in the Attention input
    info = smooth_matmuls(src, tmp_path / "s.onnx", {"x": x[:32]}, alpha=1.0)
    assert (info["smoothed_activations"], info["smoothed_matmuls"]) == (2, 2)  # the Attention and the MatMul
    # the attention output's smoothing lives in the V columns of the Attention weights: one Mul, on x, is left
    assert info["folded_into_attention"] == 1
    assert [list(n.input) for n in onnx.load(str(tmp_path / "s.onnx")).graph.node if n.op_type == "Mul"] == [
        ["x", "x_smooth_inv"]
    ]
    ref = open_session(src).run(None, {"x": x[32:]})[0]
    np.testing.assert_allclose(
        open_session(tmp_path / "s.onnx").run(None, {"x": x[32:]})[0], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()
    )

    errors, weights = {}, {}
    for free in (False, True):
        cfg = DynamicQuantConfig(op_types=("MatMul", "Attention"), per_channel=True, saturation_free=free)
        q = quantize_dynamic_model(tmp_path / "s.onnx", tmp_path / f"q{free}.onnx", cfg)
        assert q["ops"].get("QAttention") == 1
        assert q["saturation_free_weights"] == (2 if free else 0)
        got = open_session(tmp_path / f"q{free}.onnx").run(None, {"x": x[32:]})[0]
        errors[free] = float(np.abs(got - ref).mean())
        model = onnx.load(str(tmp_path / f"q{free}.onnx"))
        consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        weights[free] = next(consts[n.input[1]] for n in model.graph.node if n.op_type == "QAttention")
    # Saturation-free on every kernel: in each column, the positive (and the negative) int8 weights of every
    # neighbouring row pair sum to at most 128, so 255 * pair fits the int16 that non-VNNI x86 kernels add into.
    padded = np.vstack([weights[True], np.zeros((len(weights[True]) % 2, weights[True].shape[1]), np.int8)])
    for sign in (1, -1):
        part = np.maximum(sign * padded.astype(np.int64), 0)
        assert (part[0::2] + part[1::2]).max() <= 128
    if _u8s8_kernel_saturates():
        # ORT's max-abs scales saturate there; the saturation-free ones keep the result exact
        assert errors[True] < 0.9 * errors[False], errors
    else:
        # VNNI and ARM kernels are exact with either scales, so there is nothing to win: the saturation-free grid
        # is as faithful (measured 0.6531 against 0.6563 with max-abs scales on a Xeon with AVX512-VNNI)
        assert errors[True] <= 1.01 * errors[False], errors


def _u8s8_kernel_saturates() -> bool:
    """Whether ORT's u8s8 int8 MatMul adds neighbouring products in a saturating int16 here: on x86 without VNNI
    (vpmaddubsw); VNNI (AVX512-VNNI, AVX-VNNI) and ARM add them in int32."""
    from mmedge.provenance import has_vnni

    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") and not has_vnni()


@pytest.mark.parametrize(
    "settings",
    [
        {"per_channel": False},
        {"per_channel": True},
        {"per_channel": False, "reduce_range": True},
        {"per_channel": True, "weight_type": "uint8"},
    ],
    ids=["per-tensor", "per-channel", "per-tensor-7-bit", "per-channel-uint8"],
)
def test_the_smoothing_search_simulates_the_weight_quantizer_that_runs(tmp_path, settings):
    """The int8 output the search (and keep_float's ranking) simulates is the one ONNX Runtime computes with the
    step's configured weight quantizer, and measurably not the one of the other granularity."""
    rng = np.random.default_rng(5)
    w = (rng.normal(size=(64, 16)) * rng.uniform(0.05, 3.0, size=16)).astype(np.float32)  # columns of unlike range
    x = rng.normal(size=(32, 64)).astype(np.float32)
    src = _matmul_model(tmp_path / "m.onnx", w, np.eye(16, dtype=np.float32))
    cfg = DynamicQuantConfig(op_types=("MatMul",), **settings)
    quantize_dynamic_model(src, tmp_path / "q.onnx", cfg)
    hidden = "h"  # the first MatMul's output: read it from the quantized graph
    model = onnx.load(str(tmp_path / "q.onnx"))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(hidden))
    onnx.save(model, str(tmp_path / "probe.onnx"))
    got = open_session(tmp_path / "probe.onnx").run([hidden], {"x": x})[0]

    quantizer = weight_quantizer(cfg)
    simulated = fake_quant_activation(x) @ quantizer.fake_quant(w)
    other = WeightQuantizer(not cfg.per_channel, cfg.saturation_free, cfg.reduce_range, cfg.weight_type)
    scale = np.abs(got).max()
    assert np.abs(simulated - got).max() <= 1e-4 * scale
    assert np.abs(fake_quant_activation(x) @ other.fake_quant(w) - got).max() > 1e-3 * scale  # measured >= 9e-3


def test_quantize_dynamic_smooths_for_the_weight_granularity_it_configures(tmp_path):
    rng = np.random.default_rng(6)
    src = _matmul_model(
        tmp_path / "m.onnx", rng.normal(size=(16, 32)).astype(np.float32), rng.normal(size=(32, 8)).astype(np.float32)
    )
    feeds = {"x": rng.normal(size=(64, 16)).astype(np.float32)}
    for per_channel in (False, True):
        cfg = DynamicQuantConfig(op_types=("MatMul",), per_channel=per_channel, smooth_alpha="auto")
        info = quantize_dynamic_model(src, tmp_path / f"q{per_channel}.onnx", cfg, feeds=feeds)
        want = "per-channel" if per_channel else "per-tensor"
        assert info["smoothing"]["simulated_weights"] == f"{want} 8-bit int8, saturation-free scales"
