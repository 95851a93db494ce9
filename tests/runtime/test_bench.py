import pytest

from mmedge.errors import MmedgeError
from mmedge.runtime.bench import bench_model, percentiles, tile_batch
from mmedge.runtime.inputs import split_feeds
from tests.conftest import relu_onnx


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

    from mmedge.runtime.inputs import bench_inputs

    relu_onnx(tmp_path / "m.onnx")
    feeds, source = bench_inputs(tmp_path / "m.onnx", tmp_path / "m.onnx")
    assert source.startswith("synthetic") and feeds["x"].shape == (1, 4)
    r = bench_model(tmp_path / "m.onnx", feeds, runs=5, warmup=1, batch_sizes=(1, 3))
    assert r["batches"]["3"]["runs"] == 5


def _custom_op_model(path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchKernel", ["x"], ["y"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def matrix(tiny_onnx):
    from mmedge.runtime.bench import bench_matrix

    models = dict(tiny_onnx)
    feeds = {name: split_feeds(p, n=16) for name, p in models.items()}
    doc = bench_matrix(
        models, feeds, ["cpu", "xnnpack"], [1, 2], [1, 4], rounds=3, calls=3, warmup=2, allow_missing=True
    )
    return models, feeds, doc


def test_bench_matrix_times_every_model_ep_thread_and_batch_interleaved(matrix):
    models, _, doc = matrix
    assert doc["schema"] == "mmedge.bench-results" and doc["schema_version"] == 1
    keys = {(r["model"], r["ep"], r["threads"], r["batch"]) for r in doc["results"]}
    assert keys == {(m, "cpu", t, b) for m in models for t in (1, 2) for b in (1, 4)}
    for r in doc["results"]:
        assert r["runs"] == 9 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["providers"][0] == "CPUExecutionProvider" and r["session_load_ms"] > 0
    first = next(iter(models))
    assert all(r["p50_vs_first_model"] == 1.0 for r in doc["results"] if r["model"] == first)


def test_bench_matrix_marks_a_missing_ep_unavailable_and_reports_no_number_for_it(matrix):
    models, _, doc = matrix
    assert doc["eps"]["xnnpack"]["status"] == "unavailable" and "XNNPACK" in doc["eps"]["xnnpack"]["reason"]
    assert {u["model"] for u in doc["unavailable"] if u["ep"] == "xnnpack"} == set(models)
    assert not [r for r in doc["results"] if r["ep"] != "cpu"]


def test_bench_matrix_reports_where_the_nodes_ran(matrix):
    models, _, doc = matrix
    for name in models:
        p = doc["placement"][name]["cpu"]
        assert p["nodes"] > 5 and p["per_provider"] == {"CPUExecutionProvider": p["nodes"]} and p["share_on_ep"] == 1


def test_bench_matrix_refuses_a_missing_ep_unless_allowed(tiny_onnx):
    from mmedge.runtime.bench import bench_matrix

    path = tiny_onnx["cnn-lstm"]
    with pytest.raises(MmedgeError, match=r"'coreml' is not in this onnxruntime installation \(it has: cpu\)"):
        bench_matrix({"m": path}, {"m": split_feeds(path, n=4)}, ["coreml"], [1], [1], rounds=1, calls=1)


@pytest.mark.parametrize(
    ("eps", "threads", "batches", "message"),
    [
        (["cpuu"], [1], [1], "did you mean 'cpu'"),
        (["cpu"], [0], [1], "thread count 0 is below 1"),
        (["cpu"], [1], [0], "batch size 0 is below 1"),
    ],
)
def test_bench_matrix_bad_options_are_one_clear_error(tiny_onnx, eps, threads, batches, message):
    from mmedge.runtime.bench import bench_matrix

    path = tiny_onnx["cnn-lstm"]
    with pytest.raises(MmedgeError, match=message):
        bench_matrix({"m": path}, {"m": split_feeds(path, n=4)}, eps, threads, batches, rounds=1, calls=1)


def test_bench_matrix_model_an_ep_cannot_take_is_named_or_marked(tmp_path, tiny_onnx):
    import numpy as np

    from mmedge.errors import EpCannotRunError
    from mmedge.runtime.bench import bench_matrix

    bad = _custom_op_model(tmp_path / "custom.onnx")
    good = tiny_onnx["cnn-lstm"]
    feeds = {"custom": {"x": np.ones((2, 4), np.float32)}, "good": split_feeds(good, n=4)}
    models = {"custom": bad, "good": good}
    with pytest.raises(EpCannotRunError, match="'cpu' cannot run custom.onnx"):
        bench_matrix(models, feeds, ["cpu"], [1], [1], rounds=1, calls=1)
    doc = bench_matrix(models, feeds, ["cpu"], [1], [1], rounds=1, calls=1, allow_missing=True)
    assert [u["model"] for u in doc["unavailable"]] == ["custom"] and "cannot run" in doc["unavailable"][0]["reason"]
    assert {r["model"] for r in doc["results"]} == {"good"}


def test_io_binding_runner_gives_the_same_outputs_as_a_plain_run(tiny_onnx):
    import numpy as np

    from mmedge.runtime.bench import Runner
    from mmedge.runtime.session import open_session

    path = tiny_onnx["vit-transformer"]
    feeds = split_feeds(path, n=4)
    sess = open_session(path, "cpu", 1)
    runner = Runner(sess, "cpu", io_binding=True)
    runner.prepare(feeds)
    runner()
    binding_out = runner.binding.copy_outputs_to_cpu()[0]
    assert np.allclose(binding_out, sess.run(None, feeds)[0], atol=1e-6)
