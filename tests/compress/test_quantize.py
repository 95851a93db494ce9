import numpy as np
import onnx
import pytest

from mmedge.compress.onnx_check import Tolerance, check_rewrite
from mmedge.compress.quantize.calibration import CalibrationConfig, calibrate, calibration_feeds
from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model
from mmedge.compress.quantize.fp16 import Fp16Config, fp16_model
from mmedge.compress.quantize.graph import gemm_to_matmul, op_histogram, prepare
from mmedge.compress.quantize.static import StaticQuantConfig, quantize_static_model
from mmedge.errors import BudgetExceededError, RecipeError
from mmedge.recipe import parse_recipe
from mmedge.runtime.inputs import split_feeds
from mmedge.runtime.session import metadata_json, open_session

LOOSE = Tolerance(max_accuracy_drop=5.0, min_agreement=0.8)  # tiny, barely trained models have close logits


def _logits(path, feeds):
    return open_session(path).run(None, feeds)[0]


def test_gemm_rewrite_keeps_outputs_identical(tmp_path, tiny_onnx):
    model = onnx.load(str(tiny_onnx["cnn-lstm"]))
    assert gemm_to_matmul(model) >= 2
    assert "Gemm" not in {n.op_type for n in model.graph.node}
    onnx.save(model, str(tmp_path / "mm.onnx"))
    feeds = split_feeds(tiny_onnx["cnn-lstm"], n=16)
    np.testing.assert_allclose(_logits(tmp_path / "mm.onnx", feeds), _logits(tiny_onnx["cnn-lstm"], feeds), atol=1e-5)


def test_step_quantize_dynamic_makes_lstm_and_linears_int8_but_leaves_conv_float(tmp_path, tiny_onnx, data_cfg):
    src, out = tiny_onnx["cnn-lstm"], tmp_path / "q.onnx"
    info = quantize_dynamic_model(src, out, DynamicQuantConfig())
    ops = info["ops"]
    assert ops.get("DynamicQuantizeLSTM") == 1 and ops.get("MatMulInteger", 0) >= 2
    assert "ConvInteger" not in ops and ops.get("Conv", 0) >= 2
    assert metadata_json(open_session(out), "mmedge.tokenizer") is not None  # metadata carried over
    metrics = check_rewrite("quantize.dynamic", src, out, data_cfg, LOOSE)
    assert metrics["size_bytes"] < 0.8 * metrics["input_size_bytes"]  # the float convs are a big share here
    assert metrics["parity"]["argmax_agreement"] >= 0.8


def test_step_quantize_fp16_keeps_float32_io_and_stays_faithful(tmp_path, tiny_onnx, data_cfg):
    src, out = tiny_onnx["vit-transformer"], tmp_path / "h.onnx"
    fp16_model(src, out, Fp16Config())
    sess = open_session(out)
    assert sess.get_inputs()[0].type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(out)).graph.initializer)
    metrics = check_rewrite("quantize.fp16", src, out, data_cfg, Tolerance(max_accuracy_drop=0.5, min_agreement=0.99))
    assert metrics["parity"]["max_abs_diff"] < 0.05


def test_rewrite_gate_refuses_a_model_outside_tolerance(tmp_path, tiny_onnx, data_cfg):
    # The other family's model stands in for a broken rewrite: answers disagree far beyond tolerance.
    with pytest.raises(BudgetExceededError, match="outside its tolerance"):
        check_rewrite(
            "x",
            tiny_onnx["cnn-lstm"],
            tiny_onnx["vit-transformer"],
            data_cfg,
            Tolerance(max_accuracy_drop=0.0, min_agreement=0.999),
        )


def test_unknown_op_type_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown op type 'MatMull'.*did you mean 'MatMul'"):
        parse_recipe(
            {
                "name": "q",
                "steps": [{"type": "train"}, {"type": "export"}, {"type": "quantize.dynamic", "op_types": ["MatMull"]}],
            }
        )


def test_op_histogram_counts_nodes(tiny_onnx):
    assert op_histogram(tiny_onnx["cnn-lstm"])["LSTM"] == 1


# ---- quantize.static -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_step_quantize_static_writes_qdq_and_stays_above_the_floor(tmp_path, tiny_onnx, data_cfg, family):
    src, out = tiny_onnx[family], tmp_path / "s.onnx"
    cfg = StaticQuantConfig(calibration=CalibrationConfig(samples=64))
    info = quantize_static_model(src, out, cfg, data_cfg)
    ops = info["ops"]
    assert ops.get("QuantizeLinear", 0) >= 2 and ops.get("DequantizeLinear", 0) >= 4
    if family == "cnn-lstm":  # ORT's QDQ has no LSTM: the dynamic pass after it makes it int8
        assert ops.get("DynamicQuantizeLSTM") == 1 and "LSTM" not in ops
    else:  # the ViT computes attention: its MatMuls are quantized dynamically, its patch Conv statically
        assert ops.get("MatMulInteger", 0) > 0 and info["static_nodes"] > 0 and info["dynamic_nodes"] > 0
    assert info["calibration"]["samples_used"] == 64
    # Barely trained tiny models have nearly tied logits, so answers flip easily: judge the logits themselves.
    metrics = check_rewrite("quantize.static", src, out, data_cfg, Tolerance(max_accuracy_drop=5.0, min_agreement=0.5))
    assert metrics["parity"]["mean_cosine"] >= 0.98 and metrics["parity"]["sqnr_db"] >= 18
    if family == "cnn-lstm":  # the tiny ViT's weights are too small to outweigh the QDQ nodes and scales
        assert metrics["size_bytes"] < metrics["input_size_bytes"]


def test_entropy_calibration_gets_the_bin_counts_it_is_given(tmp_path, tiny_onnx, data_cfg):
    from onnxruntime.quantization.calibrate import load_tensors_data

    prepared = prepare(tiny_onnx["cnn-lstm"], tmp_path / "p.onnx")
    ranges = {}
    for bins in (128, 512):
        cfg = CalibrationConfig(method="entropy", samples=16, num_bins=bins)
        feeds = calibration_feeds(tiny_onnx["cnn-lstm"], cfg, data_cfg)
        cache = calibrate(prepared, feeds, cfg, ["Conv"], tmp_path / f"c{bins}.json")
        ranges[bins] = {k: tuple(np.asarray(v.range_value).tolist()) for k, v in load_tensors_data(cache).data.items()}
    assert ranges[128].keys() == ranges[512].keys()
    assert ranges[128] != ranges[512]  # with ORT's default the two would be identical


def test_calibration_data_that_is_empty_or_not_finite_is_refused(tmp_path, tiny_onnx, data_cfg):
    from mmedge.errors import MmedgeError

    feeds = split_feeds(tiny_onnx["cnn-lstm"], n=8)
    np.savez(tmp_path / "empty.npz", **{k: v[:0] for k, v in feeds.items()})
    with pytest.raises(MmedgeError, match="calibration set is empty"):
        calibration_feeds(tiny_onnx["cnn-lstm"], CalibrationConfig(data=tmp_path / "empty.npz"), data_cfg)
    bad = dict(feeds)
    bad["image"] = bad["image"].copy()
    bad["image"][0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **bad)
    with pytest.raises(MmedgeError, match="'image' contains NaN or inf"):
        calibration_feeds(tiny_onnx["cnn-lstm"], CalibrationConfig(data=tmp_path / "nan.npz"), data_cfg)


def _renamed_input(src, dst, old: str, new: str):
    model = onnx.load(str(src))
    for value in model.graph.input:
        value.name = new if value.name == old else value.name
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    onnx.save(model, str(dst))
    return dst


def test_static_quantization_calibrates_a_model_whose_image_input_has_another_name(tmp_path, tiny_onnx, data_cfg):
    from mmedge.errors import MmedgeError
    from mmedge.runtime.evaluate import evaluate_model

    src = _renamed_input(tiny_onnx["cnn-lstm"], tmp_path / "pixels.onnx", "image", "pixel_values")
    # scoring feeds the data set's images to the renamed input too (the gate after every rewrite relies on it)
    renamed, original = (evaluate_model(p, data_cfg, ablation=False)[0] for p in (src, tiny_onnx["cnn-lstm"]))
    assert renamed["test"] == original["test"] and renamed["val"] == original["val"]
    feeds = split_feeds(tiny_onnx["cnn-lstm"], n=32)
    feeds["pixel_values"] = feeds.pop("image")
    np.savez(tmp_path / "calibration.npz", **feeds)
    ref = _logits(src, feeds)
    for name, calibration in {
        "training draw": CalibrationConfig(samples=32),
        "npz": CalibrationConfig(data=tmp_path / "calibration.npz"),
    }.items():
        out = tmp_path / f"{name}.onnx"
        info = quantize_static_model(src, out, StaticQuantConfig(calibration=calibration), data_cfg)
        assert info["calibration"]["samples_used"] == 32, name
        assert info["ops"].get("QuantizeLinear", 0) >= 2 and info["ops"].get("DynamicQuantizeLSTM") == 1, name
        got = _logits(out, feeds)
        cosine = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cosine.mean() >= 0.98, (name, cosine.mean())
    old = {("image" if k == "pixel_values" else k): v for k, v in feeds.items()}
    np.savez(tmp_path / "old-names.npz", **old)
    with pytest.raises(MmedgeError, match="holds .*'image'.* inputs are 'pixel_values'.*one array per model input"):
        calibration_feeds(src, CalibrationConfig(data=tmp_path / "old-names.npz"), data_cfg)


def test_unknown_static_op_type_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown op type 'Convv'"):
        parse_recipe(
            {
                "name": "q",
                "steps": [{"type": "train"}, {"type": "export"}, {"type": "quantize.static", "op_types": ["Convv"]}],
            }
        )


def test_quantization_leaves_nothing_in_the_working_directory_nor_on_the_console(
    tmp_path, tiny_onnx, monkeypatch, caplog
):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # ORT's shape inference dumps files into the working directory when it fails
    with caplog.at_level("WARNING"):
        info = quantize_dynamic_model(tiny_onnx["vit-transformer"], tmp_path / "q.onnx", DynamicQuantConfig())
    assert info["pre_process"].startswith("skipped: ")  # the failing shape inference is what dumps the files
    assert list(work.iterdir()) == []
    # nor onnxruntime's advice to pre-process: the metrics record that it was skipped, and why
    assert not [r.getMessage() for r in caplog.records if "pre-processing" in r.getMessage()]


def test_relus_and_residual_adds_ride_with_their_static_convs(tmp_path):
    """Conv -> ReLU6 -> Conv plus a residual Add of two Conv outputs: quantized with the Convs, onnxruntime folds
    the ReLU6 into the Conv and runs the Add as QLinearAdd; an Add of a constant (a bias or a mask) stays float."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from mmedge.compress.quantize.plan import quantize_plan
    from mmedge.runtime.options import session_options

    rng = np.random.default_rng(0)

    def conv(name, x, y, k):
        w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, k, k)).astype(np.float32), f"{name}.w")
        return helper.make_node("Conv", [x, w.name], [y], name=name, pads=[k // 2] * 4), w

    nodes, weights = [], []
    for name, x, y, k in (("a", "x", "a_out", 3), ("b", "r_out", "b_out", 1), ("d", "s_out", "y", 1)):
        node, w = conv(name, x, y, k)
        nodes.append(node)
        weights.append(w)
    low, high = numpy_helper.from_array(np.float32(0), "low"), numpy_helper.from_array(np.float32(6), "high")
    shift = numpy_helper.from_array(np.full((1, 8, 1, 1), -3, np.float32), "shift")
    nodes += [
        helper.make_node("Clip", ["a_out", "low", "high"], ["r_out"], name="relu6"),
        helper.make_node("Add", ["b_out", "a_out"], ["s_out"], name="residual"),
        helper.make_node("Add", ["s_out", "shift"], ["m"], name="constant_add"),
    ]
    nodes = [nodes[0], nodes[3], nodes[1], nodes[4], nodes[2], nodes[5]]  # topological order
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", 8, 8, 8]) for o in ("y", "m")],
        [*weights, low, high, shift],
    )
    src = tmp_path / "convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    prepared = prepare(src, tmp_path / "prepared.onnx")
    feeds = {"x": rng.normal(0, 1, (64, 8, 8, 8)).astype(np.float32)}
    calib = CalibrationConfig()
    cache = calibrate(prepared, feeds, calib, ["Conv"], tmp_path / "calibration.json")
    out = tmp_path / "q.onnx"
    info = quantize_plan(prepared, out, {"a": "int8-static", "b": "int8-static", "d": "int8-static"}, cache, calib)
    assert info["static_nodes"] == 3 and info["riding_nodes"] == 2  # relu6 and residual; not constant_add
    opts = session_options(level="all", optimized_path=tmp_path / "loaded.onnx")
    ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
    loaded = op_histogram(onnx.load(opts.optimized_model_filepath))
    assert loaded.get("QLinearConv") == 3 and loaded.get("QLinearAdd") == 1 and "Clip" not in loaded, loaded
    test = {"x": rng.normal(0, 1, (16, 8, 8, 8)).astype(np.float32)}
    for got, want in zip(open_session(out).run(None, test), open_session(src).run(None, test), strict=True):
        cos = (got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want))
        assert cos > 0.99, cos
