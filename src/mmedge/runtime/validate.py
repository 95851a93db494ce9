"""`mmedge validate`: a model's accuracy with ONNX Runtime alone, wherever it is run (device side).

A bundle is first checked against its own samples (the inputs and logits recorded when it was built), which needs
nothing but the bundle. A data set is then scored: the one given with ``data`` (a user's manifest or folder), or
the built-in one the model's metadata names. A path to user data recorded at build time is never read: that data
lives on the build machine. ``check_accuracy_drop`` turns the figures into a gate (exit 1 in CI).
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
    """Validation figures of an .onnx file or a bundle folder (see the module docstring)."""
    model = Path(model)
    out: dict = {"notes": []}
    if model.is_dir():
        bundle = load_bundle(model)
        path = bundle.model_path
        if (bundle.manifest.get("samples") or {}).get("tensors"):
            out["bundle_samples"] = validate_samples(bundle.root, bundle.manifest, ep)
    else:
        path = model
    sess = open_session(path, ep)
    recorded = metadata_json(sess, "mmedge.data") or {}
    if data is not None:
        labels = metadata_json(sess, "mmedge.labels")
        cfg = DataConfig(name="user", path=Path(data), labels=tuple(labels) if labels else None)
    elif recorded.get("name", "digits-vqa") == "user" or recorded.get("path"):
        note = "the model was trained on user data that lives on the build machine; pass --data PATH to score it"
        if "bundle_samples" not in out:
            raise MmedgeError(f"{path}: {note}.")
        out["notes"].append(note)
        return out
    else:
        cfg = None
    out.update(validate_model(path, cfg, ep=ep, ablation=ablation, reference=reference))
    out["model"] = str(path)
    return out


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
