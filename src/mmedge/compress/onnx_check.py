"""The gate every ONNX-to-ONNX step passes before the next step sees its output.

A rewritten model is compared with the model it came from. The gate decides on the validation split: accuracy
drop and argmax agreement there. The test split is scored once, for the report (test accuracy, ablation, parity),
and never decides. A step states its tolerance; a model outside it is not kept.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mmedge.errors import BudgetExceededError


class Tolerance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    max_accuracy_drop: float = Field(
        1.0, ge=0, description="Most validation-accuracy points this step may cost against its input model."
    )
    min_agreement: float = Field(
        0.97,
        ge=0,
        le=1,
        description="Least share of validation questions on which the new model must give the same answer as its "
        "input.",
    )


def check_rewrite(step: str, before: Path, after: Path, data_cfg, tol: Tolerance) -> dict:
    """Accuracy of both models and their parity; raises when the rewrite is outside ``tol`` on validation."""
    from mmedge.runtime.evaluate import evaluate_model, parity, score, split_logits

    val_before, val = split_logits(before, data_cfg, "val")
    val_after, _ = split_logits(after, data_cfg, "val")
    selection = {
        "split": "val",
        "input_accuracy": score(val_before, val).accuracy,
        "accuracy": score(val_after, val).accuracy,
        "agreement": float((val_after.argmax(1) == val_before.argmax(1)).mean()),
    }
    selection["accuracy_drop_points"] = round((selection["input_accuracy"] - selection["accuracy"]) * 100, 4)
    problems = []
    if selection["accuracy_drop_points"] > tol.max_accuracy_drop:
        problems.append(
            f"it loses {selection['accuracy_drop_points']:.2f} validation accuracy points "
            f"(allowed {tol.max_accuracy_drop:g})"
        )
    if selection["agreement"] < tol.min_agreement:
        problems.append(
            f"it agrees with its input on {selection['agreement']:.2%} of validation answers "
            f"(required {tol.min_agreement:.0%})"
        )
    if problems:
        raise BudgetExceededError(
            f"the {step} step's model is outside its tolerance: {'; '.join(problems)}; loosen "
            "the step's tolerance or choose a gentler setting."
        )
    # Decided; now the test split, once, for the report.
    ref_metrics, ref_logits = evaluate_model(before, data_cfg, ablation=False)
    metrics, logits = evaluate_model(after, data_cfg, ablation=True)
    metrics["gate"] = selection
    metrics["parity"] = parity(logits, ref_logits)
    metrics["input_accuracy"] = ref_metrics["test"]["accuracy"]
    metrics["accuracy_drop_points"] = round((ref_metrics["test"]["accuracy"] - metrics["test"]["accuracy"]) * 100, 4)
    metrics["size_bytes"] = after.stat().st_size
    metrics["input_size_bytes"] = before.stat().st_size
    return metrics


def gated_result(ctx, step: str, out: Path, tol: Tolerance, metrics_cls, info: dict):
    """The StepResult of an ONNX rewrite of the chain's model into ``out``: gated by ``check_rewrite``, its figures
    with the rewrite's own ``info`` as the step's typed metrics."""
    from mmedge.artifact import Artifact
    from mmedge.steps.registry import StepResult

    metrics = {**check_rewrite(step, ctx.artifact.path, out, ctx.recipe.data, tol), **info}
    artifact = Artifact(out, "onnx", ctx.artifact.spec, (*ctx.artifact.lineage, step))
    return StepResult(artifact, metrics_cls.model_validate(metrics))
