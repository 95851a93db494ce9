"""The gate every ONNX-to-ONNX step passes before the next step sees its output.

A rewritten model is compared with the model it came from on the whole test split: argmax agreement and
logit differences (parity), and test accuracy. A step states its tolerance; a model outside it is not kept.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mmedge.errors import BudgetExceededError


class Tolerance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    max_accuracy_drop: float = Field(
        1.0, ge=0, description="Most test-accuracy points this step may cost against its input model."
    )
    min_agreement: float = Field(
        0.97,
        ge=0,
        le=1,
        description="Least share of test questions on which the new model must give the same answer as its input.",
    )


def check_rewrite(step: str, before: Path, after: Path, data_cfg, tol: Tolerance) -> dict:
    """Accuracy of both models and their parity; raises when the rewrite is outside ``tol``."""
    from mmedge.runtime.evaluate import evaluate_model, parity

    ref_metrics, ref_logits = evaluate_model(before, data_cfg, ablation=False)
    metrics, logits = evaluate_model(after, data_cfg, ablation=True)
    metrics["parity"] = parity(logits, ref_logits)
    metrics["input_accuracy"] = ref_metrics["test"]["accuracy"]
    metrics["accuracy_drop_points"] = round((ref_metrics["test"]["accuracy"] - metrics["test"]["accuracy"]) * 100, 4)
    metrics["size_bytes"] = after.stat().st_size
    metrics["input_size_bytes"] = before.stat().st_size
    problems = []
    if metrics["accuracy_drop_points"] > tol.max_accuracy_drop:
        problems.append(
            f"it loses {metrics['accuracy_drop_points']:.2f} accuracy points (allowed {tol.max_accuracy_drop:g})"
        )
    if metrics["parity"]["argmax_agreement"] < tol.min_agreement:
        problems.append(
            f"it agrees with its input on {metrics['parity']['argmax_agreement']:.2%} of answers "
            f"(required {tol.min_agreement:.0%})"
        )
    if problems:
        raise BudgetExceededError(
            f"the {step} step's model is outside its tolerance: {'; '.join(problems)}; loosen "
            "the step's tolerance or choose a gentler setting."
        )
    return metrics
