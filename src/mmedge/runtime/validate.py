"""`mmedge validate`: a model's accuracy with ONNX Runtime alone, wherever it is run (device side).

A bundle is first checked against its own samples (the inputs and logits recorded when it was built), which needs
nothing but the bundle; a bundle of a model from elsewhere has no labelled data, and is checked on its samples
alone, every output against the one recorded (``check_samples`` gates on it). A data set is then scored: the one
given with ``data`` (a user's manifest or folder), or the built-in one the model's metadata names. A path to user
data recorded at build time is never read: that data lives on the build machine. ``check_accuracy_drop`` turns the
figures into a gate (exit 1 in CI).
"""

from __future__ import annotations

from pathlib import Path

from mmedge.bundle.manifest import load_bundle
from mmedge.data import DataConfig
from mmedge.errors import BudgetExceededError, MmedgeError
from mmedge.runtime.evaluate import validate_model, validate_samples
from mmedge.runtime.session import metadata_json, open_session


def validate(
    model: str | Path,
    data: str | Path | None = None,
    ep: str = "cpu",
    ablation: bool = True,
    reference: str | Path | None = None,
) -> dict:
    """Validation figures of an .onnx file or a bundle folder (see the module docstring). A bundle is read as one
    snapshot: its samples and its model (a private copy, which the scoring opens by path) are of one version even
    when a run replaces the bundle meanwhile."""
    model = Path(model)
    if not model.is_dir():
        return _validate(model, model, {"notes": []}, data, ep, ablation, reference)
    with load_bundle(model) as bundle, bundle.model_copy() as path:
        out: dict = {"notes": []}
        if (bundle.manifest.get("samples") or {}).get("tensors"):
            out["bundle_samples"] = validate_samples(bundle, ep)
        return _validate(path, bundle.model_path, out, data, ep, ablation, reference)


def _validate(path: Path, shown: Path, out: dict, data: str | Path | None, ep: str, ablation: bool, reference) -> dict:
    """``validate`` of the model file ``path``, named ``shown`` in messages and the figures, adding to ``out``."""
    sess = open_session(path, ep)
    recorded = metadata_json(sess, "mmedge.data") or {}
    if metadata_json(sess, "mmedge.tokenizer") is None:  # a model mmedge did not write: no data, no labels
        if data is not None:
            raise MmedgeError(
                f"--data scores a model mmedge trained, and {shown} is a model from elsewhere (no mmedge metadata, no "
                "labels to score against); drop --data: a bundle is checked against the outputs it recorded."
            )
        if "bundle_samples" not in out:
            raise MmedgeError(
                f"{shown} is a model from elsewhere (no mmedge metadata), so it has no labelled data to be scored on; "
                "validate the bundle `mmedge run --model onnx:` made of it (it ships the inputs and outputs it was "
                "built with), or time it with `mmedge bench --inputs FILE.npz`."
            )
        out["model"] = str(shown)
        return out
    if data is not None:
        labels = metadata_json(sess, "mmedge.labels")
        cfg = DataConfig(name="user", path=Path(data), labels=tuple(labels) if labels else None)
    elif recorded.get("name", "digits-vqa") == "user" or recorded.get("path"):
        note = "the model was trained on user data that lives on the build machine; pass --data PATH to score it"
        if "bundle_samples" not in out:
            raise MmedgeError(f"{shown}: {note}.")
        out["notes"].append(note)
        return out
    else:
        cfg = None
    out.update(validate_model(path, cfg, ep=ep, ablation=ablation, reference=reference))
    out["model"] = str(shown)
    return out


def check_samples(metrics: dict, bundle: str | Path) -> None:
    """Raise ``BudgetExceededError`` when a bundle of a model from elsewhere no longer gives the outputs it recorded
    at build time on its own sample inputs (another EP, another CPU's kernels, or a changed file)."""
    problems = (metrics.get("bundle_samples") or {}).get("problems")
    if problems:
        raise BudgetExceededError(
            f"bundle {bundle} does not reproduce the outputs it recorded at build time on "
            f"{metrics['bundle_samples']['providers'][0]}: {'; '.join(problems)}; run it on the EP it was built for, "
            "or rebuild it with `mmedge run`."
        )


def check_accuracy_drop(metrics: dict, max_accuracy_drop: float | None) -> None:
    """Raise ``BudgetExceededError`` when ``validate``'s accuracy fell more than ``max_accuracy_drop`` points below
    its reference (nothing to check when it is None); a model with no reference accuracy cannot be gated."""
    if max_accuracy_drop is None:
        return
    if "accuracy_drop_points" not in metrics:
        raise MmedgeError(
            "--max-accuracy-drop needs a reference accuracy; pass --reference, or validate a model "
            "written by `mmedge export`."
        )
    if metrics["accuracy_drop_points"] > max_accuracy_drop:
        raise BudgetExceededError(
            f"accuracy dropped {metrics['accuracy_drop_points']:.2f} points against "
            f"{metrics['reference']}, over the allowed {max_accuracy_drop:g}."
        )
