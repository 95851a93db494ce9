"""Export a checkpoint to ONNX in a fresh subprocess, then prove the graph honours the export contract.

Validation follows the ModelSpec in order — names, then dynamic axes, then shapes, then values — at several
batch sizes and text lengths, collects every failure, and raises one ExportValidationError listing them.
Only a graph that passes is moved to its final name; a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from mmedge.artifact import Artifact
from mmedge.errors import ExportValidationError, MmedgeError, brief, disk_full, disk_full_as
from mmedge.export._worker import DISK_FULL_EXIT, DISK_FULL_MARK
from mmedge.results import ExportMetrics
from mmedge.runtime.session import replacing
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step

# ORT 1.2x-1.3x runs opsets up to ~21 on CPU; opset 23 attention fails there. 18 is what the dynamo
# exporter emits natively for these models.
DEFAULT_OPSET = 18
TORCHSCRIPT_OPSET = 17


class ExportConfig(StepConfig):
    type: Literal["export"] = "export"
    opset: int | None = Field(
        None,
        ge=14,
        le=21,
        description="ONNX opset; by default 18 for the dynamo exporter (native to it, runs on every recent ONNX "
        "Runtime) and 17 for the TorchScript one (ONNX Runtime's transformer fusions match no attention at 18).",
    )
    batch_sizes: tuple[int, ...] = Field(
        (1, 5),
        min_length=2,
        description="Batch sizes the graph is checked at (two or more, to prove the batch axis is really dynamic).",
    )
    text_lengths: tuple[int, ...] = Field(
        (7, 12),
        min_length=2,
        description="Text lengths the graph is checked at (two or more, to prove the text axis is really dynamic).",
    )
    exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo",
        description="torch.onnx's exporter. 'dynamo' (the default) keeps every model's text axis dynamic. "
        "'torchscript' (with eager attention for Hugging Face models) writes attention in the form ONNX Runtime's "
        "transformer fusions recognize, so the optimize step can fuse each attention block into one kernel; it "
        "fixes the text length of the zoo's attention models, which the export checks then report.",
    )
    timeout_s: float = Field(600, gt=0, description="Limit for the export subprocess.")

    @property
    def resolved_opset(self) -> int:
        return self.opset or (TORCHSCRIPT_OPSET if self.exporter == "torchscript" else DEFAULT_OPSET)

    @field_validator("batch_sizes", "text_lengths")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 1 for x in v) or len(set(v)) < 2:
            raise ValueError("needs two or more distinct sizes, each at least 1")
        return v


def export_checkpoint(checkpoint: Path, out: Path, cfg: ExportConfig | None = None, elsewhere: str = "--out") -> dict:
    """Export and validate; on success ``out`` holds the model and the validation report is returned. A disk
    that fills up meanwhile is one sentence that names ``out``'s folder and ``elsewhere`` (the option or setting
    that moves it), and leaves no partial file."""
    from mmedge.models.checkpoint import load_checkpoint

    cfg = cfg or ExportConfig()
    load_checkpoint(checkpoint)  # a missing or damaged checkpoint is reported here, not as an exporter failure
    what = f"the ONNX export of {checkpoint}"
    # only a graph that passes validation takes the name ``out``
    with disk_full_as(what, Path(out).parent, elsewhere), replacing(out) as tmp:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mmedge.export._worker",
                    str(checkpoint),
                    str(tmp),
                    str(cfg.resolved_opset),
                    cfg.exporter,
                ],
                capture_output=True,
                text=True,
                timeout=cfg.timeout_s,
                env=env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except subprocess.TimeoutExpired:
            raise MmedgeError(
                f"the ONNX export of {checkpoint} took longer than {cfg.timeout_s:.0f} s; raise "
                "the export step's timeout_s."
            ) from None
        if proc.returncode == DISK_FULL_EXIT:
            raise disk_full(_worker_errno(proc.stderr), what, Path(out).parent, elsewhere)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise MmedgeError(
                f"the ONNX exporter failed for {checkpoint}; the model likely uses an operation "
                f"torch.onnx cannot export. Exporter output:\n{tail}"
            )
        return validate_export(checkpoint, tmp, cfg)


def _die_with_parent() -> None:
    """In the export worker, before it starts: Linux kills it when the process that started it dies (a run killed
    with SIGKILL), instead of leaving it to export into the folder of a step that no run will finish."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _worker_errno(stderr: str | None) -> int:
    """The errno the export worker gave with ``DISK_FULL_EXIT`` (ENOSPC when its line is missing)."""
    import errno

    for line in reversed((stderr or "").splitlines()):
        if line.startswith(DISK_FULL_MARK) and line.split()[-1].isdigit():
            return int(line.split()[-1])
    return errno.ENOSPC


def validate_export(checkpoint: Path, onnx_path: Path, cfg: ExportConfig) -> dict:
    """names -> dynamic axes -> shapes -> values, against PyTorch on real test samples."""
    import onnx
    import torch

    from mmedge.data import DataConfig, load_dataset
    from mmedge.models.checkpoint import load_checkpoint
    from mmedge.runtime.evaluate import ModelInputs, feeds_for, parity
    from mmedge.runtime.session import open_session

    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.spec
    failures: list[str] = []
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer):
        failures.append("weights are stored outside the .onnx file; they must be inside it")
    sess = open_session(onnx_path, "cpu")

    # 1. names
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    want_in, want_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    if got_in != want_in:
        failures.append(f"input names are {got_in}, the spec says {want_in}")
    if got_out != want_out:
        failures.append(f"output names are {got_out}, the spec says {want_out}")
    # 2. dynamic axes: every axis the spec names must be symbolic in the graph
    for value in list(sess.get_inputs()) + list(sess.get_outputs()):
        tensor = next((t for t in spec.inputs + spec.outputs if t.name == value.name), None)
        if tensor is None:
            continue
        for axis, name in tensor.dynamic_axes().items():
            dim = value.shape[axis] if axis < len(value.shape) else None
            if not isinstance(dim, str):
                failures.append(f"axis {axis} of '{value.name}' should be dynamic ('{name}') but is fixed to {dim}")
    # 3 + 4. shapes and values of every output at every batch size x text length, on real test samples
    data_cfg = DataConfig(**ckpt.extra.get("metrics", {}).get("data", {}))
    split = load_dataset(data_cfg).test
    inputs = ModelInputs(ckpt.vocab, spec.image, tuple(want_in))
    if hasattr(ckpt.model, "export_embeddings"):
        ckpt.model.export_embeddings = True  # as the exporter set it: the graph also outputs the embeddings
    checks = []
    max_diff = 0.0
    for batch in cfg.batch_sizes:
        for length in cfg.text_lengths:
            where = f"batch {batch}, text length {length}"
            rows = np.arange(batch) % len(split)
            feeds = feeds_for(split, inputs, rows, length=length)
            with torch.no_grad():
                ref = ckpt.model(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
            refs = [r.numpy() for r in ((ref,) if isinstance(ref, torch.Tensor) else ref)]
            try:
                got = sess.run(None, feeds)
            except Exception as exc:
                failures.append(f"{where}: onnxruntime failed ({brief(exc, 160)})")
                continue
            found, diffs = compare_outputs(got_out, got, refs, spec.atol, spec.rtol, where)
            failures += found
            max_diff = max(max_diff, *diffs.values()) if diffs else max_diff
            if refs and got[0].shape == refs[0].shape:
                p = parity(got[0], refs[0])  # the logits: agreement and cosine, besides the largest difference
                p["max_abs_diff"] = max(diffs.values())
                checks.append({"batch": batch, "text_length": length, **p, "max_abs_diff_by_output": diffs})
    if failures:
        raise ExportValidationError(failures, str(onnx_path))
    return {
        "checks": checks,
        "max_abs_diff": max_diff,
        "atol": spec.atol,
        "rtol": spec.rtol,
        "opset": cfg.resolved_opset,
        "inputs": want_in,
        "outputs": want_out,
    }


def compare_outputs(
    names: list[str], got: list[np.ndarray], refs: list[np.ndarray], atol: float, rtol: float, where: str
) -> tuple[list[str], dict[str, float]]:
    """Every output of the graph against PyTorch's, in order: (failures, {output name: max abs diff})."""
    failures: list[str] = []
    diffs: dict[str, float] = {}
    if len(got) != len(refs):
        failures.append(f"{where}: the graph gives {len(got)} outputs ({', '.join(names)}), PyTorch {len(refs)}")
    for name, g, r in zip(names, got, refs, strict=False):  # a count mismatch is reported above
        if g.shape != r.shape:
            failures.append(f"{where}: output '{name}' has shape {list(g.shape)}, PyTorch gives {list(r.shape)}")
            continue
        diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
        diffs[name] = float(diff.max()) if diff.size else 0.0
        if (diff > atol + rtol * np.abs(r)).any():
            failures.append(
                f"{where}: output '{name}' max abs diff {diffs[name]:.2e} over the tolerance (atol {atol:g}, "
                f"rtol {rtol:g})"
            )
    return failures, diffs


def zipped_size(path: Path) -> int:
    """Bytes of the file deflated as in a .zip (what sparsity or repeated weights save in transit)."""
    import zlib

    return len(zlib.compress(Path(path).read_bytes(), 6))


# What moves a run's step folders to another disk, for the sentence a full disk gives.
WORKDIR = "the recipe's workdir (`workdir:`)"


@register_step(ExportConfig, ExportMetrics)
def export_step(cfg: ExportConfig, ctx: StepContext) -> StepResult:
    out = ctx.out_dir / "model.onnx"
    report = export_checkpoint(ctx.artifact.path, out, cfg, WORKDIR)
    report["size_bytes"] = out.stat().st_size
    report["zip_bytes"] = zipped_size(out)
    report["reference_onnx"] = reference_onnx(cfg, ctx, out)
    return StepResult(
        Artifact(out, "onnx", ctx.artifact.spec, (*ctx.artifact.lineage, "export")),
        ExportMetrics.model_validate(report),
    )


REFERENCE_FILE = "reference.onnx"


def reference_onnx(cfg: ExportConfig, ctx: StepContext, exported: Path) -> dict | None:
    """The chain's first model as fp32 ONNX, exported once beside the step's model: the yardstick that bench and
    the bundle measure size and latency against. It is ``exported`` itself when no step changed the first model
    (no pruning or distillation before the export); None for a chain that did not start from a PyTorch model."""
    first = ctx.reference()
    if first is None or first.result.artifact.kind != "torch-checkpoint":
        return None
    if first.result.artifact.path == ctx.artifact.path:
        return {"file": exported.name, "size_bytes": exported.stat().st_size, "same_as_export": True}
    path = ctx.out_dir / REFERENCE_FILE
    export_checkpoint(first.result.artifact.path, path, cfg, WORKDIR)
    return {"file": path.name, "size_bytes": path.stat().st_size, "same_as_export": False}
