"""Mobile artifacts for ONNX Runtime Mobile (Android, iOS), made and checked here without torch.

From one .onnx model this writes:

- ``model.ort`` — the ORT format for the mobile (minimal) runtime, converted with the *Runtime*
  optimization style: the Fixed style bakes optimizations for this build machine (x86 NCHWc kernels)
  into the file, Runtime saves them to be replayed on the device;
- ``model.fixed.onnx`` and ``model.fixed.ort`` — every dynamic dimension set to a fixed size (batch 1,
  the tokenizer's full text length), which NNAPI and CoreML need to take the graph at all;
- ``required_operators.config`` — the operators (with opsets) both files use, for a reduced-operator
  ONNX Runtime build (``--include_ops_by_config``);
- ``mobile.json`` — the usability analysis for NNAPI and CoreML (nodes each EP can take, partitions,
  unsupported operators, a verdict) of the dynamic and the fixed-shape model, and the parity of every
  .ort file with its .onnx on real inputs.

Every .ort is loaded back (with its saved runtime optimizations replayed, as the device will) and must
reproduce the .onnx outputs within ``atol`` — or, for an int8 model, whose fused integer kernels round in
another order, within ``quantized_rtol`` of the largest output, or with every sample's cosine at least
``runtime.fidelity.REPRODUCE_MIN_COSINE``, with (nearly) every answer the same; otherwise nothing is kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from mmedge.errors import MmedgeError
from mmedge.results import MobileMetrics
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step

ORT_FILE = "model.ort"
FIXED_ONNX = "model.fixed.onnx"
FIXED_ORT = "model.fixed.ort"
OPS_CONFIG = "required_operators.config"
ANALYSIS = "mobile.json"
# A .ort converted with the Runtime style replays its saved optimizations only with this entry set.
SESSION_CONFIG = {"session.enable_saved_runtime_optimizations": "1"}

# Which op-support table of onnxruntime's usability checker judges which mobile EP.
_EPS = {
    "nnapi": ("NNAPI (Android)", None),
    "coreml-neuralnetwork": ("CoreML NeuralNetwork (iOS/macOS)", "coreml_supported_neuralnetwork_ops.md"),
    "coreml-mlprogram": ("CoreML ML Program (iOS 15+/macOS 12+)", "coreml_supported_mlprogram_ops.md"),
}


class MobileError(MmedgeError):
    """A mobile artifact that cannot be made or does not reproduce its source model."""


class MobileConfig(StepConfig):
    type: Literal["mobile"] = "mobile"
    batch_size: int = Field(
        1, ge=1, description="Batch size fixed into model.fixed.*; an app on a phone answers one question at a time."
    )
    text_length: int | None = Field(
        None,
        ge=1,
        description="Text length fixed into model.fixed.*; default: the tokenizer's max_length, so every "
        "question fits once padded.",
    )
    dims: dict[str, int] = Field(
        default_factory=dict,
        description="Sizes for named dynamic dimensions (e.g. {batch: 1}); wins over batch_size/text_length. "
        "Needed only for a model whose dimensions mmedge cannot size by itself.",
    )
    target_platform: Literal["arm", "amd64"] = Field(
        "arm",
        description="CPU the .ort is optimized for: arm (phones, Raspberry Pi) keeps int8 QDQ fusions and no "
        "x86-only layout transforms.",
    )
    atol: float = Field(
        1e-4, gt=0, description="Largest absolute output difference allowed between a .ort and its float .onnx."
    )
    quantized_rtol: float = Field(
        0.02,
        gt=0,
        description="Largest output difference for an int8-quantized model, as a share of the largest |output| of the "
        ".onnx: the .ort's fused integer kernels (e.g. DynamicQuantizeMatMul, DynamicQuantizeLSTM) round in another "
        "order than the separate ops of the .onnx, and a static QDQ model saved at the basic level runs unfused. "
        "Measured on digits-vqa (onnxruntime 1.32): the int8-dynamic cnn-lstm within 0.4 % of the largest logit, "
        "its int8-static QDQ variant at the basic level within 1.25 % (0.73 on logits reaching 59), every answer "
        "the same.",
    )
    min_agreement: float = Field(
        0.99, gt=0, le=1, description="Share of answers (argmax) a quantized model's .ort must give as its .onnx."
    )


def _dim_params(model) -> dict[str, list[tuple[str, int]]]:
    """Each dynamic dimension name -> the (input, axis) places it sizes, named as ``runtime.shapes.open_dims`` and
    ``--dim`` name them (``INPUT[AXIS]`` for one that names nothing)."""
    from mmedge.runtime.shapes import dim_name

    found: dict[str, list[tuple[str, int]]] = {}
    for value in model.graph.input:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                continue
            found.setdefault(dim_name(dim.dim_param, value.name, axis), []).append((value.name, axis))
    return found


def fixed_dims(model, cfg: MobileConfig, max_length: int | None, given: dict[str, int] | None = None) -> dict[str, int]:
    """A size for every dynamic dimension of the model inputs, or one error naming every one left open. A size comes
    from the step's ``dims``, else the batch size (a batch-like dimension), else the text length (``text_length``, or
    the tokenizer's ``max_length``), else ``given`` (the sizes of the check inputs: a model from elsewhere)."""
    dims, missing = {}, {}
    places = _dim_params(model)
    given = given or {}
    for name, where in places.items():
        if name in cfg.dims:
            dims[name] = cfg.dims[name]
        elif all(axis == 0 for _, axis in where):
            dims[name] = cfg.batch_size
        elif cfg.text_length is not None or max_length is not None:
            dims[name] = cfg.text_length or max_length
        elif name in given:
            dims[name] = given[name]
        else:
            missing[name] = where
    if missing:
        from mmedge.runtime.shapes import describe_dims, dim_options

        step = ", ".join(f"{n!r}: N" if "[" in n else f"{n}: N" for n in missing)
        raise MobileError(
            f"the model's dynamic dimensions {describe_dims(missing)} have no known size; set them in the mobile "
            f"step (dims: {{{step}}}), or give `mmedge mobile` {dim_options(missing)} or real inputs with "
            "--inputs FILE.npz."
        )
    for name, value in cfg.dims.items():
        if name not in dims:
            raise MobileError(
                f"dims names '{name}', which is not a dynamic dimension of this model (it has: "
                f"{', '.join(places) or 'none'}); remove it."
            )
        if value < 1:
            raise MobileError(f"dims sets '{name}' to {value}; every size must be at least 1.")
    return dims


def make_fixed(src: Path, dst: Path, dims: dict[str, int]) -> None:
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    from mmedge.runtime.shapes import UNNAMED

    model = onnx.load(str(src))
    places = _dim_params(model)
    inputs = {v.name: v for v in model.graph.input}
    for name, value in dims.items():
        at = [inputs[i].type.tensor_type.shape.dim[axis] for i, axis in places[name]]
        if all(d.dim_param in UNNAMED for d in at):  # a dimension that names nothing is sized where it is
            for dim in at:
                dim.Clear()
                dim.dim_value = value
        else:
            make_dim_param_fixed(model.graph, name, value)
    fix_output_shapes(model)
    onnx.save(model, str(dst))


@contextlib.contextmanager
def _quiet_tools():
    """onnxruntime's mobile tools print progress and log to the root logger; keep the CLI output ours."""
    names = ("ort_format_model.utils", "ort_format_model", "usability_checker", "check_usability")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# The environment variable through which onnxruntime's converter takes its graph optimization level.
LEVEL_ENV = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"


def convert_to_ort(models: list[Path], out_dir: Path, target_platform: str, level: str = "all") -> dict[str, Path]:
    """ORT-format files (Runtime optimization style, saved at graph optimization ``level``) and the operators
    config for ``models``."""
    before = os.environ.get(LEVEL_ENV)
    os.environ[LEVEL_ENV] = level
    try:
        return _convert_to_ort(models, out_dir, target_platform)
    finally:
        if before is None:
            os.environ.pop(LEVEL_ENV, None)
        else:
            os.environ[LEVEL_ENV] = before


def _convert_to_ort(models: list[Path], out_dir: Path, target_platform: str) -> dict[str, Path]:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="mmedge-ort-") as tmp:
        staging, converted = Path(tmp) / "onnx", Path(tmp) / "ort"
        staging.mkdir()
        for m in models:
            shutil.copyfile(m, staging / m.name)
        with _quiet_tools() as log:
            try:
                convert_onnx_models_to_ort(
                    staging,
                    output_dir=converted,
                    optimization_styles=[OptimizationStyle.Runtime],
                    target_platform=target_platform,
                )
            except Exception as exc:
                from mmedge.errors import brief, clip

                last = (log.getvalue().strip().splitlines() or [""])[-1]
                seen = f" (the converter's last words: {clip(last, 200)})" if last else ""
                raise MobileError(
                    f"onnxruntime could not convert the model to the ORT format ({brief(exc)}){seen}; the model uses "
                    "something the mobile runtime cannot hold, so convert a model of standard ONNX operators."
                ) from None
        written = {}
        for m in models:
            level = os.environ[LEVEL_ENV]  # the converter names a non-default level in the file name
            produced = converted / f"{m.stem}{'' if level == 'all' else '.' + level}.with_runtime_opt.ort"
            written[m.name] = out_dir / f"{m.stem}.ort"
            shutil.move(produced, written[m.name])
        config = next(converted.glob("required_operators*.config"))
        lines = config.read_text().splitlines()
        # The generated header lists the build machine's temporary paths; name the shipped files instead.
        body = [ln for ln in lines if not ln.startswith("#")]
        header = ["# Operators (domain;opset;ops) used by: " + ", ".join(p.name for p in written.values())]
        header.append(
            "# Build a reduced ONNX Runtime with: build.sh --minimal_build --include_ops_by_config <this file>"
        )
        (out_dir / OPS_CONFIG).write_text("\n".join(header + body) + "\n")
    return written


def ort_session(path: Path):
    """An InferenceSession on a .ort file the way a device loads it (saved runtime optimizations replayed)."""
    import onnxruntime as ort

    from mmedge.runtime.options import session_options

    opts = session_options(1, config=SESSION_CONFIG)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        from mmedge.errors import brief

        error = MobileError(f"{path.name} does not load in onnxruntime ({brief(exc)}); the conversion is broken.")
        error.detail = str(exc)  # onnxruntime's whole message, which build_mobile reads for the cause
        raise error from None


def fit_feeds(feeds: dict[str, np.ndarray], sess, pad: dict[str, int]) -> list[dict[str, np.ndarray]]:
    """``feeds`` cut into batches that fit a fixed-shape session: rows in chunks, padded along fixed axes."""
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    n = len(next(iter(feeds.values())))
    batch = next((s[0] for s in shapes.values() if isinstance(s[0], int)), n)
    chunks = []
    for start in range(0, n, batch):
        rows = np.arange(start, start + batch) % n
        chunk = {}
        for name, arr in feeds.items():
            part = arr[rows]
            widths = [(0, 0)] * part.ndim
            for axis in range(1, part.ndim):
                want = shapes[name][axis]
                if isinstance(want, int) and part.shape[axis] != want:
                    if part.shape[axis] > want:
                        raise MobileError(
                            f"input '{name}' has size {part.shape[axis]} on axis {axis}, more than the fixed "
                            f"{want}; raise text_length (or dims) in the mobile step."
                        )
                    widths[axis] = (0, want - part.shape[axis])
            chunk[name] = np.pad(part, widths, constant_values=pad.get(name, 0)) if any(w[1] for w in widths) else part
        chunks.append(chunk)
    return chunks


def _run_chunks(sess, chunks: list[dict[str, np.ndarray]], n: int) -> list[np.ndarray]:
    outs = [sess.run(None, c) for c in chunks]
    return [np.concatenate([o[k] for o in outs])[:n] for k in range(len(outs[0]))]


def check_ort(
    ort_path: Path, source, feeds: dict[str, np.ndarray], pad: dict[str, int], cfg: MobileConfig, quantized: bool
) -> dict:
    """Parity of a .ort with the session of its source .onnx, both fed the same batches. (The same batches
    matter: dynamic int8 quantization scales activations per batch, so batch 1 and batch 8 differ.)"""
    from mmedge.runtime.fidelity import REPRODUCE_MIN_COSINE, output_fidelity, reproduction_problems

    sess = ort_session(ort_path)
    n = len(next(iter(feeds.values())))
    chunks = fit_feeds(feeds, sess, pad)
    names = [o.name for o in source.get_outputs()]
    got, want = _run_chunks(sess, chunks, n), _run_chunks(source, chunks, n)
    fid = output_fidelity(dict(zip(names, got, strict=True)), dict(zip(names, want, strict=True)))
    worst = min(o["min_cosine"] for o in fid["outputs"])
    # the answer is the first output's argmax (logits); later outputs (a dual encoder's embeddings) are not answers
    answer = fid["outputs"][0].get("argmax_agreement")
    result = {
        "max_abs_diff": fid["max_abs_diff"],
        "min_cosine": worst,
        "argmax_agreement": answer,
        "samples": n,
        "batches": len(chunks),
    }
    if fid["max_abs_diff"] <= cfg.atol:
        return {**result, "rule": f"max abs diff <= {cfg.atol:g}"}
    bound = cfg.quantized_rtol * max(1.0, max(float(np.abs(w).max()) for w in want))
    agree = answer is None or answer >= cfg.min_agreement
    if quantized and agree and fid["max_abs_diff"] <= bound:
        return {
            **result,
            "rule": f"int8 model: max abs diff <= {bound:.3g} ({cfg.quantized_rtol:g} of the largest output), "
            f"agreement >= {cfg.min_agreement:g}",
        }
    # Probabilities (at most 1) leave the share-of-the-largest-output bound little room: there the outputs' shape
    # decides, each sample's cosine with the .onnx's.
    problems = reproduction_problems(fid, answers={names[0]})
    if quantized and agree and not problems:
        return {
            **result,
            "rule": f"int8 model: every sample's cosine >= {REPRODUCE_MIN_COSINE:g}, agreement >= "
            f"{cfg.min_agreement:g}",
        }
    allowed = f"{bound:.3g}, or a cosine of {REPRODUCE_MIN_COSINE:g} on every sample," if quantized else f"{cfg.atol:g}"
    why = f" ({'; '.join(problems)})" if quantized and problems else ""
    raise MobileError(
        f"{ort_path.name} differs from its .onnx by up to {fid['max_abs_diff']:.2e} on {n} real inputs (allowed "
        f"{allowed}){why}; the mobile file does not reproduce the model, so it was not kept."
    )


def _partition_summary(info, label: str) -> dict:
    verdict = info.suitability().name.lower()
    share = info.num_supported_nodes / max(info.num_nodes, 1)
    return {
        "ep": label,
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "supported_share": round(share, 4),
        "partitions": info.num_partitions,
        "partition_sizes": [len(g) for g in info.supported_groups],
        "unsupported_ops": sorted(op.split(":", 1)[-1] for op in info.unsupported_ops),
        "nodes_unsupported_by_op": info.nodes_unsupported_due_to_op,
        "nodes_unsupported_by_dynamic_shape": info.nodes_unsupported_due_to_dynamic_input,
        "nodes_unsupported_by_rank": info.num_unsupported_nodes_due_to_rank,
        "caveats": sorted(info.supported_ops_checker.get_caveats()),
        "verdict": verdict,
    }


def usability(model_path: Path) -> dict:
    """onnxruntime's mobile usability analysis of one .onnx, as data: per mobile EP, what it could take."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory(prefix="mmedge-usability-") as tmp, _quiet_tools():
        # The checker judges the graph after the basic optimizations every ORT build applies.
        optimized = Path(tmp) / model_path.name
        optimize_model(model_path, optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
        dynamic_inputs, _ = uc.check_shapes(model.graph)
        result = {"dynamic_inputs": [v.name for v in dynamic_inputs], "eps": {}}
        for key, (label, table) in _EPS.items():
            if table is None:
                info = uc.check_nnapi_partitions(model, require_fixed_input_sizes=True)
            else:
                info = uc.check_coreml_partitions(model, require_fixed_input_sizes=True, config_filename=table)
            result["eps"][key] = _partition_summary(info, label)
    return result


def verdict_sentence(key: str, r: dict) -> str:
    share = f"{r['supported_nodes']}/{r['nodes']} nodes in {r['partitions']} partition(s)"
    if r["verdict"] == "yes":
        return f"{r['ep']}: use it — {share}."
    if r["verdict"] == "maybe":
        return f"{r['ep']}: measure against the CPU EP — {share}."
    reasons = []
    if r["nodes_unsupported_by_dynamic_shape"]:
        reasons.append(f"{r['nodes_unsupported_by_dynamic_shape']} node(s) need fixed shapes")
    if r["unsupported_ops"]:
        reasons.append("unsupported ops: " + ", ".join(r["unsupported_ops"]))
    if r["partitions"] > 2:
        reasons.append("too many partitions (each switch copies data between EP and CPU)")
    why = "; ".join(reasons) or "too few nodes supported"
    return f"{r['ep']}: use the CPU EP (or XNNPACK) instead — {share}; {why}."


def build_mobile(
    model_path: Path, out_dir: Path, feeds: dict[str, np.ndarray], cfg: MobileConfig | None = None
) -> dict:
    """Write the mobile files for ``model_path`` into ``out_dir`` (created; must not hold them yet) and
    return the analysis (also written as mobile.json). Nothing is left behind on failure."""
    import onnx
    import onnxruntime as ort

    from mmedge.runtime.options import session_options
    from mmedge.runtime.session import metadata_json, open_session, run

    cfg = cfg or MobileConfig()
    sess = open_session(model_path, "cpu")
    tok = metadata_json(sess, "mmedge.tokenizer") or {}
    graph = onnx.load(str(model_path), load_external_data=False)
    run(sess, feeds)  # inputs that do not fit the model are reported here, before any file is written
    from mmedge.runtime.shapes import sizes_from_feeds

    # every size left open, named before any file is written
    dims = fixed_dims(graph, cfg, tok.get("max_length"), sizes_from_feeds(sess, feeds))
    pad = {"input_ids": int(tok.get("pad_id", 0))}  # every other input pads with 0 (mask: padding)
    from mmedge.compress.quantize.graph import QUANTIZED_OPS

    quantized = bool(QUANTIZED_OPS & {node.op_type for node in graph.graph.node})

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mobile.", dir=out_dir))
    try:
        source = tmp / "model.onnx"
        shutil.copyfile(model_path, source)
        make_fixed(source, tmp / FIXED_ONNX, dims)
        open_session(tmp / FIXED_ONNX, "cpu")  # a fixed model that does not load is caught here, not on a phone
        level, level_note = "all", None
        written = convert_to_ort([source, tmp / FIXED_ONNX], tmp, cfg.target_platform)
        try:
            for path in written.values():
                ort_session(path)
        except MobileError as exc:
            # onnxruntime 1.32 saves QDQ fusion records for some static int8 graphs that it then cannot replay; at
            # the basic level no fusion is saved, the device runs the QDQ graph as written, and the results say so.
            if "runtime optimization" not in getattr(exc, "detail", str(exc)):
                raise
            for path in written.values():
                path.unlink()
            level = "basic"
            level_note = (
                "saved at the basic optimization level: onnxruntime could not replay the fusions it saved for this "
                "model at the default level (all), so the device runs it without them"
            )
            print(f"note: mobile: {level_note}.", file=sys.stderr, flush=True)
            written = convert_to_ort([source, tmp / FIXED_ONNX], tmp, cfg.target_platform, level)
            # the .ort files must reproduce the model as they run it: the .onnx at the same level, unfused
            sess = ort.InferenceSession(
                str(model_path), session_options(level=level), providers=["CPUExecutionProvider"]
            )
        source.unlink()
        parity = {
            ORT_FILE: check_ort(written["model.onnx"], sess, feeds, pad, cfg, quantized),
            FIXED_ORT: check_ort(written[FIXED_ONNX], sess, feeds, pad, cfg, quantized),
        }
        analysis = {"dynamic": usability(model_path), "fixed": usability(tmp / FIXED_ONNX)}
        from mmedge.bundle.manifest import sha256

        result = {
            "source": model_path.name,
            "source_sha256": sha256(model_path),
            "optimization_style": "runtime",
            "optimization_level": level,
            "optimization_note": level_note,
            "target_platform": cfg.target_platform,
            "session_config": SESSION_CONFIG,
            "fixed_dims": dims,
            "files": {
                name: {"bytes": (tmp / name).stat().st_size} for name in (ORT_FILE, FIXED_ONNX, FIXED_ORT, OPS_CONFIG)
            },
            "parity": parity,
            "analysis": analysis,
            "verdicts": {
                variant: {k: verdict_sentence(k, r) for k, r in a["eps"].items()} for variant, a in analysis.items()
            },
        }
        (tmp / ANALYSIS).write_text(json.dumps(result, indent=1))
        for name in (ORT_FILE, FIXED_ONNX, FIXED_ORT, OPS_CONFIG, ANALYSIS):
            (tmp / name).replace(out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


MOBILE_FILES = (ORT_FILE, FIXED_ONNX, FIXED_ORT, OPS_CONFIG, ANALYSIS)


@register_step(MobileConfig, MobileMetrics)
def mobile_step(cfg: MobileConfig, ctx: StepContext) -> StepResult:
    from mmedge.runtime.inputs import step_feeds

    feeds, source = step_feeds(ctx.artifact.path, ctx.recipe.data)
    result = build_mobile(ctx.artifact.path, ctx.out_dir, feeds, cfg)
    return StepResult(ctx.artifact, MobileMetrics.model_validate({**result, "inputs": source}))
