import numpy as np
import pytest

from mmedge.compress import auto
from mmedge.compress.auto import AutoQuantConfig, _plan, auto_quantize
from mmedge.compress.quantize.graph import prepare
from mmedge.compress.quantize.plan import quantizable_nodes
from mmedge.errors import BudgetExceededError, RecipeError
from mmedge.recipe import parse_recipe
from mmedge.results import Sensitivity
from mmedge.runtime.evaluate import evaluate_model

FAST = {"rounds": 3, "calibration": {"samples": 32}}


def test_step_quantize_auto_keeps_a_candidate_within_budget_and_reports_sensitivity(tmp_path, tiny_onnx, data_cfg):
    src, out = tiny_onnx["cnn-lstm"], tmp_path / "auto.onnx"
    ref = evaluate_model(src, data_cfg, ablation=False)[0]["val"]["accuracy"]
    r = auto_quantize(src, out, AutoQuantConfig(**FAST), data_cfg, ref, 1.0, "cpu")
    assert r["selection_split"] == "val" and r["reference_val_accuracy"] == ref
    names = [c["name"] for c in r["candidates"]]
    assert names[:3] == ["fp32", "int8-dynamic", "int8-static"]
    chosen = next(c for c in r["candidates"] if c["name"] == r["chosen"])
    assert chosen["within_budget"] and chosen["drop_points"] <= 1.0 and chosen["agreement"] >= 0.85
    assert next(c for c in r["candidates"] if c["name"] == "fp32")["agreement"] == 1.0
    assert evaluate_model(out, data_cfg, ablation=False)[0]["test"]["accuracy"] == pytest.approx(
        chosen["test_accuracy"]
    )
    # Sensitivity: one row per quantizable node and scheme, and one per branch, with measured drops.
    nodes = r["sensitivity"]["nodes"]
    assert {n["branch"] for n in nodes} >= {"image", "text", "fusion"}
    assert {n["op"] for n in nodes} >= {"Conv", "LSTM", "MatMul", "Gather"}
    assert all(isinstance(n["drop_points"], float) for n in nodes)
    assert {b["branch"] for b in r["sensitivity"]["branches"]} >= {"image", "text", "fusion", "head"}
    assert all("p50_ms" in c for c in r["candidates"] if c["within_budget"])
    # the choice records its latency interval against the fastest, and the fastest's own ratio is 1 per round
    lo, mid, hi = r["choice"]["latency_ratio"]
    assert lo <= mid <= hi and r["choice"]["objective"] == "size"
    fastest = next(c for c in r["candidates"] if c["name"] == r["choice"]["fastest"])
    assert fastest["latency_ratio"] == [1.0, 1.0, 1.0]
    Sensitivity.model_validate(r["sensitivity"])  # the step records it in its metrics: it must fit their schema


def test_quantize_auto_decides_before_it_scores_the_test_split(tmp_path, tiny_onnx, data_cfg, monkeypatch):
    """No candidate has a test accuracy when the choice is made: the test split cannot have decided it."""
    import mmedge.compress.auto as auto

    seen = []
    real = auto.choose

    def spy(ok, *args):
        seen.append([c.get("test_accuracy") for c in ok])
        return real(ok, *args)

    monkeypatch.setattr(auto, "choose", spy)
    r = auto_quantize(tiny_onnx["cnn-lstm"], tmp_path / "a.onnx", AutoQuantConfig(**FAST), data_cfg, None, 1.0, "cpu")
    assert seen and all(v is None for v in seen[0])
    assert all(isinstance(c["test_accuracy"], float) for c in r["candidates"])  # scored afterwards, for the report


class _Timing:
    """90 % intervals of the median per-round ratio of each candidate against another, as the harness gives them."""

    def __init__(self, intervals, rounds=20, round_ms=None):
        self.intervals, self.rounds = intervals, rounds
        # median round times: the harness's fastest is the lowest (default: fp32 ahead of int8)
        self.round_ms = round_ms or {"fp32": (0.100,), "int8": (0.104,)}

    def median_interval(self, a, b):
        return (1.0, 1.0) if a == b else self.intervals[(a, b)]


def _cand(name, size, p50):
    return {"name": name, "size_bytes": size, "p50_ms": p50}


def test_choose_takes_the_smaller_when_the_latency_ratio_interval_includes_one():
    fp32, int8 = _cand("fp32", 200, 0.100), _cand("int8", 60, 0.104)
    timing = _Timing({("int8", "fp32"): (0.97, 1.12)})  # the median's interval covers 1.0: equally fast
    for objective in ("size", "latency"):
        best, rule = auto.choose([fp32, int8], objective, 0.0, timing)
        assert best is int8, rule


def test_choose_keeps_the_faster_when_the_interval_excludes_one_beyond_the_tolerance():
    fp32, int8 = _cand("fp32", 200, 0.100), _cand("int8", 60, 0.111)
    timing = _Timing({("int8", "fp32"): (1.08, 1.15)})  # the median is measurably 8-15 % slower
    assert auto.choose([fp32, int8], "latency", 0.05, timing)[0] is fp32
    assert auto.choose([fp32, int8], "size", 0.05, timing)[0] is fp32  # slower by more than the 5 % tolerance
    assert auto.choose([fp32, int8], "size", 0.10, timing)[0] is int8  # within a 10 % tolerance the size wins
    few = _Timing({("int8", "fp32"): (1.08, 1.15)}, rounds=2)
    assert auto.choose([fp32, int8], "latency", 0.0, few)[0] is int8  # two rounds cannot tell them apart


def test_a_few_disturbed_rounds_do_not_turn_the_choice():
    """int8 is 20 % slower in a typical round. In a quiet run every round says so; in a noisy one, 8 of 40 rounds
    disturb fp32 (its time doubles), so that the p10 of the per-round ratio falls below 1.10. The choice, taken
    on the interval of the median, is fp32 both times: the same file ships from both runs."""
    from mmedge.runtime.bench import summarize

    rng = np.random.default_rng(0)
    quiet = {"fp32": [[1.0 + 0.01 * rng.random()] for _ in range(40)], "int8": [[1.2] for _ in range(40)]}
    noisy = {"fp32": [[2.0 if i % 5 == 0 else 1.0] for i in range(40)], "int8": [[1.2] for _ in range(40)]}
    for rounds in (quiet, noisy):
        timing = summarize(rounds, ep="cpu", threads=1, batch_size=1)
        fp32, int8 = _cand("fp32", 200, 1.0), _cand("int8", 60, 1.2)
        assert auto.choose([fp32, int8], "size", 0.10, timing)[0] is fp32
    assert timing.ratio_interval("int8", "fp32")[0] < 1.10  # the old p10 rule would have shipped int8 here


def test_the_median_interval_is_two_order_statistics_by_the_binomial_law():
    from mmedge.runtime.bench import summarize

    # ratios 1..40 (int8 / fp32, one per round): at 90 % the median lies between the 15th and the 26th of them
    timing = summarize(
        {"fp32": [[1.0] for _ in range(40)], "int8": [[float(i)] for i in range(1, 41)]},
        ep="cpu",
        threads=1,
        batch_size=1,
    )
    assert timing.median_interval("int8", "fp32") == (15.0, 26.0)
    small = summarize({"a": [[1.0], [1.0], [1.0]], "b": [[1.0], [2.0], [3.0]]}, ep="cpu", threads=1, batch_size=1)
    assert small.median_interval("b", "a") == (1.0, 3.0)  # three rounds: the whole range


def test_choose_ranks_the_fastest_as_the_timing_harness_does_by_median_round_time():
    from mmedge.runtime.bench import summarize

    # int8 has the lower median over all calls, but fp32 is faster in two of three rounds
    timing = summarize(
        {"fp32": [[1.0], [1.0], [9.0]], "int8": [[2.0], [2.0], [0.5]]}, ep="cpu", threads=1, batch_size=1
    )
    fp32, int8 = _cand("fp32", 200, 9.0), _cand("int8", 60, 0.5)
    assert auto.fastest_of([int8, fp32], timing) is fp32 and timing.fastest == "fp32"
    best, rule = auto.choose([fp32, int8], "latency", 0.0, timing)
    assert "the fastest (fp32" in rule and best is int8  # three rounds: too few to call any two different


def test_quantize_auto_falls_back_to_float_and_then_fails_when_no_candidate_meets_the_budget(
    tmp_path, tiny_onnx, data_cfg
):
    src = tiny_onnx["cnn-lstm"]
    # A reference the model itself is 50 points below: nothing can meet a 1-point budget.
    with pytest.raises(BudgetExceededError, match="no quantized candidate meets the budget.*tried fp32: -"):
        auto_quantize(src, tmp_path / "a.onnx", AutoQuantConfig(**FAST), data_cfg, 0.99, 1.0, "cpu")
    assert not (tmp_path / "a.onnx").exists()  # nothing half-written
    r = auto_quantize(
        src, tmp_path / "b.onnx", AutoQuantConfig(**FAST, allow_over_budget=True), data_cfg, 0.99, 1.0, "cpu"
    )
    assert not r["within_budget"] and (tmp_path / "b.onnx").is_file()
    assert any("+fp32x" in c["name"] for c in r["candidates"])  # the fallback search ran
    best = max(c["val_accuracy"] for c in r["candidates"])  # chosen on validation, never on test
    assert next(c for c in r["candidates"] if c["name"] == r["chosen"])["val_accuracy"] == best


def test_per_branch_precision_is_honoured(tmp_path, tiny_onnx):
    nodes = quantizable_nodes(prepare(tiny_onnx["cnn-lstm"], tmp_path / "p.onnx"))
    cfg = AutoQuantConfig(branch_precision={"image": "int8-static", "text": "int8-dynamic", "head": "fp32"})
    assert {_plan(nodes, "fp32", cfg)[n["node"]] for n in nodes if n["branch"] == "image"} == {"int8-static"}
    assert not any(n["node"] in _plan(nodes, "fp32", cfg) for n in nodes if n["branch"] == "fusion")
    for scheme in ("int8-dynamic", "int8-static"):
        plan = _plan(nodes, scheme, cfg)
        by_branch = {}
        for n in nodes:
            by_branch.setdefault(n["branch"], set()).add(plan.get(n["node"], "fp32"))
        assert by_branch["image"] == {"int8-static"}
        assert by_branch["text"] == {"int8-dynamic"}
        assert by_branch["head"] == {"fp32"}
        assert by_branch["fusion"] == ({scheme} if scheme == "int8-dynamic" else {"int8-static"})


def test_static_plans_quantize_the_matmuls_of_a_branch_that_computes_attention_dynamically():
    """Beside attention the MatMuls run between float kernels: quantize.static and quantize.auto's static scheme
    quantize them dynamically unless transformer_matmuls says static; MatMuls of other branches stay QDQ."""
    from mmedge.compress.quantize.static import static_plan

    def node(name, op, branch):
        return {"node": name, "op": op, "branch": branch, "attention": branch == "text"}

    nodes = [
        node("conv", "Conv", "image"),
        node("proj", "MatMul", "image"),
        node("attn", "Attention", "text"),
        node("ffn", "MatMul", "text"),
        node("emb", "Gather", "text"),
        node("head", "MatMul", "head"),
    ]
    dyn = {"attn", "ffn", "emb"}
    expected = {n["node"]: "int8-dynamic" if n["node"] in dyn else "int8-static" for n in nodes}
    assert static_plan(nodes, ("Conv", "MatMul"), ("Gather", "Attention")) == expected
    assert _plan(nodes, "int8-static", AutoQuantConfig()) == expected
    as_qdq = {**expected, "ffn": "int8-static"}
    assert static_plan(nodes, ("Conv", "MatMul"), ("Gather", "Attention"), "static") == as_qdq
    assert _plan(nodes, "int8-static", AutoQuantConfig(transformer_matmuls="static")) == as_qdq


def test_quantize_auto_config_errors_are_recipe_errors():
    def steps(**kw):
        return {"name": "q", "steps": [{"type": "train"}, {"type": "export"}, {"type": "quantize.auto", **kw}]}

    with pytest.raises(RecipeError, match="unknown branch 'audio'"):
        parse_recipe(steps(branch_precision={"audio": "fp32"}))
    with pytest.raises(RecipeError, match="branch_precision"):
        parse_recipe(steps(branch_precision={"text": "int4"}))
    with pytest.raises(RecipeError, match="unknown op type 'LSMT'"):
        parse_recipe(steps(dynamic_op_types=["LSMT"]))


def test_quantize_auto_ships_the_per_branch_mix_it_was_given(tmp_path, tiny_onnx, data_cfg):
    from mmedge.compress.quantize.graph import op_histogram

    mix = {"image": "int8-static", "text": "int8-dynamic", "head": "fp32"}
    cfg = AutoQuantConfig(**FAST, branch_precision=mix)
    out = tmp_path / "mix.onnx"
    r = auto_quantize(tiny_onnx["cnn-lstm"], out, cfg, data_cfg, None, 100.0, "cpu")
    nodes = {n["node"]: n["branch"] for n in quantizable_nodes(prepare(tiny_onnx["cnn-lstm"], tmp_path / "p.onnx"))}
    chosen = {nodes[n]: s for n, s in r["plan"].items()}
    assert chosen["image"] == "int8-static" and chosen["text"] == "int8-dynamic" and "head" not in chosen
    ops = op_histogram(out)
    assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DynamicQuantizeLSTM") == 1


def test_branch_sensitivity_alone_measures_each_branch_once_and_keeps_the_fallback_off(
    tmp_path, tiny_onnx, data_cfg, monkeypatch
):
    """A large model measures its branches, not each of its nodes: one validation pass per branch and scheme."""
    src = tiny_onnx["cnn-lstm"]
    calls = []
    real = auto._Evaluator.accuracy

    def counted(self, path, split="val"):
        calls.append((path, split))
        return real(self, path, split)

    monkeypatch.setattr(auto._Evaluator, "accuracy", counted)
    cfg = AutoQuantConfig(**FAST, schemes=("int8-dynamic",), sensitivity="branches")
    r = auto_quantize(src, tmp_path / "auto.onnx", cfg, data_cfg, None, 0.0, "cpu", None)
    # dynamic int8 leaves Conv out, so the image branch has nothing to measure under it
    assert r["sensitivity"]["nodes"] == [] and {b["branch"] for b in r["sensitivity"]["branches"]} >= {"text", "head"}
    branches = len(r["sensitivity"]["branches"])
    val = [p for p, split in calls if split == "val"]
    assert len(val) == 1 + 2 + branches  # the input, fp32 and int8-dynamic candidates, one per branch
    assert not any("+fp32x" in c["name"] for c in r["candidates"])  # no node ranking, no fallback
