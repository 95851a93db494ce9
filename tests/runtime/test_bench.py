import pytest

from mmedge.errors import MmedgeError
from mmedge.runtime.bench import bench_model, percentiles, tile_batch
from mmedge.runtime.inputs import split_feeds
from tests.conftest import onnx_model, relu_onnx


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
    # the process high-water mark (its own units per OS) holds every RSS sampled during the run
    assert r["session_load_ms"] > 0 and r["memory"]["process_peak_rss_mb"] >= r["memory"]["peak_rss_mb"] * 0.99
    assert r["machine"]["cpu_summary"] and "provenance" not in r["machine"]  # the document around it has it


def test_bench_refuses_batch_below_one(tiny_onnx):
    with pytest.raises(MmedgeError, match="batch size 0 is below 1"):
        bench_model(tiny_onnx["cnn-lstm"], split_feeds(tiny_onnx["cnn-lstm"]), batch_sizes=(0,))


def test_foreign_model_without_samples_is_benched_on_synthetic_inputs_and_says_so(tmp_path):

    from mmedge.runtime.inputs import bench_inputs
    from mmedge.runtime.session import open_session
    from mmedge.runtime.shapes import synthetic_inputs

    relu_onnx(tmp_path / "m.onnx")
    assert bench_inputs(tmp_path / "m.onnx", tmp_path / "m.onnx") is None  # no real inputs: nothing is guessed
    feeds, source = synthetic_inputs(open_session(tmp_path / "m.onnx", "cpu"), {}, "m.onnx", "mmedge bench m.onnx")
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
    onnx.save(onnx_model(graph, [("", 18), ("com.example", 1)]), str(path))
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
    for r in doc["results"]:
        lo, mid, hi = r["vs_first_model"]
        assert lo <= mid <= hi and r["rounds"] == 3 and r["p50_vs_first_model"] == mid


def test_bench_matrix_compares_the_models_of_each_ep_thread_and_batch_round_by_round(matrix):
    models, _, doc = matrix
    groups = {(c["ep"], c["threads"], c["batch_size"]) for c in doc["comparisons"]}
    assert groups == {("cpu", t, b) for t in (1, 2) for b in (1, 4)} and len(doc["comparisons"]) == 4
    for c in doc["comparisons"]:
        assert set(c["candidates"]) == set(models) and c["candidates"][c["fastest"]]["ratio_p50"] == 1.0
    fastest_rows = [r for r in doc["results"] if r["ratio_to_fastest"][1] == 1.0]
    assert len(fastest_rows) >= 4 and all(r["equally_fast_as_fastest"] for r in fastest_rows)


def test_bench_matrix_comparison_lines_cover_every_group_with_several_models(matrix):
    from mmedge.runtime.bench import comparison_lines

    models, _, doc = matrix
    lines = comparison_lines(doc)
    assert len(lines) == 4 and all(line.startswith("cpu, ") and "fastest" in line for line in lines)
    assert all(line.count(" (p10-p90 ") == len(models) - 1 for line in lines)


def test_bench_matrix_records_the_provenance_once(matrix):
    _, _, doc = matrix
    assert doc["provenance"]["cpu"]["flags"] == doc["machine"]["cpu_flags"] and "provenance" not in doc["machine"]
    assert doc["provenance"]["packages"]["numpy"]


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
    # "(it has: cpu" and no more: onnxruntime-gpu on a machine without a GPU adds the EPs it lists but cannot start
    with pytest.raises(MmedgeError, match=r"'coreml' is not in this onnxruntime installation \(it has: cpu\b"):
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


# ---------------------------------------------------------------- the comparison harness, on synthetic timings


class FakeClock:
    """A clock that only the timed callables move: each call advances it by that candidate's cost."""

    def __init__(self):
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def candidate(self, name: str, costs_ms):
        costs = iter(costs_ms)

        def call():
            self.calls.append(name)
            self.now += next(costs) / 1e3

        return call


def _rounds(per_round_ms, calls=3):
    """{name: [[ms] * calls per round]} from one time per round."""
    return [[t] * calls for t in per_round_ms]


def test_time_rounds_rotates_the_order_every_round_and_does_not_time_warmup():
    import itertools

    from mmedge.runtime.bench import time_rounds

    clock = FakeClock()
    fns = {n: clock.candidate(n, itertools.repeat(cost)) for n, cost in (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    times = time_rounds(fns, rounds=4, calls_per_round=2, warmup=3, clock=clock)
    timed = clock.calls[9:]  # 3 warm-up calls each come first, untimed
    assert clock.calls[:9] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    firsts = [timed[i] for i in range(0, len(timed), 6)]
    assert firsts == ["a", "b", "c", "a"] and timed[:6] == ["a", "a", "b", "b", "c", "c"]
    assert timed[6:12] == ["b", "b", "c", "c", "a", "a"]
    assert [len(r) for r in times["c"]] == [2] * 4
    assert [t for r in times["b"] for t in r] == pytest.approx([2.0] * 8)


def test_time_rounds_stops_at_max_seconds_but_not_before_three_rounds_and_ten_calls():
    import itertools

    from mmedge.runtime.bench import time_rounds

    clock = FakeClock()
    fns = {"slow": clock.candidate("slow", itertools.repeat(1000.0))}  # 1 s per call
    times = time_rounds(fns, rounds=50, calls_per_round=2, clock=clock, max_seconds=0.5)
    assert len(times["slow"]) == 5  # round 3 reaches 6 calls, round 5 the 10th


def test_compare_callables_reports_a_twice_slower_candidate_with_its_ratio():
    import itertools

    from mmedge.runtime.bench import compare_callables

    clock = FakeClock()
    fns = {
        "fast": clock.candidate("fast", itertools.repeat(1.0)),
        "slow": clock.candidate("slow", itertools.repeat(2.0)),
    }
    c = compare_callables(fns, ep="cpu", threads=1, batch_size=1, rounds=6, calls_per_round=4, warmup=1, clock=clock)
    assert c.fastest == "fast" and c.rounds == 6 and c.calls_per_round == 4
    assert c.candidates["slow"].ratio_p50 == pytest.approx(2.0) and c.candidates["fast"].ratio_p10 == 1.0
    assert c.candidates["slow"].p50_ms == pytest.approx(2.0) and c.candidates["slow"].calls == 24
    assert not c.equally_fast("slow", "fast") and c.tied_with_fastest() == ["fast"]


def test_per_round_ratio_cancels_drift_that_pooled_medians_would_count():
    from mmedge.runtime.bench import summarize

    # The machine slows down threefold halfway; b is 5 % slower than a in every round.
    drift = [1.0] * 10 + [3.0] * 10
    a = [d for d in drift]
    b = [d * 1.05 for d in drift]
    c = summarize({"a": _rounds(a), "b": _rounds(b)}, ep="cpu", threads=1, batch_size=1)
    assert c.ratio_interval("b", "a") == pytest.approx((1.05, 1.05, 1.05))
    assert not c.equally_fast("a", "b") and c.fastest == "a"


def test_candidates_are_equally_fast_when_the_ratio_interval_holds_one():
    from mmedge.runtime.bench import summarize

    a = [1.0] * 20
    b = [0.9, 1.1] * 10  # as often faster as slower
    c = summarize({"a": _rounds(a), "b": _rounds(b)}, ep="cpu", threads=1, batch_size=1)
    lo, mid, hi = c.ratio_interval("b", "a")
    assert lo < 1.0 < hi and mid == pytest.approx(1.0)
    assert c.equally_fast("a", "b") and set(c.tied_with_fastest()) == {"a", "b"}


def test_a_consistent_win_too_small_for_the_p10_is_still_equal():
    from mmedge.runtime.bench import summarize

    # b is faster in 8 of 10 rounds but 20 % slower in 2: p90 of its ratio lies above 1
    a = [1.0] * 10
    b = [0.97] * 8 + [1.2] * 2
    c = summarize({"a": _rounds(a), "b": _rounds(b)}, ep="cpu", threads=1, batch_size=1)
    assert c.fastest == "b" and c.equally_fast("a", "b")


def test_few_rounds_never_claim_a_difference():
    from mmedge.runtime.bench import MIN_ROUNDS_FOR_A_DIFFERENCE, summarize

    rounds = MIN_ROUNDS_FOR_A_DIFFERENCE - 1
    c = summarize({"a": _rounds([1.0] * rounds), "b": _rounds([2.0] * rounds)}, ep="cpu", threads=1, batch_size=1)
    assert c.ratio_interval("b", "a") == (2.0, 2.0, 2.0) and c.equally_fast("a", "b")


def test_summarize_refuses_candidates_timed_in_different_rounds():
    from mmedge.runtime.bench import summarize

    with pytest.raises(MmedgeError, match="needs a time for each round"):
        summarize({"a": _rounds([1.0] * 5), "b": _rounds([1.0] * 4)}, ep="cpu", threads=1, batch_size=1)


def test_ratio_interval_names_the_candidates_for_an_unknown_one():
    from mmedge.runtime.bench import summarize

    c = summarize({"a": _rounds([1.0] * 5)}, ep="cpu", threads=1, batch_size=1)
    with pytest.raises(MmedgeError, match=r"'z' is not a candidate of this comparison \(a\)"):
        c.ratio_interval("z", "a")


def test_latency_comparison_round_trips_through_json():
    import json

    from mmedge.runtime.bench import LatencyComparison, summarize

    c = summarize(
        {"a": _rounds([1.0, 1.2, 0.9, 1.1, 1.0, 1.3]), "b": _rounds([2.0, 2.1, 1.9, 2.2, 2.0, 2.4])},
        ep="cpu",
        threads=2,
        batch_size=8,
        providers={"a": ["CPUExecutionProvider"]},
    )
    data = json.loads(json.dumps(c.to_json()))
    assert data["candidates"]["b"]["equally_fast_as_fastest"] is False and "p10-p90" in data["rule"]
    assert LatencyComparison.from_json(data) == c


def test_describe_names_the_fastest_and_says_which_others_are_equally_fast():
    from mmedge.runtime.bench import summarize

    c = summarize(
        {"fp32": _rounds([1.0] * 10), "int8": _rounds([2.0] * 10), "pruned": _rounds([0.9, 1.1] * 5)},
        ep="cpu",
        threads=1,
        batch_size=1,
    )
    assert c.describe() == (
        "cpu, 1 thread, batch 1, 10 rounds x 3 calls: fastest fp32; int8 2.00x, slower (p10-p90 2.00-2.00); "
        "pruned 1.00x, equally fast (p10-p90 0.90-1.10)"
    )


# ---------------------------------------------------------------- the harness on real sessions (no timing claims)


def test_compare_latency_reads_back_the_ep_that_ran_each_candidate(tmp_path):
    import numpy as np

    from mmedge.runtime.bench import compare_latency

    models = {"a": relu_onnx(tmp_path / "a.onnx"), "b": relu_onnx(tmp_path / "b.onnx")}
    c = compare_latency(models, {"x": np.ones((3, 4), np.float32)}, "cpu", 1, 2, rounds=3, calls_per_round=2, warmup=1)
    assert set(c.candidates) == {"a", "b"} and c.fastest in models and c.batch_size == 2
    assert all(t.providers[0] == "CPUExecutionProvider" and t.calls == 6 for t in c.candidates.values())
    assert c.candidates[c.fastest].ratio_p50 == 1.0


def test_compare_latency_fills_each_round_to_the_asked_duration(tmp_path):
    import numpy as np

    from mmedge.runtime.bench import compare_latency

    ticks = iter(range(10**6))

    def clock():  # every reading 0.1 ms after the last: 5 timed calls read 0.1 ms, 0.02 ms a call
        return next(ticks) * 1e-4

    models = {"a": relu_onnx(tmp_path / "a.onnx"), "b": relu_onnx(tmp_path / "b.onnx")}
    feeds = {"x": np.ones((3, 4), np.float32)}
    c = compare_latency(models, feeds, "cpu", 1, 1, rounds=3, calls_per_round=2, warmup=1, min_round_ms=5, clock=clock)
    assert c.calls_per_round == 250 and all(t.calls == 3 * 250 for t in c.candidates.values())
    plain = compare_latency(models, feeds, "cpu", 1, 1, rounds=3, calls_per_round=2, warmup=1, clock=clock)
    assert plain.calls_per_round == 2


def test_compare_latency_refuses_an_ep_this_onnxruntime_lacks(tmp_path):
    import numpy as np

    from mmedge.runtime.bench import compare_latency
    from mmedge.runtime.providers import available

    if "coreml" in available():
        pytest.skip("this onnxruntime has CoreML")
    with pytest.raises(MmedgeError, match="'coreml' is not in this onnxruntime installation"):
        compare_latency({"a": relu_onnx(tmp_path / "a.onnx")}, {"x": np.ones((1, 4), np.float32)}, "coreml", 1, 1)


def test_compare_latency_checks_the_feeds_against_each_model(tmp_path):
    import numpy as np

    from mmedge.errors import InputMismatchError
    from mmedge.runtime.bench import compare_latency

    with pytest.raises(InputMismatchError, match="input 'x' is missing"):
        compare_latency({"a": relu_onnx(tmp_path / "a.onnx")}, {"y": np.ones((1, 4), np.float32)}, "cpu", 1, 1)


def test_machine_info_carries_the_provenance_and_the_cpu_flags():
    from mmedge.provenance import FLAGS, collect
    from mmedge.runtime.bench import machine_info

    info = machine_info()
    assert (
        info["provenance"]["packages"]["onnxruntime"] == info["onnxruntime"]
        or info["provenance"]["packages"]["onnxruntime-gpu"] == info["onnxruntime"]
    )
    assert set(info["cpu_flags"]) <= FLAGS and info["cpu_summary"] == collect()["cpu"]["summary"]
    assert "provenance" not in machine_info(with_provenance=False)
