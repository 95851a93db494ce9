"""The gate every ONNX-to-ONNX step passes before the next step sees its output.

A rewritten model is compared with the model it came from. The gate decides on the validation split: accuracy
drop and argmax agreement there. The test split is scored once, for the report (test accuracy, ablation, parity),
and never decides. A step states its tolerance; a model outside it is not kept.

A chain that starts from a foreign ONNX model (no mmedge metadata, so no data to score) is judged by fidelity
instead: every output of the rewritten model against the source model's, on the chain's inputs (the user's .npz, or
synthetic ones), gated on the cosine per output and, for outputs that look like class scores, argmax agreement.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from mmedge.errors import BudgetExceededError
from mmedge.runtime.fidelity import model_outputs, output_fidelity


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
        "input (a foreign ONNX model: of the chain's inputs, on outputs that look like class scores).",
    )
    min_cosine: float = Field(
        0.99,
        ge=-1,
        le=1,
        description="A foreign ONNX model (no data to score): least mean cosine, per output, between the new model's "
        "outputs and the source model's on the chain's inputs. Dynamic int8 of MatMul weights usually stays above "
        "0.999; 0.99 leaves room for static activation ranges.",
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

    if chain_source(ctx) is not None:  # a foreign ONNX model: no data to score, judged by fidelity
        metrics = {**check_fidelity(step, ctx, ctx.artifact.path, out, tol), **info}
    else:
        metrics = {**check_rewrite(step, ctx.artifact.path, out, ctx.recipe.data, tol), **info}
    artifact = Artifact(out, "onnx", ctx.artifact.spec, (*ctx.artifact.lineage, step))
    return StepResult(artifact, metrics_cls.model_validate(metrics))


def chain_source(ctx):
    """(the load.onnx record, its ChainInputs) when the chain started from a foreign ONNX model, else None."""
    ref = ctx.reference()
    inputs = getattr(ref.result.metrics, "chain_inputs", None) if ref is not None else None
    return (ref, inputs) if inputs is not None else None


def source_fidelity(ctx, path: Path) -> dict:
    """The Fidelity figures of the model at ``path`` against the chain's foreign source model."""
    from mmedge.runtime.inputs import npz_feeds

    ref, inputs = chain_source(ctx)
    feeds = npz_feeds(ref.folder / inputs.file)
    reference = npz_feeds(ref.folder / REFERENCE_OUTPUTS)
    return {
        "against": ref.config.type,
        "inputs": inputs.kind,
        "inputs_source": inputs.source,
        "samples": inputs.samples,
        **output_fidelity(model_outputs(path, feeds), reference),
    }


REFERENCE_OUTPUTS = "reference_outputs.npz"  # the source model's outputs on the chain's inputs (load.onnx folder)


def check_fidelity(step: str, ctx, before: Path, after: Path, tol: Tolerance) -> dict:
    """A rewrite of a foreign model: its fidelity to the source model; raises when it is outside ``tol``."""
    fid = source_fidelity(ctx, after)
    fid["required_cosine"], fid["required_agreement"] = tol.min_cosine, tol.min_agreement
    problems = [
        f"output '{o['name']}' has cosine {o['cosine']:.4f} with the source model's (required {tol.min_cosine:g})"
        for o in fid["outputs"]
        if o["cosine"] < tol.min_cosine
    ]
    problems += [
        f"output '{o['name']}' has the same argmax as the source model on {o['argmax_agreement']:.2%} of the "
        f"inputs (required {tol.min_agreement:.0%})"
        for o in fid["outputs"]
        if o.get("argmax_agreement") is not None and o["argmax_agreement"] < tol.min_agreement
    ]
    if problems:
        raise BudgetExceededError(
            f"the {step} step's model is outside its tolerance on {fid['inputs']} inputs: {'; '.join(problems)}; "
            "loosen the step's tolerance (min_cosine, min_agreement) or choose a gentler setting."
        )
    return {"fidelity": fid, "size_bytes": after.stat().st_size, "input_size_bytes": before.stat().st_size}
