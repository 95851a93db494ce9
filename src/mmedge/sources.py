"""Where a recipe's model comes from: the zoo (trained by the recipe), an existing ONNX file, a Hugging Face folder or
a Python factory (the last two: ``mmedge.models.external``).

``model.source: onnx:PATH`` (or ``mmedge run --model onnx:PATH``) starts the chain from that file with the
``load.onnx`` step: the PyTorch steps (train, load, prune, distill, export) are left out of the chain — the
dry run lists them as skipped — and the ONNX Runtime steps (optimize, quantize, validate, bench, mobile,
bundle) run on it as on any exported model. The loaded file is the reference that accuracy budgets and
parity are measured against.

A model mmedge exported names its data in its metadata; a recipe whose data differs is refused (scoring a model on
data it was not trained on gives meaningless figures). A model mmedge did not write (no tokenizer metadata) has no
data to score: every step judges it by fidelity to the loaded model — each output compared on the user's inputs
(``inputs``: an .npz, ``mmedge run --inputs``) or, when none are given, on synthetic ones, which the console and
the report say. Its dynamic dimensions other than the batch need sizes (``dims``, ``--dim NAME=SIZE``) or real
inputs: a guessed size would time and judge the model on shapes it never sees.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from mmedge.artifact import Artifact
from mmedge.errors import InputPathError, NotOnnxError, RecipeError
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
        given = next((dict(raw) for raw in steps if isinstance(raw, dict) and raw.get("type") == "load.onnx"), {})
        load = {**given, "type": "load.onnx", "path": path}
        kept, skipped = [load], []
        foreign = _foreign(Path(path))
        for raw in steps:
            tag = _tag(raw)
            decl = STEP_TABLE.get(tag)
            if decl is not None and decl.torch:
                skipped.append(tag)
            elif tag == "quantize.auto" and foreign:
                # its choice is made on validation accuracy, which a model without data cannot give
                kept.append({"type": "quantize.dynamic"})
                skipped.append("quantize.auto (no data to choose on: quantize.dynamic instead, judged by fidelity)")
            elif tag != "load.onnx":
                kept.append(_with_inputs(raw, load))
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


def _foreign(path: Path) -> bool:
    """Whether the file at ``path`` is an ONNX model without mmedge's metadata (False when it cannot be read: the
    load.onnx step says why)."""
    if not path.is_file():
        return False
    try:
        from mmedge.runtime.session import model_metadata

        return "mmedge.tokenizer" not in model_metadata(path)
    except Exception:  # not an ONNX file: load.onnx refuses it in one sentence
        return False


def input_overrides(inputs: Path | None = None, dims: dict[str, int] | None = None):
    """The edit of raw recipe data for ``mmedge run --inputs FILE.npz --dim NAME=SIZE``: set on the chain's
    load.onnx step (added when the recipe has none). Only an onnx: source takes them."""

    def edit(data: dict) -> dict:
        if inputs is None and not dims:
            return data
        source = str((data.get("model") or {}).get("source") or "")
        if not source.startswith("onnx:"):
            raise RecipeError(
                "--inputs and --dim give the inputs of a model loaded from an ONNX file; add --model onnx:PATH or "
                "leave them out."
            )
        steps = list(data.get("steps") or [])
        at = next((k for k, raw in enumerate(steps) if isinstance(raw, dict) and raw.get("type") == "load.onnx"), None)
        load = dict(steps[at]) if at is not None else {"type": "load.onnx", "path": source[len("onnx:") :]}
        if inputs is not None:
            load["inputs"] = str(inputs)
        if dims:
            load["dims"] = {**(load.get("dims") or {}), **dims}
        if at is None:
            steps.insert(0, load)
        else:
            steps[at] = load
        return {**data, "steps": steps}

    return edit


def _with_inputs(raw, load: dict):
    """A step of an onnx: chain given what load.onnx knows of the inputs: quantize.static calibrates on the user's
    .npz unless its calibration names data of its own, and quantize.dynamic's smoothing and keep_float likewise.
    (mobile sizes the dims it leaves open from the chain's inputs, the user's or synthetic ones drawn to the sizes
    given.)"""
    if not isinstance(raw, dict):
        return raw
    if raw.get("type") == "quantize.static" and load.get("inputs"):
        calibration = dict(raw.get("calibration") or {})
        calibration.setdefault("data", str(load["inputs"]))
        return {**raw, "calibration": calibration}
    if raw.get("type") == "quantize.dynamic" and load.get("inputs"):
        return {"calibration_data": str(load["inputs"]), **raw}
    return raw


def _tag(raw) -> str | None:
    return raw.get("type") if isinstance(raw, dict) else getattr(raw, "type", None)


class LoadOnnxConfig(StepConfig):
    type: Literal["load.onnx"] = "load.onnx"
    path: Path = Field(..., description="An existing .onnx file; the chain's reference model.")
    inputs: Path | None = Field(
        None,
        description="A model without mmedge metadata: an .npz with one array per model input (rows on the batch "
        "axis) that fidelity is judged on, quantize.static calibrates on and bench times. Default: synthetic inputs, "
        "said so in the results and the report.",
    )
    dims: dict[str, int] = Field(
        default_factory=dict,
        description="Sizes of the model's named dynamic dimensions for synthetic inputs (e.g. {height: 48}); every "
        "dynamic dimension but the batch needs one when no inputs are given.",
    )
    samples: int = Field(
        16, ge=1, le=1024, description="Synthetic inputs: rows on a dynamic batch axis (enough for argmax agreement)."
    )


def own_copy(src: Path, out: Path) -> None:
    """The chain's copy of the user's model at ``out``: the file as it is, or, when it keeps weights as external
    data beside it, one file with those weights inside (once checked to lie inside the model's folder), so that
    every later step reads one self-contained file."""
    import onnx

    from mmedge.runtime.session import refuse_external_data, save_onnx

    try:
        proto = onnx.load(str(src), load_external_data=False)
    except Exception:  # not an ONNX file: opening the copy refuses it in one sentence
        proto = None
    if proto is None or not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        shutil.copyfile(src, out)
        return
    refuse_external_data(src)
    onnx.load_external_data_for_model(proto, str(src.parent))
    try:
        save_onnx(proto, out)
    except ValueError:  # protobuf's 2 GB limit on one file
        raise NotOnnxError(
            f"{src} with its external data is over the 2 GB one ONNX file can hold, which mmedge's steps need; "
            "compress a model under 2 GB of weights."
        ) from None


@register_step(LoadOnnxConfig, LoadOnnxMetrics)
def load_onnx_step(cfg: LoadOnnxConfig, ctx: StepContext) -> StepResult:
    from mmedge.runtime.session import metadata_json, open_session

    src = Path(cfg.path)
    if src.suffix.lower() != ".onnx" or not src.is_file():
        raise InputPathError(f"model source {src} is not an .onnx file that exists; pass onnx:PATH/TO/model.onnx.")
    out = ctx.out_dir / "model.onnx"
    own_copy(src, out)  # the chain works on its own copy; the user's files are never touched
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

        check_data(src, sess, ctx.recipe.data)
        scored, logits = evaluate_model(out, ctx.recipe.data)
        metrics.update(scored)
        np.save(ctx.out_dir / "reference_logits.npy", logits)
    else:
        check_foreign_steps(src, ctx.recipe.steps, cfg)
        metrics["constants_to_initializers"] = constants_to_initializers(out)
        metrics["chain_inputs"] = keep_inputs(out, cfg, ctx.out_dir, src)
    return StepResult(Artifact(out, "onnx", spec, ("load.onnx",)), LoadOnnxMetrics.model_validate(metrics))


def _data_name(data: dict) -> str:
    if data.get("name", "digits-vqa") == "user":
        return f"the user data at {data.get('path')}"
    return f"the built-in '{data.get('name', 'digits-vqa')}' data"


def check_data(src: Path, sess, data_cfg) -> None:
    """Refuse a recipe whose data is not the data the model was trained on, as its mmedge metadata names it: its
    figures on other data mean nothing. Data moved elsewhere still match by their labels."""
    from mmedge.runtime.session import metadata_json

    trained = metadata_json(sess, "mmedge.data") or {}
    if not trained:  # exported by an mmedge that did not record it: nothing to compare
        return
    recipe = data_cfg.model_dump(mode="json")
    fix = (
        f"pass --data {trained['path']} (or where that data now lives)"
        if trained.get("name") == "user"
        else f"set data.name: {trained.get('name', 'digits-vqa')} in the recipe (and leave --data out)"
    )
    problem = f"{src} was trained on {_data_name(trained)}, but the recipe scores it on {_data_name(recipe)}; {fix}."
    if trained.get("name", "digits-vqa") != recipe["name"]:
        raise RecipeError(problem)
    if recipe["name"] == "user" and Path(trained.get("path") or "").resolve() != Path(recipe["path"]).resolve():
        from mmedge.data import load_dataset

        labels = metadata_json(sess, "mmedge.labels")
        if labels is not None and list(load_dataset(data_cfg).test.classes) != list(labels):
            raise RecipeError(problem)


def check_foreign_steps(src: Path, steps, cfg: LoadOnnxConfig) -> None:
    """Refuse, before any work, the steps that need data a model without mmedge metadata does not have."""
    for step in steps:
        if step.type == "quantize.auto":
            raise RecipeError(
                f"{src} carries no mmedge metadata, so quantize.auto has no validation data to choose a variant "
                "on; use quantize.dynamic or quantize.static (judged by fidelity to the source model) instead."
            )
        if step.type == "quantize.static" and step.calibration.data is None:
            raise RecipeError(
                f"{src} carries no mmedge metadata, so quantize.static has no data to calibrate on; pass real "
                "inputs with --inputs FILE.npz (one array per model input) or set calibration.data."
            )
        calibrates = step.type == "quantize.dynamic" and (step.smooth_alpha is not None or step.keep_float)
        if calibrates and step.calibration_data is None:
            raise RecipeError(
                f"{src} carries no mmedge metadata, so quantize.dynamic has no training split to draw smoothing or "
                "keep_float calibration from; pass real inputs with --inputs FILE.npz, or leave smooth_alpha and "
                "keep_float out."
            )
        if step.type == "bundle" and step.split:
            raise RecipeError(
                f"{src} carries no mmedge metadata, so the bundle cannot be split into encoders; remove split: true."
            )


def constants_to_initializers(path: Path) -> int:
    """Store, in the chain's copy at ``path``, the tensors of the top graph's Constant nodes as initializers: ONNX
    Runtime's quantizers only quantize initializer weights, and exporters such as paddle2onnx write every weight as
    a Constant node (the PP-OCRv4 recognizer: 420 of them, none quantized). The computation is unchanged."""
    import onnx

    from mmedge.runtime.session import save_onnx

    model = onnx.load(str(path))
    graph, moved = model.graph, []
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            moved.append(node)
    for node in moved:
        graph.node.remove(node)
    if moved:
        save_onnx(model, path)
    return len(moved)


def keep_inputs(model: Path, cfg: LoadOnnxConfig, out_dir: Path, original: Path) -> dict:
    """The inputs the chain judges and times the foreign model on, saved in the step folder with the model's
    outputs on them (the reference every later step is compared with); a console note when they are synthetic."""
    from mmedge.compress.onnx_check import REFERENCE_OUTPUTS
    from mmedge.runtime.fidelity import model_outputs
    from mmedge.runtime.inputs import npz_feeds, synthetic_inputs
    from mmedge.runtime.session import check_feeds, open_session

    if cfg.inputs is not None:
        feeds, kind, source = npz_feeds(cfg.inputs), "user", str(cfg.inputs)
        check_feeds(open_session(model, "cpu"), feeds)
    else:
        feeds, source = synthetic_inputs(model, cfg.dims, cfg.samples, cfg.path)
        kind = "synthetic"
        print(
            f"note: {cfg.path} carries no mmedge metadata and no --inputs were given, so every step judges it on "
            f"{source}; pass --inputs FILE.npz to judge it on real ones.",
            file=sys.stderr,
            flush=True,
        )
    np.savez(out_dir / "inputs.npz", **feeds)
    np.savez(out_dir / REFERENCE_OUTPUTS, **model_outputs(original, feeds))  # the user's file, as it is
    return {
        "kind": kind,
        "source": source,
        "file": "inputs.npz",
        "samples": min(len(v) for v in feeds.values()),
        "shapes": {k: list(v.shape) for k, v in feeds.items()},
        "dims": cfg.dims,
    }
