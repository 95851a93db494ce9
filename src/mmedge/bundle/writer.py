"""Writing the shipped bundle (the ``bundle`` step): model.onnx, manifest.json, vocab.json, report.md and real
sample inputs.

An app needs nothing but ONNX Runtime and the manifest to feed the model: inputs with dtypes, shapes and
dynamic axis names; how to preprocess the image; how to tokenize the text; the labels. The manifest also
records the sha256 of every file and the figures measured before shipping, with the machine they were
measured on. Reading a bundle back is ``mmedge.bundle.manifest``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from mmedge import __version__
from mmedge.artifact import Artifact
from mmedge.bundle.manifest import MANIFEST, SCHEMA, SCHEMA_VERSION, load_bundle, sha256
from mmedge.errors import BudgetExceededError, BundleError, MissingDependencyError, disk_full_as
from mmedge.provenance import collect
from mmedge.report.views import robustness
from mmedge.results import (
    AutoQuantMetrics,
    BenchMetrics,
    BundleMetrics,
    DistillMetrics,
    ExportMetrics,
    MagnitudePruneMetrics,
    MobileMetrics,
    StructuredPruneMetrics,
    ValidateMetrics,
)
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step


class BundleConfig(StepConfig):
    type: Literal["bundle"] = "bundle"
    samples: int = Field(
        8,
        ge=1,
        le=64,
        description="Real test inputs shipped as PNG + questions (and as an "
        ".npz of ready tensors) so an app can check its own preprocessing.",
    )
    split: bool = Field(
        False,
        description="Dual encoders (hf:PATH) and late-fusion zoo models: also ship vision.onnx, text.onnx and "
        "head.onnx (zero-shot: vision.onnx, head.onnx and label_embeddings.npy), cut from the shipped model, so an app "
        "can embed images and texts apart; and vision.float.onnx, cut from the model before quantization, where it "
        "runs on a mobile EP the quantized vision part cannot (CoreML).",
    )


def _write_samples(folder: Path, model_path: Path, data_cfg, count: int) -> dict:
    from mmedge.data import load_dataset
    from mmedge.data.images import save_png
    from mmedge.runtime.evaluate import ModelInputs, feeds_for
    from mmedge.runtime.session import open_session, run

    sess = open_session(model_path, "cpu")
    split = load_dataset(data_cfg).test
    # One question per family from different images, so the samples cover every kind of question.
    if split.family_names == ("parity", "comparison", "identity", "arithmetic"):
        rows = np.asarray([i for i in range(len(split)) if i % 4 == (i // 4) % 4][:count])
    else:  # spread over the split, which is sorted by label
        rows = np.unique(np.linspace(0, len(split) - 1, min(count, len(split))).astype(int))
    feeds = feeds_for(split, ModelInputs.of(sess), rows)
    logits = run(sess, feeds)[0]
    folder.mkdir()
    entries = []
    for n, row in enumerate(rows):
        name = f"sample_{n:02d}.png"
        save_png(split.images[split.image_index[row]], folder / name)
        entries.append(
            {
                "image": f"samples/{name}",
                "text": split.texts[row],
                "answer": split.classes[split.labels[row]],
                "predicted": split.classes[int(logits[n].argmax())],
                "logits": [round(float(x), 5) for x in logits[n]],
            }
        )
    np.savez(folder / "inputs.npz", **feeds)
    (folder / "samples.json").write_text(json.dumps(entries, indent=1))
    return {"file": "samples/samples.json", "tensors": "samples/inputs.npz", "count": len(entries)}


def _write_chain_samples(folder: Path, model_path: Path, count: int) -> dict:
    """A foreign model's samples: the first ``count`` rows of the chain's inputs (the user's .npz, or synthetic) and
    the shipped model's outputs on them, so an app can check it feeds the model as the build did."""
    from mmedge.runtime.fidelity import model_outputs
    from mmedge.runtime.inputs import step_feeds

    feeds, source = step_feeds(model_path)
    feeds = {k: v[:count] for k, v in feeds.items()}
    folder.mkdir()
    np.savez(folder / "inputs.npz", **feeds)
    np.savez(folder / "outputs.npz", **model_outputs(model_path, feeds))
    return {
        "tensors": "samples/inputs.npz",
        "outputs": "samples/outputs.npz",
        "count": min(len(v) for v in feeds.values()),
        "inputs": source,
    }


def _manifest_head(name: str) -> dict:
    """What every manifest opens with: schema, name, when, and where and with what its figures were made (commit,
    package versions, CPU flags)."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mmedge_version": __version__,
        "provenance": collect(),
    }


def _model_entry(file: str, family: str | None, lineage: tuple[str, ...]) -> dict:
    """The manifest's ``model``: its file, family and lineage, and the onnxruntime session config entries its
    figures were measured with (set them in the session that runs it)."""
    from mmedge.runtime.options import DEFAULT_SESSION_CONFIG

    return {
        "file": file,
        "format": "onnx",
        "family": family,
        "lineage": list(lineage),
        "session_config": dict(DEFAULT_SESSION_CONFIG),
    }


def foreign_manifest(name: str, sess, metrics: dict, samples: dict, lineage: tuple[str, ...]) -> dict:
    """The manifest of a model mmedge did not write: its inputs and outputs as the graph declares them; no
    preprocessing, tokenizer or labels are known."""

    def tensors(values) -> list[dict]:
        return [{"name": v.name, "type": v.type, "shape": list(v.shape)} for v in values]

    return {
        **_manifest_head(name),
        "task": {"type": "onnx-model", "output": "as the source model's; judged by fidelity to it"},
        "model": _model_entry("model.onnx", None, lineage),
        "inputs": tensors(sess.get_inputs()),
        "outputs": tensors(sess.get_outputs()),
        "preprocessing": None,
        "labels": None,
        "samples": samples,
        "metrics": metrics,
    }


def build_manifest(
    name: str, model_path: Path, metadata: dict, metrics: dict, samples: dict, lineage: tuple[str, ...]
) -> dict:
    spec = json.loads(metadata["mmedge.spec"])
    tok = json.loads(metadata["mmedge.tokenizer"])
    task = json.loads(metadata.get("mmedge.task", "null")) or {
        "type": "visual-question-answering",
        "output": "logits over labels; argmax is the answer",
    }
    return {
        **_manifest_head(name),
        "task": task,
        "model": _model_entry(model_path.name, spec["family"], lineage),
        "inputs": spec["inputs"],
        "outputs": spec["outputs"],
        "preprocessing": {
            "image": spec["image"],
            "text": text_preprocessing(tok),
        },
        "labels": json.loads(metadata["mmedge.labels"]),
        "samples": samples,
        "metrics": metrics,
    }


def text_preprocessing(tok: dict) -> dict:
    """The manifest's recipe for turning text into input_ids and attention_mask."""
    common = {
        "max_length": tok["max_length"],
        "pad_id": tok["pad_id"],
        "padding": "right",
        "truncation": "right",
        "attention_mask": "1 for real tokens, 0 for padding",
    }
    if tok.get("type") == "hf":
        return {
            "tokenizer": "huggingface",
            "tokenizer_file": "tokenizer.json",
            "special_tokens": "added by the tokenizer's post-processor; the last one is kept when truncating",
            **common,
        }
    return {
        "tokenizer": "word",
        "vocab_file": "vocab.json",
        "lowercase": tok["lowercase"],
        "pattern": tok["pattern"],
        "unk_id": tok["unk_id"],
        **common,
    }


def write_bundle(
    out: Path,
    name: str,
    model_path: Path,
    data_cfg,
    metrics: dict,
    lineage: tuple[str, ...],
    report_md: str,
    samples: int = 8,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write the bundle into a temporary sibling folder, then swap it into place. A disk that fills up meanwhile is
    one sentence naming the bundle (``DiskFullError``); the temporary folder is removed and the previous bundle is
    left as it was."""
    out = Path(out)
    with disk_full_as(f"bundle {out}", out.parent, "--out (or the recipe's output)"):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            _fill_bundle(tmp, name, model_path, data_cfg, metrics, lineage, report_md, samples, extra_files)
            from mmedge.runtime.session import replace_folder

            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _fill_bundle(
    tmp: Path,
    name: str,
    model_path: Path,
    data_cfg,
    metrics: dict,
    lineage: tuple[str, ...],
    report_md: str,
    samples: int,
    extra_files: dict[str, Path] | None,
) -> None:
    """Write every file of the bundle, the manifest last, into the empty folder ``tmp``."""
    from mmedge.runtime.session import model_metadata, open_session

    tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    shutil.copyfile(model_path, tmp / "model.onnx")
    sess = open_session(tmp / "model.onnx", "cpu")
    meta = model_metadata(sess)
    if "mmedge.tokenizer" in meta:
        tok = json.loads(meta["mmedge.tokenizer"])
        if tok.get("type") == "hf":  # the Hugging Face tokenizer file, verbatim: `tokenizers` reads it on device
            (tmp / "tokenizer.json").write_text(tok["json"])
        else:
            (tmp / "vocab.json").write_text(json.dumps(tok, indent=1))
        sample_info = _write_samples(tmp / "samples", tmp / "model.onnx", data_cfg, samples)
    else:  # a foreign ONNX model: no data, its chain's inputs are the samples
        sample_info = _write_chain_samples(tmp / "samples", tmp / "model.onnx", samples)
    (tmp / "report.md").write_text(report_md)
    for rel, src in (extra_files or {}).items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp / rel)
    if "mmedge.tokenizer" in meta:
        manifest = build_manifest(name, tmp / "model.onnx", meta, metrics, sample_info, lineage)
    else:
        manifest = foreign_manifest(name, sess, metrics, sample_info, lineage)
    manifest["model"]["size_bytes"] = (tmp / "model.onnx").stat().st_size
    if "mobile" in metrics:
        fixed = open_session(tmp / "model.fixed.onnx", "cpu").get_inputs()
        manifest["variants"] = mobile_variants(
            manifest["inputs"], {v.name: list(v.shape) for v in fixed}, metrics["mobile"]["session_config"]
        )
    if "split" in metrics:
        manifest["parts"] = metrics["split"]
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest["files"] = {p.relative_to(tmp).as_posix(): {"sha256": sha256(p), "bytes": p.stat().st_size} for p in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def mobile_variants(inputs: list[dict], fixed: dict[str, list], session_config: dict) -> list[dict]:
    """What an app on a phone loads: each .ort file, its input shapes (``fixed``: those of model.fixed.onnx) and
    the session config it needs."""
    return [
        {
            "file": "model.ort",
            "format": "ort",
            "for": "ONNX Runtime Mobile, CPU/XNNPACK EP, any size of the dynamic dimensions (batch, text length)",
            "inputs": {i["name"]: i["shape"] for i in inputs},
            "session_config": session_config,
        },
        {
            "file": "model.fixed.ort",
            "format": "ort",
            "for": "ONNX Runtime Mobile with NNAPI or CoreML (fixed shapes); pad each input to its fixed shape",
            "inputs": fixed,
            "session_config": session_config,
        },
        {
            "file": "model.fixed.onnx",
            "format": "onnx",
            "for": "the fixed-shape model as ONNX (what model.fixed.ort was converted from)",
            "inputs": fixed,
        },
        {"file": "required_operators.config", "format": "ort-operators-config", "for": "a reduced-operator build"},
        {"file": "mobile.json", "format": "json", "for": "the NNAPI/CoreML usability analysis and .ort parity"},
    ]


def _typed(ctx: StepContext, step_type: str):
    """The typed metrics of the latest ``step_type`` step of this run, or None."""
    record = ctx.latest(step_type)
    return record.result.metrics if record else None


def _json(model) -> dict | None:
    return None if model is None else model.model_dump(mode="json")


def shipped_metrics(ctx: StepContext, model_path: Path) -> dict:
    """The figures the manifest records, from the typed metrics of the steps that measured them in this run."""
    from mmedge.export.onnx import zipped_size
    from mmedge.runtime.bench import machine_info

    validate: ValidateMetrics | None = _typed(ctx, "validate")
    bench: BenchMetrics | None = _typed(ctx, "bench")
    export: ExportMetrics | None = _typed(ctx, "export")
    reference = ctx.reference()
    out: dict = {
        "size_bytes": model_path.stat().st_size,
        "zip_bytes": zipped_size(model_path),
        "measured_on": machine_info(with_provenance=False),  # the manifest records the provenance once, at its top
    }
    if validate is not None and validate.test is not None:
        scores = {
            "test": validate.test,
            "image_blanked": validate.image_blanked,
            "text_emptied": validate.text_emptied,
            "paraphrase": validate.paraphrase,
        }
        out["accuracy"] = {k: v.model_dump(mode="json") for k, v in scores.items() if v is not None}
        out["accuracy"]["split"] = f"test ({validate.samples} questions on held-out images)"
        out["parity"] = _json(validate.parity)
        out["accuracy_drop_points"] = validate.accuracy_drop_points
        if validate.gate is not None:  # the budget was decided on validation; the test drop above is reported only
            out["gate"] = _json(validate.gate)
        if validate.embeddings:
            out["embeddings"] = validate.embeddings
    if validate is not None and validate.fidelity is not None:
        out["fidelity"] = _json(validate.fidelity)
    if reference is not None:
        ref = reference.result.metrics
        out["reference"] = {
            "framework": "onnx" if reference.config.type == "load.onnx" else "pytorch",
            "test_accuracy": ref.test.accuracy if ref.test is not None else None,
            "parameters": getattr(ref, "parameters", None),
        }
        if getattr(ref, "data_split", None):
            out["data_split"] = ref.data_split
        if getattr(ref, "skipped_rows", None) is not None:  # rows left out with --skip-bad-rows, each with its reason
            out["skipped_rows"] = ref.skipped_rows.model_dump(mode="json")
        inputs = getattr(ref, "chain_inputs", None)
        if inputs is not None:  # a foreign model: what its figures were measured on
            out["inputs"] = _json(inputs)
        if validate is None or validate.fidelity is None:  # the last rewrite's fidelity to the source model
            fidelity = next(
                (m.fidelity for r in reversed(ctx.records) if (m := r.result.metrics) and getattr(m, "fidelity", None)),
                None,
            )
            if fidelity is not None:
                out["fidelity"] = _json(fidelity)
    if export is not None:
        out["export"] = {"opset": export.opset, "max_abs_diff": export.max_abs_diff, "checks": len(export.checks)}
    if bench is not None and bench.reference is not None:  # against the fp32 ONNX of the chain's first model
        ref = bench.reference
        out["reference_onnx"] = {
            "file": ref.file,
            "size_bytes": ref.size_bytes,
            "size_ratio": out["size_bytes"] / ref.size_bytes,
            "latency_ratio": {b: {"p10": r[0], "p50": r[1], "p90": r[2]} for b, r in ref.latency_ratio.items()},
            "ep": ref.ep,
            "threads": ref.threads,
        }
    pruned: MagnitudePruneMetrics | None = _typed(ctx, "prune.magnitude")
    if pruned is not None:
        out["sparsity"] = {"weights": pruned.sparsity_reached, "model": pruned.model_sparsity, "note": pruned.note}
    mobile: MobileMetrics | None = _typed(ctx, "mobile")
    if mobile is not None:
        out["mobile"] = _json(mobile)
    robust = robustness([(r.config.type, r.result.metrics) for r in ctx.records])
    if len(robust) > 1:
        out["robustness"] = robust
    compression = compression_metrics(ctx)
    if compression:
        out["compression"] = compression
    if bench is not None:
        out["latency"] = {
            ep: {
                "threads": t.threads,
                "session_load_ms": t.session_load_ms,
                "batches": {b: s.model_dump(mode="json") for b, s in t.batches.items()},
                "peak_rss_mb": t.memory.peak_rss_mb,
            }
            for ep, t in bench.targets.items()
        }
        if bench.unavailable:
            out["latency_unavailable"] = bench.unavailable
    return out


def compression_metrics(ctx: StepContext) -> dict:
    """What the compression steps of this run did, per modality branch where they measured it."""
    out: dict = {}
    pruned: StructuredPruneMetrics | None = _typed(ctx, "prune.structured")
    if pruned is not None:
        out["structured_pruning"] = {
            "ratio": pruned.ratio,
            "branch_ratios": pruned.branch_ratios,
            "importance": pruned.importance,
            "parameters_before": pruned.parameters_before,
            "parameters_after": pruned.parameters_after,
            "macs_before": pruned.macs_before,
            "macs_after": pruned.macs_after,
            "dropped_blocks": pruned.dropped_blocks,
            "vocabulary": pruned.vocabulary,
            "per_branch": pruned.per_branch,
            "options_before": pruned.options_before,
            "options_after": pruned.options_after,
            "test_accuracy": pruned.test.accuracy if pruned.test is not None else None,
        }
    distilled: DistillMetrics | None = _typed(ctx, "distill")
    if distilled is not None:
        out["distillation"] = {
            "teacher_test_accuracy": distilled.teacher_test_accuracy,
            "student_test_accuracy": distilled.test.accuracy if distilled.test is not None else None,
            "student_parameters": distilled.parameters,
            "epochs_run": distilled.epochs_run,
        }
    auto: AutoQuantMetrics | None = _typed(ctx, "quantize.auto")
    if auto is not None:
        out["quantization"] = {
            "chosen": auto.chosen,
            "selection_split": auto.selection_split,
            "choice": _json(auto.choice),
            "within_budget": auto.within_budget,
            "budget_points": auto.budget_points,
            "reference_val_accuracy": auto.reference_val_accuracy,
            "ep": auto.ep,
            "threads": auto.threads,
            "batch_size": auto.batch_size,
            "candidates": [c.model_dump(mode="json") for c in auto.candidates],
            "sensitivity": _json(auto.sensitivity),
            "branch_sizes": auto.branch_sizes,
            "latency_share": auto.latency_share,
        }
    return out


@register_step(BundleConfig, BundleMetrics)
def bundle_step(cfg: BundleConfig, ctx: StepContext) -> StepResult:
    """The ``bundle`` step. Its plots and split parts are written in the step's folder before the bundle itself: a
    disk that fills up there is said as such too, and the run removes the step's folder."""
    with disk_full_as("the bundle step's plots and parts", ctx.out_dir, "the recipe's workdir (`workdir:`)"):
        return _bundle_step(cfg, ctx)


def _bundle_step(cfg: BundleConfig, ctx: StepContext) -> StepResult:
    recipe = ctx.recipe
    budget = recipe.budgets.max_size_mb
    size_mb = ctx.artifact.path.stat().st_size / 1e6
    if budget is not None and size_mb > budget:
        raise BudgetExceededError(
            f"the model is {size_mb:.2f} MB, over the budget of {budget:g} MB; relax "
            "budgets.max_size_mb or compress the model further."
        )
    metrics = shipped_metrics(ctx, ctx.artifact.path)
    parts = ctx.out_dir / "split"
    if cfg.split:
        from mmedge.export.split import split_model
        from mmedge.runtime.inputs import step_feeds

        parts.mkdir()
        float_model = next(  # the model before quantization: its vision part may suit an EP the int8 one cannot
            (r.result.artifact.path for r in reversed(ctx.records) if r.config.type in ("optimize", "export")), None
        )
        feeds = step_feeds(ctx.artifact.path, recipe.data)[0]
        metrics["split"] = split_model(ctx.artifact.path, parts, feeds, float_model)
    from mmedge.pipeline import results_document
    from mmedge.report.render import draw_plots
    from mmedge.report.sections import BundleFacts, render_run

    doc = results_document(recipe, ctx.records)  # the steps so far: the bundle report is the run's report
    plots_dir = Path(tempfile.mkdtemp(prefix="plots-", dir=ctx.out_dir))
    try:
        plots, note = draw_plots(doc, plots_dir), None
    except MissingDependencyError as exc:  # a [cpu]-only install ships the bundle without PNGs, and says so
        plots, note = {}, f"Plots not drawn: {exc}"
        print(f"note: {note}", file=sys.stderr, flush=True)
    facts = BundleFacts(metrics["size_bytes"], metrics["zip_bytes"], metrics.get("split"))
    report = render_run(doc, plots, bundle=facts, note=note)
    extra = {f"plots/{name}": plots_dir / name for name in plots.values()}
    if cfg.split:
        extra.update({p.name: p for p in sorted(parts.iterdir())})
    mobile = next((r for r in reversed(ctx.records) if r.config.type == "mobile"), None)
    if mobile is not None:
        from mmedge.export.mobile import MOBILE_FILES

        if mobile.result.metrics.source_sha256 != sha256(ctx.artifact.path):
            raise BundleError(
                "the mobile step converted another model than the one being shipped; move the mobile step after "
                "the last step that changes the model (export, quantize)."
            )
        extra.update({name: mobile.folder / name for name in MOBILE_FILES})
    out = write_bundle(
        recipe.output_dir,
        recipe.name,
        ctx.artifact.path,
        recipe.data,
        metrics,
        (*ctx.artifact.lineage, "bundle"),
        report,
        cfg.samples,
        extra,
    )
    return StepResult(
        Artifact(out.resolve(), "bundle", ctx.artifact.spec, (*ctx.artifact.lineage, "bundle")),
        BundleMetrics(path=str(out), files=sorted(load_bundle(out).manifest["files"])),
    )
