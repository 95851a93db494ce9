import numpy as np
import onnx
import pytest

from mmedge.compress.onnx_check import Tolerance, check_rewrite
from mmedge.compress.quantize import (
    DynamicQuantConfig,
    Fp16Config,
    fp16_model,
    gemm_to_matmul,
    op_histogram,
    quantize_dynamic_model,
)
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
