"""mmedge CLI. Each command parses options, builds a config, calls the library and prints.

Commands that only run ONNX models (bench, predict, inspect, validate) never import torch.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mmedge import __version__
from mmedge.errors import MmedgeError

app = typer.Typer(
    name="mmedge",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Compress, export, prove and ship multimodal (image + text) models for the edge.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


INSTALL_HINTS = {
    "onnxruntime": "pip install 'mmedge[cpu]' (or 'mmedge[gpu]' for the CUDA execution provider, not both)",
    "torch": "pip install 'mmedge[torch]'",
    "onnxscript": "pip install 'mmedge[torch]'",
    "torch_pruning": "pip install 'mmedge[torch]'",
    "safetensors": "pip install 'mmedge[torch]'",
    "matplotlib": "pip install 'mmedge[report]'",
}


def guarded(fn):
    """One clear sentence and a non-zero exit for user errors; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except MmedgeError as exc:
            if type(exc).__name__ != "PeerFailedError":  # that rank says why; this one leaves quietly
                _say(exc)
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:
            root = (exc.name or "").split(".")[0]
            if root not in INSTALL_HINTS:
                raise
            from rich.markup import escape

            hint = escape(INSTALL_HINTS[root])
            err.print(
                f"[bold red]error:[/] this command needs {root}, which is not installed; {hint}.", highlight=False
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted; finished steps are cached and a re-run resumes after them.")
            raise typer.Exit(130) from None
        except Exception as exc:
            full = _disk_full(exc)
            if full is not None:
                _say(full)
                raise typer.Exit(full.exit_code) from None
            if os.environ.get("MMEDGE_DEBUG"):
                raise
            _report(
                "internal error",
                f"{type(exc).__name__}: {exc}. This is a bug in mmedge; rerun with MMEDGE_DEBUG=1 for the traceback "
                "and report it.",
            )
            raise typer.Exit(3) from None

    return wrapper


def _say(exc: MmedgeError) -> None:
    """An error's sentence on stderr, as the one line a failed command prints."""
    _report("error", str(exc))


LAUNCHED_ENV = "MMEDGE_LAUNCHED"  # set by `mmedge run --nproc-per-node`, which says a failed rank's sentence itself


def _report(label: str, message: str) -> None:
    """``label: message`` on stderr. A rank of a distributed run names itself, leaves the sentence where torchrun
    reports a failed worker, and says it on its own stderr (its other output is silenced), unless mmedge's
    launcher will say it."""
    from rich.markup import escape

    from mmedge.distributed import error_file_message, launched_rank

    console = err
    rank = launched_rank()
    if rank is not None:
        message = f"rank {rank}: {message}"
        error_file_message(message)
        if os.environ.get(LAUNCHED_ENV):
            return
        console = Console(file=sys.__stderr__, soft_wrap=True)
    console.print(f"[bold red]{label}:[/] {escape(message)}", highlight=False, markup=True)


def _disk_full(exc: Exception) -> MmedgeError | None:
    """A write that failed for want of room where no step said what it was writing (a checkpoint, a report, the
    results), as the user's error that it is, or None for any other failure."""
    from mmedge.errors import disk_full, disk_full_errno

    code = disk_full_errno(exc)
    if code is None:
        return None
    name = getattr(exc, "filename", None)
    what = str(name) if name else "mmedge's output"
    where = Path(name).parent if name else Path.cwd()
    return disk_full(code, what, where, "--out or the recipe's workdir")


def _version(value: bool):
    if value:
        out.print(f"mmedge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """mmedge: the smallest, fastest multimodal model within your accuracy budget, with proof."""


def _emit_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


class Family(str, Enum):
    cnn_lstm = "cnn-lstm"
    vit_transformer = "vit-transformer"


class Source(str, Enum):
    mnist = "mnist"
    sklearn_digits = "sklearn-digits"


class Task(str, Enum):
    zero_shot = "zero-shot"
    fusion_head = "fusion-head"


class Fmt(str, Enum):
    yaml = "yaml"
    json = "json"


@app.command()
@guarded
def train(
    family: Annotated[
        str, typer.Option(help="Model family from the zoo: cnn-lstm, vit-transformer or effnet-minilm.")
    ] = "cnn-lstm",
    out_dir: Annotated[Path, typer.Option("--out", help="Checkpoint folder to write.")] = Path("checkpoints/model"),
    epochs: Annotated[
        int, typer.Option(min=1, help="Epochs (the cosine schedule spans them); early stopping may end sooner.")
    ] = 20,
    seed: Annotated[int, typer.Option(help="Seeds weights, batches and augmentation.")] = 0,
    max_minutes: Annotated[
        float | None,
        typer.Option(min=0.01, help="Optional wall-clock cap on training (default: none; epochs and early stopping)."),
    ] = None,
    source: Annotated[
        Source,
        typer.Option(
            help="Digit images: the 5,000 MNIST digits shipped with mmedge, or scikit-learn's digits "
            "(needs mmedge[data])."
        ),
    ] = Source.mnist,
    data_seed: Annotated[int, typer.Option(help="Seeds the data split and questions.")] = 0,
):
    """Train a zoo model on digits-vqa; writes a checkpoint folder (safetensors, config, vocab, labels)."""
    from mmedge.data import DataConfig
    from mmedge.models import get_family
    from mmedge.train import TrainConfig, run_training

    get_family(family)
    cfg = TrainConfig(epochs=epochs, seed=seed, max_minutes=max_minutes)
    path, m = run_training(
        family,
        {},
        DataConfig(source=source.value, seed=data_seed),
        cfg,
        out_dir,
        progress="bar" if sys.stderr.isatty() else "lines",
    )
    t = Table(
        title=f"{family} on digits-vqa ({m['parameters']:,} parameters, {m['epochs_run']} epochs, "
        f"{m['train_seconds']:.0f} s)"
    )
    t.add_column("test input")
    t.add_column("accuracy", justify="right")
    for key, label in (("test", "full"), ("image_blanked", "image blanked"), ("text_emptied", "text emptied")):
        t.add_row(label, f"{m[key]['accuracy']:.2%}")
    out.print(t)
    out.print(f"checkpoint: {path}")


@app.command()
@guarded
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder written by `mmedge train`.")],
    out_path: Annotated[Path, typer.Option("--out", help="ONNX file to write.")] = Path("model.onnx"),
    opset: Annotated[int, typer.Option(min=14, max=21, help="ONNX opset.")] = 18,
    mobile: Annotated[
        bool,
        typer.Option(
            "--mobile",
            help="Also write the ONNX Runtime Mobile files (.ort, fixed-shape variant, operators config, "
            "NNAPI/CoreML analysis) into the folder <OUT stem>-mobile next to OUT.",
        ),
    ] = False,
):
    """Export a checkpoint to ONNX in a fresh process and validate it against PyTorch."""
    from mmedge.export.onnx import ExportConfig, export_checkpoint

    report = export_checkpoint(checkpoint, out_path, ExportConfig(opset=opset))
    out.print(
        f"wrote {out_path} ({out_path.stat().st_size / 1e6:.3f} MB); validated at {len(report['checks'])} "
        f"batch × text-length combinations, max abs diff {report['max_abs_diff']:.2e}"
    )
    if mobile:
        _mobile(out_path, out_path.with_name(f"{out_path.stem}-mobile"), [], None, False)


def _parse_dims(dims: list[str]) -> dict[str, int]:
    parsed = {}
    for item in dims:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().lstrip("-").isdigit():
            raise MmedgeError(f"--dim '{item}' is not NAME=SIZE; write it like --dim text_length=12.")
        parsed[name.strip()] = int(value)
    return parsed


def _mobile(model: Path, out_dir: Path, dims: list[str], inputs: Path | None, as_json: bool) -> None:
    from mmedge.commands import mobile_files

    result = mobile_files(model, out_dir, _parse_dims(dims), inputs)
    if as_json:
        _emit_json(result)
        return
    from mmedge.report.markdown import mobile_section

    out.print(f"wrote {', '.join(result['files'])} and mobile.json into {out_dir} (checked on {result['inputs']})")
    out.print("\n".join(mobile_section(result)), markup=False, highlight=False)


@app.command()
@guarded
def mobile(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a bundle folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the mobile files.")] = Path("mobile"),
    dim: Annotated[
        list[str] | None,
        typer.Option(help="Fixed size for a dynamic dimension, NAME=SIZE (default: batch 1, full text length)."),
    ] = None,
    inputs: Annotated[
        Path | None, typer.Option(help="An .npz of input tensors to check the .ort files on (default: real samples).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
):
    """ONNX Runtime Mobile files: .ort (Runtime optimizations), fixed-shape variant, operators config, and the
    NNAPI/CoreML usability analysis; every .ort is checked against its .onnx."""
    _mobile(model, out_dir, dim or [], inputs, as_json)


@app.command()
@guarded
def validate(
    model: Annotated[Path, typer.Argument(help="An .onnx file or a bundle folder.")],
    data: Annotated[
        Path | None,
        typer.Option(
            help="Score on this data set (a JSONL/CSV manifest or folder, as `mmedge run --data` takes) instead of "
            "the built-in one the model was trained on. A bundle is always checked against its own samples."
        ),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help="Reference outputs: another .onnx, or a .npy of logits on the same split.")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Exit 1 if accuracy falls more than this "
            "many points below the reference (or the PyTorch accuracy stored at export).",
        ),
    ] = None,
    ep: Annotated[str, typer.Option(help="Execution provider to run on.")] = "cpu",
    ablation: Annotated[bool, typer.Option(help="Also score with the image blanked and the text emptied.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
):
    """Accuracy per answer with ONNX Runtime (a bundle: also its own samples), parity, and an accuracy gate."""
    from mmedge.runtime.validate import check_accuracy_drop, check_samples, validate

    metrics = validate(model, data, ep=ep, ablation=ablation, reference=reference)
    if as_json:
        _emit_json(metrics)
    else:
        _print_validation(metrics)
    # after printing: a failed gate still shows its figures
    check_samples(metrics, model)
    check_accuracy_drop(metrics, max_accuracy_drop)


def _print_validation(metrics: dict) -> None:
    samples = metrics.get("bundle_samples")
    if samples and "fidelity" in samples:
        fid = samples["fidelity"]
        agreement = f", argmax agreement {fid['argmax_agreement']:.2%}" if fid["argmax_agreement"] is not None else ""
        worst = min(o["min_cosine"] for o in fid["outputs"])
        out.print(
            f"bundle samples: {samples['samples']} run (taken from {samples['inputs']}) on "
            f"{samples['providers'][0]}, every output against the one recorded at build time: cosine >= "
            f"{worst:.5f} per sample, max abs diff {fid['max_abs_diff']:.2e}{agreement}"
        )
    elif samples:
        out.print(
            f"bundle samples: {samples['samples']} run, {samples['same_answers']:.0%} give the answers recorded at "
            f"build time (max abs logit diff {samples['max_abs_diff']:.2e}), {samples['correct']:.0%} correct"
        )
    for note in metrics.get("notes", []):
        err.print(f"note: {note}")
    if "test" not in metrics:
        return
    t = Table(title=f"{metrics['model']} on {metrics['samples']} test questions ({metrics['providers'][0]})")
    t.add_column("input")
    t.add_column("accuracy", justify="right")
    for key, label in (("test", "full"), ("image_blanked", "image blanked"), ("text_emptied", "text emptied")):
        if key in metrics:
            t.add_row(label, f"{metrics[key]['accuracy']:.2%}")
    out.print(t)
    answers = metrics["per_answer"]
    t = Table(title="accuracy per answer (rows: true answer; columns: predicted)")
    t.add_column("answer")
    t.add_column("accuracy", justify="right")
    shown = [i for i, row in enumerate(answers["confusion"]) if sum(row)]
    for i in shown:
        t.add_column(answers["labels"][i], justify="right")
    for i in shown:
        row = answers["confusion"][i]
        t.add_row(
            answers["labels"][i], f"{answers['accuracy'][answers['labels'][i]]:.1%}", *(str(row[j]) for j in shown)
        )
    out.print(t)
    if "parity" in metrics:
        p = metrics["parity"]
        out.print(
            f"parity with {metrics['reference']}: max abs diff {p['max_abs_diff']:.2e}, argmax agreement "
            f"{p['argmax_agreement']:.2%}"
        )
    if "accuracy_drop_points" in metrics:
        out.print(f"accuracy drop vs {metrics['reference']}: {metrics['accuracy_drop_points']:.2f} points")


@app.command()
@guarded
def bench(
    models: Annotated[list[Path], typer.Argument(help="One or more .onnx files or bundle folders.")],
    ep: Annotated[
        list[str] | None, typer.Option(help="Execution provider (see `mmedge providers`); repeat for several.")
    ] = None,
    threads: Annotated[list[int] | None, typer.Option(help="intra-op threads; repeat to sweep (default 1).")] = None,
    batch: Annotated[list[int] | None, typer.Option(help="Batch size; repeat to sweep (default 1 and 32).")] = None,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds per batch size (every variant once per round).")] = 20,
    calls: Annotated[int, typer.Option(help="Timed calls per variant per round.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up calls per variant and batch size.")] = 20,
    max_seconds: Annotated[
        float | None, typer.Option(min=0.1, help="Stop a batch size's rounds after this long (at least 3 rounds).")
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(help="An .npz of input tensors to time instead of the bundle's samples or the test split."),
    ] = None,
    dim: Annotated[
        list[str] | None,
        typer.Option(
            help="Size of a dynamic dimension, NAME=SIZE, for a model with no real inputs (no bundle samples, no "
            "dataset, no --inputs): it is timed on synthetic random values of these sizes. The batch needs none."
        ),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Mark an EP that is not installed (or cannot take a model) as unavailable in the results "
            "instead of failing.",
        ),
    ] = False,
    allow_fallback: Annotated[
        bool,
        typer.Option("--allow-fallback", help="Let the CPU EP run nodes a non-CPU EP cannot take (shown per node)."),
    ] = False,
    io_binding: Annotated[
        bool | None,
        typer.Option(
            "--io-binding/--no-io-binding",
            help="Bind inputs and outputs on the device once (default: on for CUDA/TensorRT, off for CPU EPs).",
        ),
    ] = None,
    fp16: Annotated[
        bool, typer.Option("--fp16", help="Also time a float16 copy of each model (the GPU comparison).")
    ] = False,
    accuracy: Annotated[
        bool,
        typer.Option(
            "--accuracy",
            help="Also score each model on its test split (needs mmedge[data]); the report then plots accuracy "
            "against latency.",
        ),
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write results.json, report.md and plots into this folder.")
    ] = None,
    html: Annotated[
        bool, typer.Option("--html", help="With --out, also write report.html with the plots inline.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
):
    """Latency (p50/p90/p99), throughput, session load time and memory of models × EPs × threads × batch sizes,
    measured interleaved on real inputs."""
    from mmedge.commands import bench_models
    from mmedge.runtime.bench import comparison_lines

    doc = bench_models(
        models,
        inputs=inputs,
        eps=ep or ["cpu"],
        threads=threads or [1],
        batches=batch or [1, 32],
        rounds=rounds,
        calls=calls,
        warmup=warmup,
        max_seconds=max_seconds,
        allow_missing=allow_missing,
        allow_fallback=allow_fallback,
        io_binding=io_binding,
        fp16=fp16,
        accuracy=accuracy,
        out_dir=out_dir,
        html=html,
        dims=_parse_dims(dim or []),
    )
    written = doc.pop("written", None)
    if written and written["note"]:
        err.print(f"note: {written['note']}.", markup=False, highlight=False)
    if as_json:
        _emit_json(doc)
        return
    from mmedge.report.markdown import bench_tables
    from mmedge.runtime.shapes import is_synthetic

    for name, model in doc["models"].items():
        if is_synthetic(model.get("inputs")) and not name.endswith(" fp16"):
            out.print(f"inputs of {name}: {model['inputs']}", markup=False, highlight=False)
    out.print(bench_tables(doc), markup=False, highlight=False)
    # which differences hold beyond the run-to-run spread (per-round ratios, p10-p90)
    for line in comparison_lines(doc):
        out.print(line, markup=False, highlight=False)
    if written:
        out.print(f"wrote {', '.join(written['files'])} into {written['folder']}", markup=False, highlight=False)


@app.command()
@guarded
def report(
    results: Annotated[Path, typer.Argument(help="A results.json written by `mmedge run` or `mmedge bench --out`.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder for report.md and plots (default: the results file's folder).")
    ] = None,
    html: Annotated[bool, typer.Option("--html", help="Also write report.html with the plots inline.")] = False,
):
    """Re-render report.md, the PNG plots and optionally report.html from a saved results document."""
    from mmedge.report.render import load_results, write_report

    doc = load_results(results)
    folder = out_dir or results.parent
    written = write_report(doc, folder, html=html, write_json=out_dir is not None and folder != results.parent)
    if written.note:
        err.print(f"note: {written.note}.", markup=False, highlight=False)
    out.print(f"wrote {', '.join(sorted(written))} into {folder}", markup=False, highlight=False)


@app.command()
@guarded
def predict(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder written by `mmedge run`.")],
    image: Annotated[Path, typer.Option(help="Image file (PNG/JPEG); a light digit on a dark background.")],
    text: Annotated[
        str, typer.Option(help='The question, e.g. "is this digit even?" (a zero-shot bundle needs none).')
    ] = "",
    invert: Annotated[bool, typer.Option(help="Invert the image first (for dark digits on light paper).")] = False,
    top: Annotated[int, typer.Option(min=1, help="How many answers to list.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
):
    """Answer a question about an image with a bundle, using only onnxruntime, numpy and Pillow."""
    from mmedge.runtime.predict import predict_bundle

    answer = predict_bundle(bundle, image, text, invert=invert, top=top)
    if as_json:
        _emit_json(answer)
        return
    for note in answer["notes"]:
        err.print(f"note: {note}")
    out.print(f"[bold]{answer['answer']}[/]  ({answer['top'][0]['probability']:.1%})")
    for alt in answer["top"][1:]:
        out.print(f"  {alt['label']}: {alt['probability']:.1%}")


@app.command()
@guarded
def providers(as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False):
    """The execution providers mmedge knows, and which this onnxruntime installation really has."""
    from rich.markup import escape

    from mmedge.runtime.providers import listing

    rows = listing()
    if as_json:
        _emit_json(rows)
        return
    t = Table(title=f"execution providers (onnxruntime {rows[0]['onnxruntime']})")
    for col in ("name", "onnxruntime provider", "available", "how to get it"):
        t.add_column(col)
    for r in rows:
        how = escape(r["how_to_get"] or "")  # it holds brackets (mmedge[gpu]) that are not markup
        t.add_row(r["name"], r["ort_name"], "[green]yes[/]" if r["available"] else "no", how)
    out.print(t)


@app.command()
@guarded
def inspect(
    path: Annotated[Path, typer.Argument(help="An .onnx file or a bundle folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
):
    """Summarize an .onnx file (inputs, ops, opset, metadata) or a bundle (manifest, checksums, figures); a bundle
    whose files do not match their checksums is shown, then fails."""
    from mmedge.commands import check_inspected, inspect_path

    summary = inspect_path(path)
    if as_json:
        _emit_json(summary)
        check_inspected(summary)
        return
    model = summary.get("model", summary) if path.is_dir() else summary
    title = f"{model.get('path', path)}"
    if path.is_dir():
        state = (
            "[green]verified[/]" if summary["verified"] else f"[red]NOT verified[/]: {'; '.join(summary['problems'])}"
        )
        out.print(
            f"bundle [bold]{summary['name']}[/] (schema {summary['schema_version']}, mmedge "
            f"{summary['mmedge_version']}, {summary['created']}) — checksums {state}"
        )
        acc = summary["metrics"].get("accuracy", {}).get("test", {}).get("accuracy")
        if acc is not None:
            out.print(f"test accuracy {acc:.2%}; labels: {', '.join(map(str, summary['labels']))}")
        if "inputs" not in model:  # the model file was not verified, so not read: show what the manifest states
            model = {**model, "inputs": summary["inputs"]}
            title = f"{model.get('file', path)} as the manifest states it (file not verified)"
    t = Table(title=title)
    for col in ("tensor", "name", "dtype", "shape"):
        t.add_column(col)
    for kind in ("inputs", "outputs"):
        for v in model.get(kind, []):
            t.add_row(kind[:-1], v["name"], v["dtype"], str(v["shape"]))
    out.print(t)
    if "nodes" in model:
        ops = ", ".join(f"{k}×{v}" for k, v in list(model["op_types"].items())[:12])
        out.print(
            f"{model['size_bytes'] / 1e6:.3f} MB, {model['parameters']:,} parameters, {model['nodes']} nodes, "
            f"opsets {model['opsets']}, producer {model['producer']}\nops: {ops}"
        )
        if model["mmedge"]:
            out.print(f"mmedge: family {model['mmedge'].get('family')}, version {model['mmedge'].get('version')}")
    check_inspected(summary)


@app.command()
@guarded
def run(
    recipe: Annotated[
        str | None,
        typer.Argument(help="Recipe file (YAML/TOML) or built-in name; default: the built-in digits-vqa recipe."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved recipe and stop.")] = False,
    force: Annotated[bool, typer.Option(help="Re-run every step, ignoring the cache.")] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="When another run of the same recipe uses the working folder, stop at once instead of waiting.",
        ),
    ] = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Format of the --dry-run output.")] = Fmt.yaml,
    allow_over_budget: Annotated[
        bool,
        typer.Option(
            "--allow-over-budget",
            help="When no quantized candidate meets the accuracy budget, keep the most accurate one, not fail.",
        ),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Start from another model: onnx:PATH (an ONNX file; the PyTorch steps are skipped), hf:PATH (a "
            "Hugging Face CLIP / VisionTextDualEncoder folder) or py:package.module:factory (needs --trust-code).",
        ),
    ] = None,
    task: Annotated[
        Task | None,
        typer.Option(help="hf: models: zero-shot (label prompts, no training) or fusion-head (a trained head)."),
    ] = None,
    data_path: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Your dataset instead of the recipe's: a JSONL/CSV manifest (image, text, label), an image folder "
            "with a captions file, or a folder of MNIST-format IDX files.",
        ),
    ] = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option("--skip-bad-rows", help="Leave out dataset rows that do not decode or have unknown labels."),
    ] = False,
    trust_code: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            help="Allow importing the model's own code (py: factories, Hugging Face folders with auto_map); "
            "only for code you trust.",
        ),
    ] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Bundle folder (default: the recipe's output).")] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Name of the run and its bundle (run folder, bundle folder, report titles); default: the recipe's, "
            "or with --data the data's (manifest or folder name).",
        ),
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help="onnx: models without mmedge metadata: an .npz with one array per model input that every step "
            "judges fidelity on, quantize.static calibrates on and bench times (default: synthetic inputs, said so).",
        ),
    ] = None,
    dim: Annotated[
        list[str] | None,
        typer.Option(
            "--dim",
            help="onnx: models without mmedge metadata and without --inputs: size of a dynamic dimension, NAME=SIZE, "
            "for the synthetic inputs (every one but the batch needs a size).",
        ),
    ] = None,
    nproc_per_node: Annotated[
        int | None,
        typer.Option(
            "--nproc-per-node",
            min=1,
            help="Train data-parallel in N processes on this machine (torchrun's launcher, gloo); the same as "
            "`torchrun --nproc-per-node N -m mmedge_cli run ...`. Batch sizes stay global: each rank computes its "
            "share.",
        ),
    ] = None,
    max_restarts: Annotated[
        int,
        typer.Option(
            "--max-restarts",
            min=0,
            help="With --nproc-per-node: restart every rank this many times when one fails; training resumes "
            "from its last finished epoch.",
        ),
    ] = 0,
    dist_backend: Annotated[
        str,
        typer.Option("--dist-backend", help="Backend of a distributed run: auto (gloo: mmedge trains on the CPU)."),
    ] = "auto",
    dist_timeout: Annotated[
        float,
        typer.Option(
            "--dist-timeout",
            min=0.1,
            help="Minutes a rank of a distributed run waits for the others (a collective, or rank 0's steps) before "
            "the run stops.",
        ),
    ] = 30.0,
):
    """Run a whole recipe: train → export → validate → bench → bundle, with each step cached."""
    from mmedge import distributed

    if nproc_per_node is not None and not distributed.launched():
        raise typer.Exit(_launch(nproc_per_node, max_restarts))
    from mmedge.recipe import load_recipe, overrides
    from mmedge.sources import input_overrides

    distributed.join(dist_backend, dist_timeout)
    distributed.quiet_other_ranks()

    if trust_code:
        from mmedge.models.trust import trust_code as allow

        allow()  # also reaches the export subprocess, which imports the model again

    edit = overrides(
        model=model,
        task=task.value if task else None,
        data_path=data_path,
        skip_bad_rows=skip_bad_rows,
        output=out_dir,
        name=name,
    )
    given = input_overrides(inputs, _parse_dims(dim or []))
    r = load_recipe(recipe, lambda data: given(edit(data)))
    if r.skipped_steps:
        err.print(f"model source {r.model.source}: skipping {', '.join(r.skipped_steps)} (not for this model source)")
    if dry_run:
        sys.stdout.write(r.dump(fmt.value))
        return
    from mmedge.pipeline import run_recipe, summary_lines

    def show(rec):
        state = "cached" if rec.cached else f"{rec.seconds:.1f} s"
        out.print(f"[bold]{rec.index}. {rec.config.type}[/] — {state} — {rec.folder}")

    try:
        records = run_recipe(
            r,
            force=force,
            progress="bar" if sys.stderr.isatty() else "lines",
            on_step=show,
            allow_over_budget=allow_over_budget,
            wait=not no_wait,
        )
        distributed.leave(finished=True)
    except RuntimeError as exc:
        if distributed.peer_gone(exc):  # another rank ended first, and says why
            raise distributed.PeerFailedError(str(exc)) from None
        raise
    finally:
        distributed.leave()
    for line in summary_lines(records, r):
        out.print(line, markup=False, highlight=False)


def _launch(nproc: int, max_restarts: int) -> int:
    """``mmedge run --nproc-per-node N ...``: the same command in N processes through torchrun's launcher
    (``torch.distributed.run``, a rendezvous on this machine); a failed rank's sentence is said once."""
    import uuid

    from mmedge.distributed import DistributedError

    try:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import elastic_launch
        from torch.distributed.run import config_from_args, parse_args
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(exc.msg, name="torch") from None
    argv = list(sys.argv[2:])  # what followed `mmedge run`, less this launcher's own options
    for option in ("--nproc-per-node", "--max-restarts"):
        while option in argv:
            at = argv.index(option)
            del argv[at : at + 2]
        argv = [a for a in argv if not a.startswith(option + "=")]
    # each rank takes its share of the cores (torchrun would otherwise set 1 thread and say so)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHED_ENV] = "1"
    args = parse_args(
        [
            f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}",
            "--rdzv-backend=c10d",
            "--rdzv-endpoint=localhost:0",
            f"--rdzv-id={uuid.uuid4()}",
            "--module",
            "mmedge_cli",
            "run",
            *argv,
        ]
    )
    if args.master_port is None:
        args.master_port = 29500
    config, command, command_args = config_from_args(args)
    import logging

    logging.getLogger("torch.distributed.elastic").setLevel(
        logging.CRITICAL
    )  # the failed rank's sentence is said below
    try:
        elastic_launch(config, command)(*command_args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        message = failure.message.get("message") if isinstance(failure.message, dict) else failure.message
        if not message or "elastic/errors" in str(message):  # no word from the rank: its exit code or signal
            message = f"rank {rank} exited with code {failure.exitcode}"
        stopped = DistributedError(f"the distributed run stopped: {message}")
        stopped.exit_code = failure.exitcode if failure.exitcode > 0 else 1  # the rank's own, or 1 for a signal
        raise stopped from None
    return 0
