"""`quantize.auto`: the smallest (or fastest) quantized model within the accuracy budget, with the evidence.

Every decision here is made on the validation split; the test split is scored once, after the choice, for the
report.

1. Build one candidate per scheme (int8 dynamic, int8 static QDQ), each honouring the recipe's per-branch
   precision (e.g. image static, text dynamic, head float), and measure its validation accuracy and size.
2. Sensitivity: on the validation split, the accuracy drop when each quantizable node alone — and each
   modality branch alone — is quantized with each scheme.
3. A scheme over budget falls back: its most sensitive nodes return to float, one at a time, until the
   validation accuracy is within budget; every step of that search is a candidate too.
4. Every candidate within budget (and the float input) is timed in alternating rounds on the target execution
   provider. A latency difference counts only beyond what the run measured: a candidate is slower than the fastest
   only where the 90 % interval of its median per-round time ratio excludes 1.0. ``objective: size`` (default) takes
   the smallest candidate not slower than the fastest by more than ``latency_tolerance``; ``objective: latency`` the
   smallest of those as fast as the fastest. The median's interval, not the scatter of single rounds, decides, so
   that a few disturbed rounds do not change the shipped file from one run to the next. If none is within budget
   the step fails, listing what it tried, unless over-budget results are allowed.

The budget is a drop in validation accuracy against the model the pipeline started from (its first PyTorch
checkpoint, or the loaded ONNX file), so the accuracy already spent by pruning and distillation counts too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from mmedge.artifact import Artifact
from mmedge.compress.onnx_check import Tolerance, check_rewrite
from mmedge.compress.quantize.calibration import CalibrationConfig, calibrate, calibration_feeds
from mmedge.compress.quantize.graph import copy_metadata, op_histogram, prepare
from mmedge.compress.quantize.plan import (
    DYNAMIC_OP_TYPES,
    STATIC_OP_TYPES,
    TRANSFORMER_MATMULS_HELP,
    quantizable_nodes,
    quantize_plan,
    static_scheme,
)
from mmedge.compress.quantize.plan import check_op_types as _check_op_types
from mmedge.errors import BudgetExceededError
from mmedge.models.spec import check_branches
from mmedge.results import AutoQuantMetrics
from mmedge.runtime.bench import MIN_ROUNDS_FOR_A_DIFFERENCE, compare_latency
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step

Precision = Literal["auto", "fp32", "int8-dynamic", "int8-static"]


class AutoQuantConfig(StepConfig):
    type: Literal["quantize.auto"] = "quantize.auto"
    schemes: tuple[Literal["int8-dynamic", "int8-static"], ...] = Field(
        ("int8-dynamic", "int8-static"),
        min_length=1,
        description="Schemes tried. Neither is assumed faster: static QDQ was slower than float at batch 1 on "
        "small models here and faster on heavier convolutions, so each is measured.",
    )
    branch_precision: dict[str, Precision] = Field(
        default_factory=dict,
        description="Per-modality precision, e.g. {image: int8-static, text: int8-dynamic, head: fp32}; "
        "'auto' (or a branch not named) lets the search decide.",
    )
    static_op_types: tuple[str, ...] = Field(
        ("Conv", "MatMul", "Gemm"),
        description="Op types the static scheme "
        "quantizes with QDQ (LSTM, Gather and a fused Attention go dynamic, as in quantize.static).",
    )
    dynamic_op_types: tuple[str, ...] = Field(
        ("MatMul", "Gemm", "LSTM", "Gather", "Attention"),
        description="Op types the dynamic scheme quantizes; Conv is left out (ConvInteger ran ~6x slower here).",
    )
    transformer_matmuls: Literal["dynamic", "static"] = Field("dynamic", description=TRANSFORMER_MATMULS_HELP)
    per_channel: bool = Field(True, description="Per-channel weight scales.")
    max_accuracy_drop: float | None = Field(
        None,
        ge=0,
        description="Accuracy points the result may lose against the pipeline's first model; "
        "default: the recipe's budgets.max_accuracy_drop.",
    )
    ep: str | None = Field(None, description="Execution provider to time candidates on; default: the first target.")
    threads: int = Field(1, ge=1, description="Threads for timing; 1 is the usual edge setting and the least noisy.")
    batch_size: int = Field(1, ge=1, description="Batch size the latency ranking uses.")
    rounds: int = Field(
        40,
        ge=2,
        description="Interleaved timing rounds per candidate (a p10 over 40 rounds shrugs off a few disturbed ones).",
    )
    round_ms: float = Field(
        20.0,
        ge=0,
        description="Each candidate's calls in a round last at least this long (ms; at least 10 calls), so a "
        "round is not decided by one interrupt.",
    )
    objective: Literal["size", "latency"] = Field(
        "size",
        description="What the choice optimizes among candidates within budget. 'size': the smallest candidate not "
        "measurably slower than the fastest by more than latency_tolerance (a smaller file ships and loads faster "
        "everywhere, while batch-1 speed ranks differ between CPUs). 'latency': the smallest of the candidates "
        "measurably as fast as the fastest.",
    )
    latency_tolerance: float = Field(
        0.10,
        ge=0,
        lt=1,
        description="objective 'size': a candidate counts as fast enough unless it is slower than the fastest by "
        "more than this share beyond what the run measured (the 90 % interval of its median per-round ratio above 1 + "
        "tolerance).",
    )
    fallback: bool = Field(True, description="Return the most sensitive nodes to float until the budget holds.")
    sensitivity: Literal["nodes", "branches"] = Field(
        "nodes",
        description="What is quantized alone to measure its validation accuracy drop: every quantizable node and "
        "every branch ('nodes', which the fallback needs), or only every branch ('branches': one validation pass "
        "per branch and scheme instead of one per node — a model with ~90 quantizable nodes, such as "
        "EfficientNet-Lite0 + MiniLM, would need ~180 passes; the fallback is then off).",
    )
    min_agreement: float = Field(
        0.85,
        ge=0,
        le=1,
        description="Least share of validation answers a candidate must keep from its input. The accuracy budget "
        "is the "
        "main guard; this one catches a candidate that keeps accuracy while changing many answers. Below 0.97 "
        "because small models with near-tied logits flip answers under int8 noise at unchanged accuracy (the "
        "built-in ViT keeps ~91%).",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="For the static scheme.")
    allow_over_budget: bool = Field(
        False, description="Keep the most accurate candidate when none meets the budget, instead of failing."
    )

    @field_validator("branch_precision")
    @classmethod
    def _branches(cls, v: dict[str, str]) -> dict[str, str]:
        return check_branches(v)

    @field_validator("static_op_types")
    @classmethod
    def _static_ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_op_types(v, STATIC_OP_TYPES)

    @field_validator("dynamic_op_types")
    @classmethod
    def _dynamic_ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_op_types(v, DYNAMIC_OP_TYPES)


class _Evaluator:
    """Accuracy of ONNX models on the validation split (every decision) and the test split (the report only)."""

    def __init__(self, path: Path, data_cfg):
        from mmedge.data import load_dataset
        from mmedge.runtime.evaluate import ModelInputs, model_data_config
        from mmedge.runtime.session import open_session

        sess = open_session(path)
        self.vocab = ModelInputs.of(sess)
        data = load_dataset(model_data_config(sess, data_cfg))
        self.test, self.val = data.test, data.val
        self._cache: dict = {}

    def logits(self, path: Path, split: str = "val"):
        """Logits of a model on a split, computed once per (model, split)."""
        from mmedge.runtime.evaluate import predict
        from mmedge.runtime.session import open_session

        key = (str(path), split)
        if key not in self._cache:
            self._cache[key] = predict(open_session(path), self.test if split == "test" else self.val, self.vocab)
        return self._cache[key]

    def accuracy(self, path: Path, split: str = "val") -> float:
        from mmedge.runtime.evaluate import score

        return score(self.logits(path, split), self.test if split == "test" else self.val).accuracy


def _plan(nodes: list[dict], scheme: str, cfg: AutoQuantConfig, fallback: frozenset = frozenset()) -> dict[str, str]:
    """{node: scheme} for one candidate; per-branch precision from the recipe wins over the search."""
    static_ops = set(cfg.static_op_types) | ({"MatMul"} if "Gemm" in cfg.static_op_types else set())
    dynamic_ops = set(cfg.dynamic_op_types) | ({"MatMul"} if "Gemm" in cfg.dynamic_op_types else set())
    plan = {}
    for n in nodes:
        forced = cfg.branch_precision.get(n["branch"], "auto")
        s = forced if forced != "auto" else ("fp32" if n["node"] in fallback else scheme)
        op = n["op"]
        if s == "int8-static":
            if op in static_ops and op != "LSTM":
                plan[n["node"]] = static_scheme(n, cfg.transformer_matmuls)
            elif op in ("LSTM", "Gather", "Attention"):  # no QDQ LSTM or Attention in ORT; int8 embedding tables
                plan[n["node"]] = "int8-dynamic"
        elif s == "int8-dynamic" and op in dynamic_ops:
            plan[n["node"]] = "int8-dynamic"
    return plan


def auto_quantize(
    src: Path, out: Path, cfg: AutoQuantConfig, data_cfg, reference: float | None, budget: float, ep: str, budgets=None
) -> dict:
    """Build, gate and time the candidates; copy the chosen one to ``out``. ``reference`` is the validation accuracy
    of the pipeline's first model (None: the input's)."""
    from mmedge.runtime.inputs import split_feeds

    work = Path(tempfile.mkdtemp(prefix="candidates-", dir=out.parent))
    try:
        prepared = prepare(src, work / "prepared.onnx")
        nodes = quantizable_nodes(prepared)
        ev = _Evaluator(src, data_cfg)
        input_val = ev.accuracy(src)
        ref = input_val if reference is None else reference
        cache = None
        if "int8-static" in cfg.schemes or "int8-static" in cfg.branch_precision.values():
            feeds = calibration_feeds(src, cfg.calibration, data_cfg)
            ops = sorted({n["op"] for n in nodes} | set(cfg.static_op_types))
            cache = calibrate(prepared, feeds, cfg.calibration, ops, work / "calibration.json")
        count = iter(range(1_000_000))

        def build(plan: dict[str, str]) -> Path:
            path = work / f"{next(count):03d}.onnx"
            quantize_plan(prepared, path, plan, cache, cfg.calibration, cfg.per_channel)
            return path

        def drop(acc: float) -> float:
            return round((ref - acc) * 100, 4)

        # "fp32": every branch the recipe did not fix stays float (the input itself, unless a branch is fixed)
        base = _plan(nodes, "fp32", cfg)
        base_path = build(base) if base else src
        candidates = [{"name": "fp32", "plan": base, "path": base_path, "val_accuracy": ev.accuracy(base_path)}]
        for scheme in cfg.schemes:
            plan = _plan(nodes, scheme, cfg)
            path = build(plan)
            candidates.append({"name": scheme, "plan": plan, "path": path, "val_accuracy": ev.accuracy(path)})

        sensitivity = _sensitivity(nodes, cfg, ev, build, input_val)

        # Fallback: the most sensitive nodes back to float until the budget holds on validation.
        if cfg.fallback and cfg.sensitivity == "nodes":
            for scheme in cfg.schemes:
                base = next(c for c in candidates if c["name"] == scheme)
                if drop(base["val_accuracy"]) <= budget:
                    continue
                ranked = sorted(
                    (s for s in sensitivity["nodes"] if s["scheme"] == scheme), key=lambda s: -s["drop_points"]
                )
                kept: set[str] = set()
                for s in ranked:
                    if cfg.branch_precision.get(s["branch"], "auto") != "auto":
                        continue  # the recipe fixed this branch's precision
                    kept.add(s["node"])
                    plan = _plan(nodes, scheme, cfg, frozenset(kept))
                    path = build(plan)
                    cand = {
                        "name": f"{scheme}+fp32x{len(kept)}",
                        "plan": plan,
                        "path": path,
                        "val_accuracy": ev.accuracy(path),
                        "float_nodes": sorted(kept),
                    }
                    candidates.append(cand)
                    if drop(cand["val_accuracy"]) <= budget:
                        break

        input_answers = ev.logits(src).argmax(1)
        for c in candidates:
            c["drop_points"] = drop(c["val_accuracy"])
            c["size_bytes"] = Path(c["path"]).stat().st_size
            c["agreement"] = float((ev.logits(c["path"]).argmax(1) == input_answers).mean())
            c["within_budget"] = (
                c["drop_points"] <= budget
                and c["agreement"] >= cfg.min_agreement
                and (budgets is None or budgets.max_size_mb is None or c["size_bytes"] <= budgets.max_size_mb * 1e6)
            )
        timed = [c for c in candidates if c["within_budget"]] or candidates
        timing = compare_latency(
            {c["name"]: c["path"] for c in timed},
            split_feeds(src, data_cfg, n=64),
            ep,
            cfg.threads,
            cfg.batch_size,
            rounds=cfg.rounds,
            min_round_ms=cfg.round_ms,
        )
        for c in timed:
            t = timing.candidates[c["name"]]
            c["p50_ms"] = t.p50_ms
            c["latency_ratio"] = [t.ratio_p10, t.ratio_p50, t.ratio_p90]  # per-round ratio to the fastest
            if budgets is not None and budgets.max_latency_ms is not None and c["p50_ms"] > budgets.max_latency_ms:
                c["within_budget"] = False
        ok = [c for c in candidates if c["within_budget"]]
        if ok:
            best, rule = choose(ok, cfg.objective, cfg.latency_tolerance, timing)
            fastest = fastest_of(ok, timing)["name"]
            for c in timed:  # every ratio against the candidate the rule calls the fastest
                c["latency_ratio"] = list(timing.ratio_interval(c["name"], fastest))
        elif cfg.allow_over_budget:
            best, fastest = max(candidates, key=lambda c: c["val_accuracy"]), timing.fastest
            rule = "no candidate met the budget; the most accurate on validation is kept (allow_over_budget)"
        else:
            tried = "; ".join(
                f"{c['name']}: -{c['drop_points']:.2f} pts, {c['size_bytes'] / 1e6:.3f} MB"
                + (f", {c['p50_ms']:.3f} ms" if "p50_ms" in c else "")
                for c in candidates
            )
            top = max(candidates, key=lambda c: c["val_accuracy"])
            raise BudgetExceededError(
                f"no quantized candidate meets the budget (at most {budget:g} validation accuracy points below "
                f"{ref:.2%}): tried {tried}; the best reached {top['val_accuracy']:.2%} ({top['name']}); loosen the "
                "budget, prune less, or pass --allow-over-budget."
            )
        # Decided. The test split is scored now, for the report only.
        for c in candidates:
            c["test_accuracy"] = ev.accuracy(c["path"], "test")
        shutil.copyfile(best["path"], out)
        precision = "fp32" if not best["plan"] else "+".join(sorted(set(best["plan"].values())))
        copy_metadata(
            src, out, {"mmedge.precision": precision, "mmedge.plan": json.dumps(best["plan"], sort_keys=True)}
        )
        columns = (
            "name",
            "val_accuracy",
            "test_accuracy",
            "drop_points",
            "agreement",
            "size_bytes",
            "p50_ms",
            "latency_ratio",
            "within_budget",
            "float_nodes",
        )
        return {
            "chosen": best["name"],
            "selection_split": "val",
            "choice": {
                "objective": cfg.objective,
                "latency_tolerance": cfg.latency_tolerance,
                "rule": rule,
                "fastest": fastest,
                "latency_ratio": best.get("latency_ratio"),
                "timing": timing.to_json(),
            },
            "within_budget": best["within_budget"],
            "budget_points": budget,
            "reference_val_accuracy": ref,
            "input_val_accuracy": input_val,
            "input_test_accuracy": ev.accuracy(src, "test"),
            "ep": ep,
            "threads": cfg.threads,
            "batch_size": cfg.batch_size,
            "candidates": [{k: c.get(k) for k in columns} for c in candidates],
            "plan": best["plan"],
            "sensitivity": sensitivity,
            "ops": op_histogram(out),
            "quantizable_nodes": len(nodes),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fastest_of(ok: list[dict], timing) -> dict:
    """The fastest candidate as the timing harness ranks them: the lowest median round time."""
    return min(ok, key=lambda c: float(np.median(timing.round_ms[c["name"]])))


def choose(ok: list[dict], objective: str, tolerance: float, timing) -> tuple[dict, str]:
    """The chosen candidate among those within budget, and the rule that chose it in words.

    A latency difference counts only beyond what the run measured: candidate c is slower than the fastest f only
    when the whole 90 % interval of its median per-round ratio t(c)/t(f) lies above 1 (plus the tolerance for the
    size objective). The interval of the median, not the scatter of single rounds, so that a few disturbed rounds
    do not turn the choice from one run to the next (a shipped model should be the same file every time)."""
    fastest = fastest_of(ok, timing)
    limit = 1.0 + (tolerance if objective == "size" else 0.0)
    if timing.rounds < MIN_ROUNDS_FOR_A_DIFFERENCE:  # too few rounds to tell any two apart: size decides
        fast_enough = list(ok)
    else:
        fast_enough = [c for c in ok if c is fastest or timing.median_interval(c["name"], fastest["name"])[0] <= limit]
    best = min(fast_enough, key=lambda c: (c["size_bytes"], c["p50_ms"]))
    others = ", ".join(sorted(c["name"] for c in fast_enough if c is not best)) or "none"
    if objective == "size":
        rule = (
            f"smallest within budget whose median per-round latency ratio to the fastest ({fastest['name']}) may be "
            f"at most {limit:.2f} (90 % interval); also fast enough: {others}"
        )
    else:
        rule = (
            f"smallest of those measurably as fast as the fastest ({fastest['name']}: the 90 % interval of the median "
            f"per-round ratio reaches 1.00); also as fast: {others}"
        )
    return best, rule


def _sensitivity(nodes: list[dict], cfg: AutoQuantConfig, ev: _Evaluator, build, input_val: float) -> dict:
    """Validation accuracy drop with each quantizable node alone, and each modality branch alone, quantized."""
    out: dict = {"split": "val", "input_val_accuracy": input_val, "nodes": [], "branches": []}
    for scheme in cfg.schemes:
        full = _plan(nodes, scheme, cfg)
        for n in nodes if cfg.sensitivity == "nodes" else ():
            if n["node"] not in full:
                continue
            p = build({n["node"]: full[n["node"]]})
            drop = round((input_val - ev.accuracy(p)) * 100, 4)
            where = {k: n[k] for k in ("node", "op", "branch")}
            out["nodes"].append({**where, "scheme": scheme, "drop_points": drop})
        for branch in sorted({n["branch"] for n in nodes}):
            part = {k: v for k, v in full.items() if next(x for x in nodes if x["node"] == k)["branch"] == branch}
            if part:
                p = build(part)
                out["branches"].append(
                    {
                        "branch": branch,
                        "scheme": scheme,
                        "nodes": len(part),
                        "drop_points": round((input_val - ev.accuracy(p)) * 100, 4),
                    }
                )
    return out


@register_step(AutoQuantConfig, AutoQuantMetrics)
def quantize_auto_step(cfg: AutoQuantConfig, ctx: StepContext) -> StepResult:
    from mmedge.runtime.session import open_session

    src = ctx.artifact.path
    out = ctx.out_dir / "model.onnx"
    recipe = ctx.recipe
    budget = cfg.max_accuracy_drop if cfg.max_accuracy_drop is not None else recipe.budgets.max_accuracy_drop
    ep = cfg.ep or (recipe.targets[0] if recipe.targets else "cpu")
    open_session(src, ep).get_providers()  # the target EP must be installed before anything is timed on it
    first = ctx.reference()  # the budget counts on validation, against the model the chain started from
    reference = first.result.metrics.val.accuracy if first and first.result.metrics.val else None
    allow = cfg.allow_over_budget or ctx.allow_over_budget
    info = auto_quantize(
        src,
        out,
        cfg.model_copy(update={"allow_over_budget": allow}),
        recipe.data,
        reference,
        budget,
        ep,
        recipe.budgets,
    )
    # Parity and test figures against the input model, for the report; the budget above (validation) decided.
    loose = Tolerance(max_accuracy_drop=100.0, min_agreement=0.0)
    metrics = check_rewrite("quantize.auto", src, out, recipe.data, loose)
    metrics.update(info)
    metrics["branch_sizes"] = _branch_sizes(out)
    metrics["latency_share"] = _latency_share(out, recipe.data, ep, cfg.threads, cfg.batch_size)
    return StepResult(
        Artifact(out, "onnx", ctx.artifact.spec, (*ctx.artifact.lineage, "quantize.auto")),
        AutoQuantMetrics.model_validate(metrics),
    )


def _branch_sizes(path: Path) -> dict[str, int]:
    import onnx

    from mmedge.runtime.branches import branch_sizes

    return branch_sizes(onnx.load(str(path)))


def _latency_share(path: Path, data_cfg, ep: str, threads: int, batch: int) -> dict[str, float]:
    from mmedge.runtime.bench import tile_batch
    from mmedge.runtime.inputs import split_feeds
    from mmedge.runtime.profile import branch_latency

    return branch_latency(path, tile_batch(split_feeds(path, data_cfg, n=64), batch), ep, threads)["share"]
