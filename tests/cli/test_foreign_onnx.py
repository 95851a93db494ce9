"""An ONNX model written outside mmedge's exporter (onnx.helper, Constant-node weights, symbolic image sizes) through
`mmedge bench`, `mobile` and `inspect`: no size is guessed, every open one is named at once, synthetic inputs are
called so."""

import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from mmedge_cli.main import app
from tests.cli.test_cli import assert_clean_failure, invoke, runner
from tests.conftest import onnx_model

FAST = ("--rounds", "2", "--calls", "2", "--warmup", "1", "--batch", "1", "--batch", "2")


def scorer_onnx(path):
    """scores = GlobalAveragePool(Conv(x, W, b)) @ V + c, x float32 [batch, 3, h, w]; W (2×3×3×3 = 54 values), b (2)
    and V (2×4 = 8) are Constant nodes, c (4) an initializer: 68 parameters."""
    rng = np.random.default_rng(0)
    const = lambda name, arr: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(arr.astype(np.float32), name)
    )
    nodes = [
        const("W", rng.normal(size=(2, 3, 3, 3))),
        helper.make_node("Constant", [], ["b"], value_floats=[0.1, -0.1]),
        const("V", rng.normal(size=(2, 4))),
        helper.make_node("Conv", ["x", "W", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "V"], ["mm"]),
        helper.make_node("Add", ["mm", "c"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scorer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.arange(4, dtype=np.float32), "c")],
    )
    path.write_bytes(onnx_model(graph).SerializeToString())
    return path


def adder_onnx(path):
    """z = x + y with x [batch, n] and y [batch, m]: sizes that must agree, which the model does not say."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "y"], ["z"])],
        "adder",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "m"]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", "n"])],
    )
    path.write_bytes(onnx_model(graph).SerializeToString())
    return path


def test_bench_is_refused_naming_every_unknown_dim_when_a_foreign_model_has_no_inputs(tmp_path):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    r = invoke("bench", model, *FAST)
    assert_clean_failure(r, 2, "'h' (x[2])", "'w' (x[3])", "--dim h=N --dim w=N", "--inputs FILE.npz")
    assert "mmedge bench" in r.output and "'batch'" not in r.output  # the batch is the one size bench chooses


def test_bench_with_dims_times_synthetic_inputs_and_names_them_on_the_console_and_in_the_report(tmp_path):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    r = invoke("bench", model, "--dim", "h=48", "--dim", "w=64", *FAST, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    named = [line for line in r.output.splitlines() if "synthetic" in line]
    assert len(named) == 1 and "x float32[1, 3, 48, 64]" in named[0] and "h=48, w=64" in named[0], r.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "scorer: synthetic random values, not real data (x float32[1, 3, 48, 64]" in md
    assert "**Synthetic inputs**" in md
    doc = json.loads((tmp_path / "rep" / "results.json").read_text())
    assert {row["batch"] for row in doc["results"]} == {1, 2}  # the batch dim followed each batch timed
    assert_clean_failure(invoke("bench", model, "--dim", "hh=48", "--dim", "h=4", "--dim", "w=4"), 2, "--dim hh")


def test_bench_of_synthetic_inputs_the_model_cannot_take_is_one_sentence_not_an_internal_error(tmp_path, capfd):
    model = adder_onnx(tmp_path / "adder.onnx")
    assert_clean_failure(invoke("bench", model, *FAST), 2, "'n' (x[1])", "'m' (y[1])")
    capfd.readouterr()
    r = invoke("bench", model, "--dim", "n=8", "--dim", "m=5", *FAST)
    assert_clean_failure(r, 2, "broadcast", "inconsistent with the inputs given", "pass real inputs with --inputs")
    assert "Add node: Attempting to broadcast an axis" in r.output
    assert "broadcast" not in capfd.readouterr().err  # onnxruntime's own log line does not repeat it
    np.savez(tmp_path / "in.npz", x=np.ones((1, 8), np.float32), y=np.ones((1, 8), np.float32))
    r = invoke("bench", model, "--inputs", tmp_path / "in.npz", *FAST, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["models"]["adder"]["inputs"] == str(tmp_path / "in.npz")


def test_mobile_lists_every_unknown_dim_in_one_message_when_no_inputs_are_given(tmp_path):
    r = invoke("mobile", scorer_onnx(tmp_path / "scorer.onnx"), "--out", tmp_path / "m")
    assert_clean_failure(r, 2, "'h' (x[2])", "'w' (x[3])", "--inputs FILE.npz")
    assert "feed arrays" not in r.output and "…" not in r.output
    assert not (tmp_path / "m").exists()


def test_mobile_takes_the_fixed_sizes_from_the_inputs_arrays(tmp_path):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).random((3, 3, 48, 64), dtype=np.float32))
    r = invoke("mobile", model, "--out", tmp_path / "m", "--inputs", tmp_path / "in.npz", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["fixed_dims"] == {"batch": 1, "h": 48, "w": 64}  # the batch stays 1: a phone answers one at a time
    assert result["parity"]["model.fixed.ort"]["samples"] == 3
    r = invoke("mobile", model, "--out", tmp_path / "m2", "--inputs", tmp_path / "in.npz", "--dim", "w=64", "--json")
    assert r.exit_code == 0, r.output  # a --dim agreeing with the arrays is fine


def test_inspect_counts_the_constant_node_weights_of_a_foreign_model(tmp_path):
    r = runner.invoke(app, ["inspect", str(scorer_onnx(tmp_path / "scorer.onnx")), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["parameters"] == 54 + 2 + 8 + 4
