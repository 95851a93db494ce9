"""Where a recipe's model comes from: the zoo (trained by the recipe), an existing ONNX file, a Hugging Face folder or
a Python factory (the last two: ``mmedge.models.external``).

``model.source: onnx:PATH`` (or ``mmedge run --model onnx:PATH``) starts the chain from that file with the
``load.onnx`` step: the PyTorch steps (train, load, prune, distill, export) are left out of the chain — the
dry run lists them as skipped — and the ONNX Runtime steps (optimize, quantize, validate, bench, mobile,
bundle) run on it as on any exported model. The loaded file is the reference that accuracy budgets and
parity are measured against. Scoring and bundling need the mmedge metadata (tokenizer, labels,
preprocessing) that `mmedge export` writes; a file without it can still be quantized, benched and converted
for mobile, and the steps that need it say so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from mmedge.artifact import Artifact
from mmedge.errors import InputPathError, RecipeError
from mmedge.results import LoadOnnxMetrics
from mmedge.steps.registry import STEP_TABLE, StepConfig, StepContext, StepResult, register_step

KINDS = ("onnx", "hf", "py")
# Steps that rebuild or reshape a zoo model from its family options: a model from outside the zoo cannot be
# rebuilt at a new width, so these are left out for hf: and py: sources.
ZOO_ONLY = ("prune.structured", "prune.magnitude", "distill")


def parse_source(source: str) -> tuple[str, str]:
    """(kind, value) from 'onnx:PATH', 'hf:PATH' or 'py:package.module:factory'; anything else is a clear error."""
    kind, sep, value = source.partition(":")
    if not sep or kind not in KINDS or not value.strip():
        raise RecipeError(
            f"model source '{source}' is not understood; write 'onnx:PATH' for an existing ONNX file, 'hf:PATH' for a "
            "Hugging Face folder, 'py:package.module:factory' for a PyTorch module, or leave model.source out to "
            "train the zoo family the recipe names."
        )
    return kind, value.strip()


def resolve_steps(source: str, steps: list, task: str | None = None) -> tuple[list, list[str]]:
    """The recipe's steps for a chain that starts from ``source``: (steps, types left out).

    onnx: the file is loaded and every PyTorch step is left out. hf:/py: the zoo-only steps are left out; a
    zero-shot Hugging Face model is loaded as it comes (load.model) instead of trained."""
    kind, path = parse_source(source)
    if kind == "onnx":
        kept, skipped = [{"type": "load.onnx", "path": path}], []
        for raw in steps:
            tag = _tag(raw)
            decl = STEP_TABLE.get(tag)
            if decl is not None and decl.torch:
                skipped.append(tag)
            elif tag != "load.onnx":
                kept.append(raw)
        return kept, skipped
    kept, skipped = [], []
    for raw in steps:
        tag = _tag(raw)
        if tag in ZOO_ONLY:
            skipped.append(tag)
        elif tag == "train" and kind == "hf" and task == "zero-shot":
            kept.append({"type": "load.model"})
            skipped.append("train")
        else:
            kept.append(raw)
    return kept, skipped


def _tag(raw) -> str | None:
    return raw.get("type") if isinstance(raw, dict) else getattr(raw, "type", None)


class LoadOnnxConfig(StepConfig):
    type: Literal["load.onnx"] = "load.onnx"
    path: Path = Field(..., description="An existing .onnx file; the chain's reference model.")


@register_step(LoadOnnxConfig, LoadOnnxMetrics)
def load_onnx_step(cfg: LoadOnnxConfig, ctx: StepContext) -> StepResult:
    from mmedge.runtime.session import metadata_json, open_session

    src = Path(cfg.path)
    if src.suffix.lower() != ".onnx" or not src.is_file():
        raise InputPathError(f"model source {src} is not an .onnx file that exists; pass onnx:PATH/TO/model.onnx.")
    out = ctx.out_dir / "model.onnx"
    shutil.copyfile(src, out)  # the chain works on its own copy; the user's file is never touched
    sess = open_session(out, "cpu")
    metrics: dict = {
        "source": str(src),
        "size_bytes": out.stat().st_size,
        "inputs": [{"name": i.name, "type": i.type, "shape": i.shape} for i in sess.get_inputs()],
        "outputs": [{"name": o.name, "type": o.type, "shape": o.shape} for o in sess.get_outputs()],
        "mmedge_metadata": metadata_json(sess, "mmedge.tokenizer") is not None,
    }
    spec = metadata_json(sess, "mmedge.spec") or {}
    if metrics["mmedge_metadata"]:
        from mmedge.runtime.evaluate import evaluate_model

        scored, logits = evaluate_model(out, ctx.recipe.data)
        metrics.update(scored)
        np.save(ctx.out_dir / "reference_logits.npy", logits)
    return StepResult(Artifact(out, "onnx", spec, ("load.onnx",)), LoadOnnxMetrics.model_validate(metrics))
