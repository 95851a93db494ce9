import pytest

from mmedge.errors import MmedgeError
from mmedge.runtime.bench import bench_model, percentiles, tile_batch
from mmedge.runtime.inputs import split_feeds


def test_percentiles_are_ordered():
    s = percentiles([float(x) for x in range(1, 101)])
    assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] and s["runs"] == 100


def test_tile_batch_repeats_real_samples():
    feeds = {"x": __import__("numpy").arange(3)}
    assert tile_batch(feeds, 7)["x"].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_bench_measures_each_batch_size_on_real_inputs(tiny_onnx):
    feeds = split_feeds(tiny_onnx["cnn-lstm"])
    assert feeds["attention_mask"].sum(1).min() > 0  # real questions, not zeros
    r = bench_model(tiny_onnx["cnn-lstm"], feeds, threads=1, batch_sizes=(1, 8), runs=30, warmup=3)
    assert r["providers"][0] == "CPUExecutionProvider"
    assert set(r["batches"]) == {"1", "8"} and r["batches"]["8"]["runs"] == 30
    assert 0 < r["batches"]["1"]["p50_ms"] <= r["batches"]["1"]["p99_ms"]
    assert r["session_load_ms"] > 0 and r["memory"]["peak_rss_mb"] >= r["memory"]["rss_before_mb"] * 0.5
    assert r["machine"]["logical_cores"] >= 1


def test_bench_refuses_batch_below_one(tiny_onnx):
    with pytest.raises(MmedgeError, match="batch size 0 is below 1"):
        bench_model(tiny_onnx["cnn-lstm"], split_feeds(tiny_onnx["cnn-lstm"]), batch_sizes=(0,))


def test_foreign_model_without_samples_is_benched_on_synthetic_inputs_and_says_so(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from mmedge.runtime.inputs import bench_inputs

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    feeds, source = bench_inputs(tmp_path / "m.onnx", tmp_path / "m.onnx")
    assert source.startswith("synthetic") and feeds["x"].shape == (1, 4)
    r = bench_model(tmp_path / "m.onnx", feeds, runs=5, warmup=1, batch_sizes=(1, 3))
    assert r["batches"]["3"]["runs"] == 5
