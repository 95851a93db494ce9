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

# Ops that mark a model as already quantized: a float16 copy of it would be neither float16 nor comparable.
QUANTIZED_OPS = frozenset(
    {
        "DequantizeLinear",
        "QuantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeLSTM",
    }
)


def model_file(path: Path) -> Path:
    """An .onnx path as given, or the model of a bundle folder."""
    if path.is_dir():
        from mmedge.bundle.manifest import load_bundle

        return load_bundle(path).model_path
    return path


def refuse_quantized_for_fp16(name: str, path: Path) -> None:
    """Raise when ``path`` is already quantized: ``--fp16`` converts float32 models only."""
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
) -> dict:
    """``mmedge bench``: the results document of ``bench_matrix`` over ``models`` (.onnx files or bundle folders).

    Each model is timed on ``inputs`` (an .npz) when given, else on its bundle's samples, its test split or
    synthetic inputs, in that order (``bench_inputs``). ``fp16`` adds a float16 copy of each model, timed on the
    same inputs (a quantized model is refused before anything is timed). ``accuracy`` adds each model's test
    accuracy (needs the model's dataset). ``out_dir`` receives results.json, report.md and plots (and
    report.html with ``html``)."""
    from mmedge.runtime.bench import bench_matrix, model_names
    from mmedge.runtime.inputs import bench_inputs, npz_feeds

    paths = [model_file(Path(m)) for m in models]
    names = model_names(paths)
    table = dict(zip(names, paths, strict=True))
    if fp16:
        for name, path in table.items():
            refuse_quantized_for_fp16(name, path)
    feeds, sources = {}, {}
    for name, given, path in zip(names, models, paths, strict=True):
        if inputs is not None:
            feeds[name], sources[name] = npz_feeds(inputs), str(inputs)
        else:
            feeds[name], sources[name] = bench_inputs(Path(given), path)
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

        write_report(doc, out_dir, html=html)
    return doc


def mobile_files(model: Path, out_dir: Path, dims: dict[str, int] | None = None, inputs: Path | None = None) -> dict:
    """``mmedge mobile``: the ONNX Runtime Mobile files of ``model`` (an .onnx or a bundle folder) in ``out_dir``,
    each .ort checked against its .onnx on ``inputs`` (an .npz) or the inputs ``mmedge bench`` would time. Returns
    the analysis, with ``inputs`` naming where the check inputs came from."""
    from mmedge.export.mobile import MobileConfig, build_mobile
    from mmedge.runtime.inputs import bench_inputs, npz_feeds

    path = model_file(model)
    feeds, source = (npz_feeds(inputs), str(inputs)) if inputs is not None else bench_inputs(model, path)
    result = build_mobile(path, out_dir, feeds, MobileConfig(dims=dims or {}))
    result["inputs"] = source
    return result


def inspect_path(path: Path) -> dict:
    """``mmedge inspect``: the summary of an .onnx file, or of a bundle folder (manifest, checksums, its model)."""
    from mmedge.summary import bundle_summary, onnx_summary

    if not path.exists():
        raise MmedgeError(f"{path} does not exist; pass an .onnx file or a bundle folder.")
    return bundle_summary(path) if path.is_dir() else onnx_summary(path)
