"""Pipeline steps that only need ONNX Runtime: validate (accuracy, ablation, parity, budget) and bench.

A chain from a foreign ONNX model (no mmedge metadata) has no data to score: validate reports the shipped model's
fidelity to the source model, and bench times it on the chain's inputs (the user's, or synthetic ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmedge.errors import BudgetExceededError, MmedgeError
from mmedge.results import BenchMetrics, ValidateMetrics
from mmedge.runtime.bench import bench_model
from mmedge.runtime.evaluate import evaluate_model, parity
from mmedge.runtime.inputs import step_feeds
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step


class ValidateConfig(StepConfig):
    type: Literal["validate"] = "validate"
    ablation: bool = Field(
        True,
        description="Also score with the image blanked and with the text emptied, to show "
        "the model needs both modalities.",
    )


class BenchConfig(StepConfig):
    type: Literal["bench"] = "bench"
    runs: int = Field(300, ge=1, description="Timed runs per batch size (after warm-up); medians need many.")
    warmup: int = Field(30, ge=0, description="Untimed runs first, so allocations and caches settle.")
    batch_sizes: tuple[int, ...] = Field(
        (1, 32), min_length=1, description="Batch 1 is the interactive case; 32 shows throughput."
    )
    threads: int = Field(
        1,
        ge=0,
        description="intra-op threads; 1 is the usual edge setting and often fastest at "
        "batch 1; 0 lets onnxruntime choose.",
    )
    max_seconds: float | None = Field(20.0, gt=0, description="Time budget per batch size (at least 10 runs).")
    allow_missing: bool = Field(
        False,
        description="Record a target EP this onnxruntime lacks as unavailable instead of failing (a recipe for "
        "a phone, run on a build machine); nothing is ever reported under an EP that did not run.",
    )


def accuracy_drop_points(candidate: float, reference: float) -> float:
    return round((reference - candidate) * 100, 4)


@register_step(ValidateConfig, ValidateMetrics)
def validate_step(cfg: ValidateConfig, ctx: StepContext) -> StepResult:
    from mmedge.compress.onnx_check import chain_source, source_fidelity

    if chain_source(ctx) is not None:  # a foreign ONNX model has no data to score: its fidelity to the source model
        fidelity = source_fidelity(ctx, ctx.artifact.path)
        return StepResult(ctx.artifact, ValidateMetrics(fidelity=fidelity, samples=fidelity["samples"]))
    metrics, logits = evaluate_model(ctx.artifact.path, ctx.recipe.data, ablation=cfg.ablation)
    ref = ctx.reference_logits()
    if ref is not None:
        reference = ctx.reference().result.metrics  # a Scored model: the first model's val and test scores
        metrics["parity"] = parity(logits, ref)
        # The budget decides on validation accuracy, against the first model's validation accuracy; the test
        # figures beside it are reported, never compared to decide.
        gate = {
            "split": "val",
            "reference_accuracy": reference.val.accuracy,
            "accuracy": metrics["val"]["accuracy"],
        }
        gate["accuracy_drop_points"] = accuracy_drop_points(gate["accuracy"], gate["reference_accuracy"])
        metrics["gate"] = gate
        metrics["reference_accuracy"] = reference.test.accuracy
        metrics["accuracy_drop_points"] = accuracy_drop_points(
            metrics["test"]["accuracy"], metrics["reference_accuracy"]
        )
        budget = ctx.recipe.budgets.max_accuracy_drop
        metrics["within_budget"] = budget is None or gate["accuracy_drop_points"] <= budget
        if not metrics["within_budget"] and not ctx.allow_over_budget:
            raise BudgetExceededError(
                f"the model loses {gate['accuracy_drop_points']:.2f} validation accuracy points against the model "
                f"the pipeline started from, over the budget of {budget:g}; relax budgets.max_accuracy_drop, "
                "compress less, or pass --allow-over-budget."
            )
    first = next((r for r in ctx.records if r.result.artifact.kind == "onnx"), None)
    if first is not None and first.result.artifact.path != ctx.artifact.path:
        from mmedge.runtime.evaluate import embedding_fidelity

        fidelity = embedding_fidelity(ctx.artifact.path, first.result.artifact.path, ctx.recipe.data)
        if fidelity:  # a dual encoder: how far compression moved its embeddings from the fp32 export
            metrics["embeddings"] = {"against": first.config.type, **fidelity}
    return StepResult(ctx.artifact, ValidateMetrics.model_validate(metrics))


@register_step(BenchConfig, BenchMetrics)
def bench_step(cfg: BenchConfig, ctx: StepContext) -> StepResult:
    from mmedge.runtime.providers import available, resolve, unavailable_reason

    feeds, source = step_feeds(ctx.artifact.path, ctx.recipe.data)
    per_ep, unavailable, have = {}, {}, available()
    for ep in ctx.recipe.targets:
        if cfg.allow_missing and resolve(ep).name not in have:
            unavailable[ep] = unavailable_reason(ep)
            continue
        per_ep[ep] = bench_model(
            ctx.artifact.path,
            feeds,
            ep=ep,
            threads=cfg.threads,
            batch_sizes=cfg.batch_sizes,
            runs=cfg.runs,
            warmup=cfg.warmup,
            max_seconds=cfg.max_seconds,
        )
    if not per_ep:
        raise MmedgeError(
            f"none of the recipe's targets ({', '.join(ctx.recipe.targets)}) is in this onnxruntime installation; "
            "add 'cpu' to targets, or run the recipe where one of them is installed (`mmedge providers`)."
        )
    first_ep = next(iter(per_ep))
    budget = ctx.recipe.budgets.max_latency_ms
    p50 = per_ep[first_ep]["batches"][str(cfg.batch_sizes[0])]["p50_ms"]
    if budget is not None and p50 > budget and not ctx.allow_over_budget:
        raise BudgetExceededError(
            f"p50 latency {p50:.3f} ms on '{first_ep}' is over the budget of "
            f"{budget:g} ms; relax budgets.max_latency_ms or compress the model further."
        )
    within = budget is None or p50 <= budget
    metrics = {"targets": per_ep, "unavailable": unavailable, "inputs": source, "within_budget": within}
    metrics["reference"] = against_reference(cfg, ctx, feeds, first_ep)
    return StepResult(ctx.artifact, BenchMetrics.model_validate(metrics))


def against_reference(cfg: BenchConfig, ctx: StepContext, feeds, ep: str) -> dict | None:
    """Size and latency of the benched model against the fp32 ONNX of the chain's first model (the export step's
    ``reference_onnx``), timed in the same alternating rounds at each batch size; None without a reference, or
    when the benched model is that reference."""
    from mmedge.runtime.bench import compare_latency

    export = ctx.latest("export")
    ref = getattr(export.result.metrics, "reference_onnx", None) if export is not None else None
    if ref is None:
        return None
    path = export.folder / ref.file
    if path.resolve() == ctx.artifact.path.resolve():
        return None
    ratios, rounds = {}, {}
    for batch in cfg.batch_sizes:
        timed = compare_latency(
            {"benched": ctx.artifact.path, "reference": path},
            feeds,
            ep,
            cfg.threads,
            batch,
            rounds=REFERENCE_ROUNDS,
            max_seconds=cfg.max_seconds,
            min_round_ms=20,
        )
        ratios[str(batch)] = timed.ratio_interval("benched", "reference")
        rounds[str(batch)] = len(timed.round_ms["benched"])
    size = ctx.artifact.path.stat().st_size
    return {
        "file": f"{export.folder.name}/{ref.file}",
        "size_bytes": ref.size_bytes,
        "size_ratio": size / ref.size_bytes,
        "ep": ep,
        "threads": cfg.threads,
        "latency_ratio": ratios,
        "rounds": rounds,
    }


REFERENCE_ROUNDS = 20  # alternating rounds per batch size against the reference (fewer when max_seconds runs out)
