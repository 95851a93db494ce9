"""What the ONNX commands do (bench, mobile, inspect), each as one function the CLI calls and prints.

These join both sides: they time, check and summarize with the device side, and ``bench --fp16`` and
``mobile`` convert with ONNX passes of the build side (``compress.quantize.fp16``, ``export.mobile``). None of
those imports torch, so every function here runs where only ``pip install "mmedge[cpu]"`` is installed; an
import contract in pyproject.toml keeps it so.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from mmedge.errors import MmedgeError


def model_file(path: Path) -> Path:
    """An .onnx path as given, or the model of a bundle folder."""
    if path.is_dir():
        from mmedge.bundle.manifest import load_bundle

        return load_bundle(path).model_path
    return path


def refuse_quantized_for_fp16(name: str, path: Path) -> None:
    """Raise when ``path`` is already quantized: ``--fp16`` converts float32 models only."""
    from mmedge.compress.quantize.graph import QUANTIZED_OPS
    from mmedge.summary import onnx_summary

    quantized = sorted(set(onnx_summary(path)["op_types"]) & QUANTIZED_OPS)
    if quantized:
        raise MmedgeError(
            f"--fp16 converts float32 models, and {name} is already quantized ({', '.join(quantized)}); "
            "pass its float32 .onnx, or drop --fp16."
        )


def bench_models(
    models: Sequence[Path],
    *,
    inputs: Path | None = None,
    eps: Sequence[str] = ("cpu",),
    threads: Sequence[int] = (1,),
    batches: Sequence[int] = (1, 32),
    rounds: int = 20,
    calls: int = 10,
    warmup: int = 20,
    max_seconds: float | None = None,
    allow_missing: bool = False,
    allow_fallback: bool = False,
    io_binding: bool | None = None,
    fp16: bool = False,
    accuracy: bool = False,
    out_dir: Path | None = None,
    html: bool = False,
    dims: dict[str, int] | None = None,
) -> dict:
    """``mmedge bench``: the results document of ``bench_matrix`` over ``models`` (.onnx files or bundle folders).

    Each model is timed on ``inputs`` (an .npz) when given, else on its bundle's samples, its test split or
    synthetic inputs, in that order (``bench_inputs``); synthetic inputs take every open size from ``dims``
    (``--dim NAME=SIZE``) and are refused without them, and each model runs once on its inputs before anything is
    timed. ``fp16`` adds a float16 copy of each model, timed on the
    same inputs (a quantized model is refused before anything is timed). ``accuracy`` adds each model's test
    accuracy (needs the model's dataset). ``out_dir`` receives results.json, report.md and plots (and
    report.html with ``html``); what was written is ``doc["written"]`` (not part of results.json)."""
    from mmedge.runtime.bench import bench_matrix, model_names, tile_batch
    from mmedge.runtime.inputs import bench_inputs, npz_feeds
    from mmedge.runtime.session import open_session
    from mmedge.runtime.shapes import check_dim_names, is_synthetic, open_dims, synthetic_inputs, trial_run

    dims = dict(dims or {})
    if inputs is not None and dims:
        raise MmedgeError("--dim sizes synthetic inputs, and --inputs gives real ones; pass one of them.")
    paths = [model_file(Path(m)) for m in models]
    names = model_names(paths)
    table = dict(zip(names, paths, strict=True))
    if fp16:
        for name, path in table.items():
            refuse_quantized_for_fp16(name, path)
    feeds, sources, opened = {}, {}, {}
    for name, given, path in zip(names, models, paths, strict=True):
        sess = open_session(path, "cpu")
        real = (npz_feeds(inputs), str(inputs)) if inputs is not None else bench_inputs(Path(given), path)
        if real is not None:
            feeds[name], sources[name] = real
        else:  # no real inputs for this model: every open size comes from --dim, never a guess
            own = open_dims(sess)
            opened.update(own)
            feeds[name], sources[name] = synthetic_inputs(
                sess, {k: v for k, v in dims.items() if k in own}, name, f"mmedge bench {given}"
            )
        trial_run(sess, tile_batch(feeds[name], 1), sources[name], name)
    if dims:
        synthetic = [n for n in names if is_synthetic(sources[n])]
        if not synthetic:
            raise MmedgeError(
                "--dim sizes synthetic inputs, and every model here is timed on real ones "
                f"({'; '.join(sorted(set(sources.values())))}); drop --dim."
            )
        check_dim_names(dims, opened, ", ".join(synthetic))
    with tempfile.TemporaryDirectory(prefix="mmedge-bench-") as tmp:
        if fp16:
            from mmedge.compress.quantize.fp16 import Fp16Config, fp16_model

            for name, path in list(table.items()):
                copy = f"{name} fp16"
                table[copy] = Path(tmp) / f"{copy}.onnx"
                fp16_model(path, table[copy], Fp16Config())
                feeds[copy], sources[copy] = feeds[name], sources[name]
        doc = bench_matrix(
            table,
            feeds,
            list(eps),
            list(threads),
            list(batches),
            rounds=rounds,
            calls=calls,
            warmup=warmup,
            allow_missing=allow_missing,
            allow_fallback=allow_fallback,
            io_binding=io_binding,
            max_seconds=max_seconds,
            sources=sources,
        )
        if accuracy:
            from mmedge.runtime.evaluate import evaluate_model

            for name, path in table.items():  # the fp16 copies exist only inside this block
                doc["models"][name]["accuracy"] = evaluate_model(path, ablation=False)[0]["test"]["accuracy"]
    if out_dir is not None:
        from mmedge.report.render import write_report

        files = write_report(doc, out_dir, html=html)
        doc["written"] = {"folder": str(out_dir), "files": sorted(files), "note": files.note}
    return doc


def mobile_files(model: Path, out_dir: Path, dims: dict[str, int] | None = None, inputs: Path | None = None) -> dict:
    """``mmedge mobile``: the ONNX Runtime Mobile files of ``model`` (an .onnx or a bundle folder) in ``out_dir``,
    each .ort checked against its .onnx on ``inputs`` (an .npz) or the inputs ``mmedge bench`` would time. The
    fixed-shape variant takes each open size from ``dims``, else from the ``inputs`` arrays (the batch stays 1: a
    phone answers one question at a time), else from the model's tokenizer; every size still unknown is named in
    one sentence. Returns the analysis, with ``inputs`` naming where the check inputs came from."""
    from mmedge.export.mobile import MobileConfig, build_mobile
    from mmedge.runtime.inputs import bench_inputs, npz_feeds
    from mmedge.runtime.session import open_session
    from mmedge.runtime.shapes import check_dim_names, open_dims, trial_run

    path = model_file(model)
    sess = open_session(path, "cpu")
    dims = dict(dims or {})
    check_dim_names(dims, open_dims(sess), path.name)
    if inputs is not None:
        feeds, source = npz_feeds(inputs), str(inputs)
        trial_run(sess, feeds, source, path.name)
    else:
        real = bench_inputs(model, path)
        if real is None:
            from mmedge.runtime.shapes import synthetic_inputs

            real = synthetic_inputs(sess, dims, path.name, f"mmedge mobile {model}")
        feeds, source = real
        trial_run(sess, feeds, source, path.name)
    result = build_mobile(path, out_dir, feeds, MobileConfig(dims=dims))
    result["inputs"] = source
    return result


def inspect_path(path: Path) -> dict:
    """``mmedge inspect``: the summary of an .onnx file, or of a bundle folder (manifest, checksums, its model)."""
    from mmedge.summary import bundle_summary, onnx_summary

    if not path.exists():
        raise MmedgeError(f"{path} does not exist; pass an .onnx file or a bundle folder.")
    return bundle_summary(path) if path.is_dir() else onnx_summary(path)


def check_inspected(summary: dict) -> None:
    """Raise, after ``mmedge inspect`` has shown a bundle, when its files do not match their checksums."""
    from mmedge.errors import BundleError

    if summary.get("bundle") and not summary["verified"]:
        raise BundleError(
            f"bundle {summary['bundle']} is not what was built: {', '.join(summary['problems'])}; restore its "
            "files or rebuild it with `mmedge run` before shipping it."
        )
