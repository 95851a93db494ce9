"""What the ONNX commands do (bench, mobile, inspect), each as one function the CLI calls and prints.

These join both sides: they time, check and summarize with the device side, and ``bench --fp16`` and
``mobile`` convert with ONNX passes of the build side (``compress.quantize.fp16``, ``export.mobile``). None of
those imports torch, so every function here runs where only ``pip install "mmedge[cpu]"`` is installed; an
import contract in pyproject.toml keeps it so.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mmedge.errors import MmedgeError

if TYPE_CHECKING:
    from mmedge.bundle.manifest import Bundle


@contextlib.contextmanager
def model_file(path: Path) -> Iterator[tuple[Path, Bundle | None]]:
    """(the model file to read, the bundle it comes from or None): an .onnx path as given, or for a bundle folder a
    private copy of its model, from a snapshot that also gives its samples, so that a run replacing the bundle
    meanwhile cannot mix two versions (``mmedge.bundle.manifest``)."""
    if not path.is_dir():
        yield path, None
        return
    from mmedge.bundle.manifest import load_bundle

    with load_bundle(path) as bundle, bundle.model_copy() as copy:
        yield copy, bundle


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
    with contextlib.ExitStack() as stack:  # each bundle's snapshot, held until every model is timed
        opened = [stack.enter_context(model_file(Path(m))) for m in models]
        paths = [path for path, _ in opened]
        names = model_names(paths)
        table = dict(zip(names, paths, strict=True))
        if fp16:
            for name, path in table.items():
                refuse_quantized_for_fp16(name, path)
        feeds, sources, open_sizes = {}, {}, {}
        for name, given, (path, bundle) in zip(names, models, opened, strict=True):
            sess = open_session(path, "cpu")
            real = (npz_feeds(inputs), str(inputs)) if inputs is not None else bench_inputs(Path(given), path, bundle)
            if real is not None:
                feeds[name], sources[name] = real
            else:  # no real inputs for this model: every open size comes from --dim, never a guess
                own = open_dims(sess)
                open_sizes.update(own)
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
            check_dim_names(dims, open_sizes, ", ".join(synthetic))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mmedge-bench-"))
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

            for name, path in table.items():  # the fp16 copies and the bundles' model copies exist only in this block
                doc["models"][name]["accuracy"] = evaluate_model(path, ablation=False)[0]["test"]["accuracy"]
        for name, (_, bundle) in zip(names, opened, strict=True):
            if bundle is not None:  # the model's place in its bundle, not its private copy's
                doc["models"][name]["path"] = str(bundle.model_path)
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
    with model_file(model) as (path, bundle):
        return _mobile_files(model, path, bundle, out_dir, dict(dims or {}), inputs)


def _mobile_files(model: Path, path: Path, bundle: Bundle | None, out_dir: Path, dims: dict, inputs) -> dict:
    """``mobile_files`` of the model file ``path`` (a bundle's private copy, or the .onnx ``model`` itself)."""
    from mmedge.export.mobile import MobileConfig, build_mobile
    from mmedge.runtime.inputs import bench_inputs, npz_feeds
    from mmedge.runtime.session import open_session
    from mmedge.runtime.shapes import check_dim_names, open_dims, trial_run

    sess = open_session(path, "cpu")
    check_dim_names(dims, open_dims(sess), path.name)
    if inputs is not None:
        feeds, source = npz_feeds(inputs), str(inputs)
        trial_run(sess, feeds, source, path.name)
    else:
        real = bench_inputs(model, path, bundle)
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
