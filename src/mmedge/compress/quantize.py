"""ONNX Runtime quantization steps: dynamic int8 and float16. Each writes a new model and passes the
rewrite gate (parity with its input and test accuracy) before the next step sees it.

Facts these defaults rest on (measured on this stack): ConvInteger is ~6x slower than float Conv, so Conv
is left out of dynamic quantization unless asked for; dynamic int8 turns LSTM into DynamicQuantizeLSTM; ORT's
dynamic quantizer has no Gemm handler, so Gemm nodes are first rewritten as MatMul + Add to be quantized;
float16 gives no speed-up on CPU (it is a GPU target) and keeps float32 inputs and outputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mmedge.artifact import Artifact
from mmedge.compress.onnx_check import Tolerance, check_rewrite
from mmedge.compress.saturation import make_saturation_free, matmul_weights, saturation_free_file
from mmedge.errors import MmedgeError, closest
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step

# What ORT's dynamic quantizer handles (IntegerOpsRegistry), plus Gemm via the MatMul rewrite.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "LSTM", "Gather", "Conv", "Attention", "EmbedLayerNormalization", "Transpose")


# Fused transformer kernels (com.microsoft Attention, SkipLayerNormalization, ...) defeat ONNX shape inference;
# their outputs are float.
DYNAMIC_EXTRA_OPTIONS = {"MatMulConstBOnly": True, "DefaultTensorType": 1}  # onnx.TensorProto.FLOAT


def _check_op_types(value: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    for op in value:
        if op not in known:
            raise ValueError(f"unknown op type '{op}'{closest(op, list(known))}; quantizable: {', '.join(known)}")
    if not value:
        raise ValueError("needs at least one op type")
    return value


class DynamicQuantConfig(StepConfig):
    type: Literal["quantize.dynamic"] = "quantize.dynamic"
    op_types: tuple[str, ...] = Field(
        ("MatMul", "Gemm", "LSTM", "Gather"),
        description="Op types to quantize. "
        "Conv is left out by default: ConvInteger ran ~6x slower than float Conv here.",
    )
    per_channel: bool = Field(False, description="Per-channel weight scales (more faithful, larger scale tables).")
    reduce_range: bool = Field(
        False, description="7-bit weights everywhere; saturation_free keeps 8 bits where they cannot saturate."
    )
    saturation_free: bool = Field(
        True,
        description="int8 weight scales chosen so that ORT's u8s8 MatMul on x86 CPUs without VNNI (AVX2, AVX-512) "
        "cannot saturate its int16 pair sums (mmedge.compress.saturation); same graph, same speed. Off: ORT's "
        "max-abs scales, exact only on VNNI/ARM kernels (all-MiniLM-L6-v2 on AVX2: mean cosine 0.9917 off, 0.9921 on; "
        "after smoothing 0.9960 off, 0.9973 on).",
    )
    weight_type: Literal["int8", "uint8"] = Field(
        "int8",
        description="Signed int8 weights pair with uint8 activations in MatMulInteger (u8s8), the fast path on x86.",
    )
    smooth_alpha: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] | None = Field(
        None,
        description="Smooth activations into the weights first (SmoothQuant; mmedge.compress.smooth): 0.5 moves half "
        "the range, 1 all of it, 'auto' picks per activation the alpha whose simulated int8 output is closest to "
        "float. Off by default; on all-MiniLM-L6-v2 (saturation-free scales) the mean cosine to fp32 went from 0.9921 "
        "to 0.9973 (auto); 0.5 lowered it (0.979 with max-abs scales).",
    )
    outlier_channels: int = Field(
        0,
        ge=0,
        description="With smooth_alpha: per activation read only by MatMuls, this many input channels (the largest "
        "max|x| * max|w|) are multiplied in float by a small side MatMul and leave the int8 product, whose ranges "
        "they would set (LLM.int8()-style split; mmedge.compress.smooth). Costs a Gather, a k-row MatMul and an Add "
        "per split MatMul.",
    )
    keep_float: int = Field(
        0,
        ge=0,
        description="Accuracy-aware fallback: this many weight MatMuls stay float, those whose simulated int8 output "
        "(after smoothing) is furthest from float on the calibration rows. On all-MiniLM-L6-v2 with smoothing, keeping "
        "2 of 36 lifted the mean cosine to fp32 from 0.9973 to 0.9982 and nearest-neighbour agreement from 93.3 to "
        "93.7 % (float16 storage; 3.92x smaller than fp32 -> 3.73x); outlier_channels 4 reached 0.9983 / 96.0 % at "
        "3.91x.",
    )
    keep_float_storage: Literal["float16", "float32"] = Field(
        "float16",
        description="How keep_float weights are stored: float16 halves their size and is widened back to float32 "
        "when the session loads (ORT folds the Cast), so they still compute in float32.",
    )
    calibration_samples: int = Field(
        128,
        ge=1,
        description="smooth_alpha, keep_float: training-split samples whose activations set the smoothing and rank "
        "the MatMuls.",
    )
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate against the input model.")

    @field_validator("op_types")
    @classmethod
    def _ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_op_types(v, DYNAMIC_OP_TYPES)

    @model_validator(mode="after")
    def _outliers_need_smoothing(self):
        if self.outlier_channels and self.smooth_alpha is None:
            raise ValueError("outlier_channels splits the activations that smoothing rewrites; set smooth_alpha too")
        return self


class Fp16Config(StepConfig):
    type: Literal["quantize.fp16"] = "quantize.fp16"
    keep_io_types: bool = Field(True, description="Keep float32 inputs and outputs so an app feeds the same arrays.")
    op_block_list: tuple[str, ...] = Field((), description="Op types kept in float32 (besides ORT's defaults).")
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate against the input model.")


def copy_metadata(src: Path, dst: Path, extra: dict[str, str] | None = None) -> None:
    """Carry the mmedge metadata (labels, tokenizer, preprocessing, ...) over to a rewritten model."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    meta.update(extra or {})
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(dst), save_as_external_data=False)


def gemm_to_matmul(model):
    """Rewrite Gemm(A, B, C) with a constant B as MatMul(A, B') + C, in place; returns how many were rewritten.

    ORT's dynamic quantizer quantizes MatMul but has no Gemm handler, so without this the fusion and head
    Linear layers (exported as Gemm) would silently stay float.
    """
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    new_nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            new_nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        w_name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight.copy(), w_name))
        mm_out = f"{node.output[0]}_matmul"
        has_bias = len(node.input) > 2 and node.input[2]
        new_nodes.append(
            helper.make_node(
                "MatMul", [node.input[0], w_name], [mm_out if has_bias else node.output[0]], name=f"{node.name}_MatMul"
            )
        )
        if has_bias:
            new_nodes.append(
                helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add")
            )
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    return rewritten


def op_histogram(model) -> dict[str, int]:
    """{op type: count} of a model file or a loaded ModelProto, most common first."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def _pre_processed(src: Path, tmp: Path):
    """ORT's quantization pre-processing (shape inference + constant folding), else the model as it is.

    The exporter builds the LSTM's gate weights with Slice/Concat of initializers; folded, they become the
    constant W/R inputs that the LSTM quantizer needs (without it the LSTM silently stays float). Pre-processing
    fails on some transformer graphs; then the reason is recorded and the unprocessed model is used.
    """
    import os
    import tempfile

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, tmp = Path(src).resolve(), Path(tmp).resolve()
    here = os.getcwd()
    try:
        # When its symbolic shape inference fails, ORT dumps sym_shape_infer_temp.onnx (+ .data files) into the
        # working directory; run it from a scratch folder so nothing lands in the user's.
        with tempfile.TemporaryDirectory(prefix="mmedge-preprocess-") as scratch:
            os.chdir(scratch)
            try:
                quant_pre_process(str(src), str(tmp))
            finally:
                os.chdir(here)
        return onnx.load(str(tmp)), "applied"
    except Exception as exc:
        return onnx.load(str(src)), f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        tmp.unlink(missing_ok=True)


def quantize_dynamic_model(src: Path, out: Path, cfg: DynamicQuantConfig, data_cfg=None, feeds=None) -> dict:
    """Dynamic int8 ``src`` -> ``out`` as ``cfg`` says. Smoothing and keep_float calibrate on ``feeds`` (model
    inputs) when given, else on a draw from ``data_cfg``'s training split."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, pre_process = _pre_processed(src, out.with_name(out.stem + ".pre.onnx"))
    rewritten = gemm_to_matmul(model) if "Gemm" in cfg.op_types else 0
    prepared = out.with_name(out.stem + ".prepared.onnx")
    onnx.save_model(model, str(prepared))
    smoothing, kept_float = None, []
    if (cfg.smooth_alpha is not None or cfg.keep_float) and feeds is None:
        feeds = calibration_feeds(src, CalibrationConfig(samples=cfg.calibration_samples), data_cfg)
    if cfg.smooth_alpha is not None:
        from mmedge.compress.smooth import smooth_matmuls

        alpha = None if cfg.smooth_alpha == "auto" else cfg.smooth_alpha
        smoothing = smooth_matmuls(prepared, prepared, feeds, alpha=alpha, outlier_channels=cfg.outlier_channels)
        model = onnx.load(str(prepared))
    side = smoothing.get("outlier_matmuls", []) if smoothing else []
    if cfg.keep_float:
        from mmedge.compress.smooth import int8_sensitive_matmuls

        head = set(similarity_head(model)) | set(side)  # float anyway
        kept_float = [n for n in int8_sensitive_matmuls(prepared, feeds) if n not in head][: cfg.keep_float]
    ops = [op for op in cfg.op_types if op != "Gemm"] + (["MatMul"] if "Gemm" in cfg.op_types else [])
    try:
        quantize_dynamic(
            prepared,
            out,
            op_types_to_quantize=sorted(set(ops)),
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            weight_type=QuantType.QInt8 if cfg.weight_type == "int8" else QuantType.QUInt8,
            nodes_to_exclude=similarity_head(model) + kept_float + side,
            extra_options=DYNAMIC_EXTRA_OPTIONS,
        )
    except Exception as exc:
        raise MmedgeError(
            f"onnxruntime could not quantize {src} dynamically ({str(exc).splitlines()[0][:160]}); narrow op_types."
        ) from None
    finally:
        prepared.unlink(missing_ok=True)
    safe = cfg.saturation_free and cfg.weight_type == "int8" and not cfg.reduce_range
    half = set(kept_float) if cfg.keep_float_storage == "float16" else set()
    requantized = 0
    if safe or half:  # both rewrites in one pass over the quantized file
        quantized = onnx.load(str(out))
        requantized = make_saturation_free(quantized, matmul_weights(model)) if safe else 0
        if requantized + _float16_weights(quantized, half):
            tmp = out.with_name(out.name + ".tmp")
            onnx.save_model(quantized, str(tmp))
            tmp.replace(out)
    copy_metadata(src, out, {"mmedge.precision": "int8-dynamic"})
    info = {
        "gemm_rewritten": rewritten,
        "pre_process": pre_process,
        "saturation_free_weights": requantized,
        "ops": op_histogram(out),
    }
    if cfg.keep_float:
        info["float_matmuls"] = kept_float
    return {**info, "smoothing": smoothing} if smoothing else info


def _float16_weights(model, nodes: set[str]) -> int:
    """Store, in place, the constant weights of the MatMuls ``nodes`` of ``model`` as float16 behind a Cast to
    float32 (the session folds the Cast when it loads, so the MatMuls still run in float32). Returns how many."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    replaced = set()
    for i, node in reversed(list(enumerate(graph.node))):
        weight = consts.get(node.input[1]) if node.name in nodes and node.op_type == "MatMul" else None
        if weight is None or weight.data_type != onnx.TensorProto.FLOAT or weight.name in replaced:
            continue
        replaced.add(weight.name)
        half = numpy_helper.to_array(weight).astype(np.float16)
        graph.initializer.append(numpy_helper.from_array(half, f"{weight.name}_fp16"))
        graph.node.insert(
            i,
            helper.make_node(
                "Cast", [f"{weight.name}_fp16"], [f"{weight.name}_fp32"], name=f"{node.name}_weight_cast", to=1
            ),
        )
        node.input[1] = f"{weight.name}_fp32"
    used = {name for n in graph.node for name in n.input}
    for name in replaced - used:
        graph.initializer.remove(consts[name])
    return len(replaced)


def fp16_model(src: Path, out: Path, cfg: Fp16Config) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(src)), keep_io_types=cfg.keep_io_types, op_block_list=list(cfg.op_block_list) or None
    )
    onnx.save_model(model, str(out), save_as_external_data=False)
    copy_metadata(src, out, {"mmedge.precision": "fp16"})
    return {"ops": op_histogram(out)}


def _onnx_step(name: str, rewrite, cfg, ctx) -> StepResult:
    src = ctx.artifact.path
    out = ctx.out_dir / "model.onnx"
    info = rewrite(src, out, cfg, ctx.recipe.data) if rewrite is quantize_dynamic_model else rewrite(src, out, cfg)
    metrics = check_rewrite(name, src, out, ctx.recipe.data, cfg.tolerance)
    metrics.update(info)
    return StepResult(Artifact(out, "onnx", ctx.artifact.spec, (*ctx.artifact.lineage, name)), metrics)


@register_step(DynamicQuantConfig)
def quantize_dynamic_step(cfg: DynamicQuantConfig, ctx: StepContext) -> StepResult:
    return _onnx_step("quantize.dynamic", quantize_dynamic_model, cfg, ctx)


@register_step(Fp16Config)
def quantize_fp16_step(cfg: Fp16Config, ctx: StepContext) -> StepResult:
    return _onnx_step("quantize.fp16", fp16_model, cfg, ctx)


# --------------------------------------------------------------------------------------------------------------
# Static (QDQ) quantization with calibration, and quantization by plan (a scheme per node)
# --------------------------------------------------------------------------------------------------------------

# Op types ORT's QDQ quantizer handles that are worth quantizing alone; element-wise ops ride along in QDQ fusion.
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm", "Gather", "Relu", "MaxPool", "AveragePool", "Concat", "Transpose")
SCHEMES = ("fp32", "int8-dynamic", "int8-static")


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax",
        description="Activation range estimate: min/max seen; the KL-optimal range (entropy); or a percentile of "
        "|x|. Entropy and percentile get `num_bins` (ORT's quantize_static would silently use its default).",
    )
    samples: int = Field(256, ge=1, description="Calibration samples drawn (seeded) from the training split.")
    num_bins: int = Field(2048, ge=128, description="Histogram bins for entropy and percentile calibration.")
    num_quantized_bins: int = Field(128, ge=2, description="Quantized bins the entropy search compares against.")
    percentile: float = Field(99.999, gt=90, le=100, description="Percentile of |x| kept by 'percentile'.")
    batch_size: int = Field(32, ge=1, description="Samples per calibration run.")
    chunk: int = Field(
        128,
        ge=1,
        description="Samples whose intermediate outputs are held at once; histograms are merged between chunks, so "
        "memory stays bounded whatever `samples` is.",
    )
    data: Path | None = Field(
        None, description="An .npz of model inputs (image, input_ids, attention_mask) to calibrate on instead."
    )
    seed: int = Field(0, description="Seeds the draw from the training split.")


class StaticQuantConfig(StepConfig):
    type: Literal["quantize.static"] = "quantize.static"
    op_types: tuple[str, ...] = Field(
        ("Conv", "MatMul", "Gemm"),
        description="Op types quantized statically (QDQ). Additive masks and other element-wise paths stay float: "
        "quantizing a large-negative attention mask ruins calibration.",
    )
    dynamic_op_types: tuple[str, ...] = Field(
        ("LSTM", "Gather"),
        description="Op types quantized dynamically after the static pass: ORT's QDQ quantizer has no LSTM, so "
        "without this the LSTM stays float; Gather stores the embedding table in int8.",
    )
    per_channel: bool = Field(True, description="One scale per output channel of each weight (more faithful).")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 activations with int8 weights (u8s8) is the fast path on x86."
    )
    weight_only_const: bool = Field(
        True, description="Quantize MatMuls only where one input is a weight (not activation x activation)."
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="How ranges are estimated.")
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate against the input model.")

    @field_validator("op_types")
    @classmethod
    def _ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_op_types(v, STATIC_OP_TYPES)

    @field_validator("dynamic_op_types")
    @classmethod
    def _dyn_ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_op_types(v, DYNAMIC_OP_TYPES) if v else v


def calibration_feeds(path: Path, cfg: CalibrationConfig, data_cfg) -> dict[str, np.ndarray]:
    """Model inputs to calibrate on: a seeded draw from the training split, stratified by label, or the given .npz."""
    from mmedge.runtime.evaluate import ModelInputs, feeds_for, model_data_config
    from mmedge.runtime.inputs import npz_feeds
    from mmedge.runtime.session import open_session

    if cfg.data is not None:
        feeds = npz_feeds(cfg.data)
    else:
        from mmedge.data import load_dataset

        sess = open_session(path)
        from mmedge.data.user import stratified_subset

        split = load_dataset(model_data_config(sess, data_cfg)).train
        rows = stratified_subset(split.labels, cfg.samples, cfg.seed)  # every answer in its share, seeded
        feeds = feeds_for(split, ModelInputs.of(sess), rows)
    n = min((len(v) for v in feeds.values()), default=0)
    if n == 0:
        raise MmedgeError("the calibration set is empty; give calibration.data an .npz with samples, or samples >= 1.")
    for name, value in feeds.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise MmedgeError(
                f"the calibration input '{name}' contains NaN or inf; clean the calibration data (they would make "
                "every range infinite)."
            )
    return {k: v[: cfg.samples] for k, v in feeds.items()}


class _Reader:
    """onnxruntime CalibrationDataReader over in-memory feeds, in batches."""

    def __init__(self, feeds: dict[str, np.ndarray], batch_size: int):
        n = len(next(iter(feeds.values())))
        self.batches = [{k: v[s : s + batch_size] for k, v in feeds.items()} for s in range(0, n, batch_size)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self):
        self.i = 0


@contextlib.contextmanager
def quiet():
    """ORT's quantization tools print progress and log advice on the root logger; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def calibrate(prepared: Path, feeds: dict[str, np.ndarray], cfg: CalibrationConfig, op_types, cache: Path) -> Path:
    """Activation ranges of ``prepared`` written to ``cache`` (ORT's calibration cache format), chunk by chunk."""
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"num_bins": cfg.num_bins, "num_quantized_bins": cfg.num_quantized_bins, "percentile": cfg.percentile}
    n = len(next(iter(feeds.values())))
    with tempfile.TemporaryDirectory(prefix="mmedge-calib-") as tmp:
        calibrator = create_calibrator(
            prepared,
            list(op_types),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=_method(cfg),
            extra_options=options,
        )
        with quiet():
            for start in range(0, n, cfg.chunk):  # bounded memory: intermediate outputs of one chunk at a time
                chunk = {k: v[start : start + cfg.chunk] for k, v in feeds.items()}
                calibrator.collect_data(_Reader(chunk, cfg.batch_size))
            ranges = calibrator.compute_data()
    for name, r in ranges.data.items():
        if not np.isfinite(np.asarray(r.range_value, dtype=np.float64)).all():
            raise MmedgeError(
                f"calibration gave tensor '{name}' a non-finite range; a large-negative mask or overflow feeds it — "
                "leave that op type out of op_types."
            )
    save_tensors_data(ranges, cache)
    return cache


def _method(cfg: CalibrationConfig):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}.get(
        cfg.method, CalibrationMethod.Percentile
    )


def prepare(src: Path, out: Path) -> Path:
    """The model every plan starts from: ORT pre-processing, Gemm as MatMul + Add, mmedge metadata kept."""
    import onnx

    model, pre_process = _pre_processed(src, out.with_name(out.stem + ".pre.onnx"))
    gemm_to_matmul(model)
    del model.metadata_props[:]
    for p in onnx.load(str(src), load_external_data=False).metadata_props:
        model.metadata_props.add(key=p.key, value=p.value)
    model.metadata_props.add(key="mmedge.pre_process", value=pre_process)
    onnx.save_model(model, str(out), save_as_external_data=False)
    return out


def similarity_head(model) -> list[str]:
    """Zero-shot dual encoders: the MatMul that scores the image embedding against the label embeddings stays in
    float. It is classes x D — quantizing it saves nothing — and u8s8 MatMulInteger on a scaled unit vector lost
    0.4 logits on a tiny CLIP (measured), which would also break the shipped label_embeddings.npy path."""
    meta = {p.key: p.value for p in model.metadata_props}
    if "zero-shot" not in meta.get("mmedge.task", ""):
        return []
    producer = {o: n for n in model.graph.node for o in n.output}
    node, seen = producer.get("logits"), []
    while node is not None and node.name not in seen:  # back from the logits through scale and casts
        seen.append(node.name)
        if node.op_type == "MatMul":
            return [node.name]
        node = next((producer[i] for i in node.input if i in producer), None)
    return []


def quantizable_nodes(prepared: Path) -> list[dict]:
    """Nodes a plan can quantize: name, op type, branch. MatMul/Conv/Gemm with a constant weight, LSTM, and
    Gather on a constant table (embeddings)."""
    import onnx

    from mmedge.compress.branches import node_branches

    model = onnx.load(str(prepared))
    consts = {i.name for i in model.graph.initializer}
    branches = node_branches(model)
    keep_float = set(similarity_head(model))
    out = []
    for node in model.graph.node:
        op = node.op_type
        if node.name in keep_float:
            continue
        weighted = op in ("MatMul", "Conv", "Gemm") and len(node.input) > 1 and node.input[1] in consts
        table = op == "Gather" and node.input[0] in consts
        if not (weighted or table or op == "LSTM"):
            continue
        out.append({"node": node.name, "op": op, "branch": branches.get(node.name, "other")})
    return out


def quantize_plan(
    prepared: Path,
    out: Path,
    plan: dict[str, str],
    cache: Path | None,
    calib: CalibrationConfig,
    per_channel: bool = True,
    activation_type: str = "uint8",
    weight_only_const: bool = True,
) -> dict:
    """Quantize ``prepared`` node by node as ``plan`` says ({node: scheme}; nodes not named stay float): the
    static (QDQ) pass first, then the dynamic pass. Returns the op histogram and what each pass took."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    nodes = {n.name: n.op_type for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    static = sorted(n for n, s in plan.items() if s == "int8-static")
    dynamic = sorted(n for n, s in plan.items() if s == "int8-dynamic")
    current = prepared
    try:
        with quiet():
            if static:
                if cache is None:
                    raise MmedgeError("static quantization needs calibration ranges; this is a bug in the caller.")
                mid = out.with_name(out.stem + ".static.onnx")
                quantize_static(
                    current,
                    mid,
                    None,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=sorted({nodes[n] for n in static}),
                    nodes_to_quantize=static,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=_method(calib),
                    calibration_cache_path=cache,
                    extra_options={"WeightSymmetric": True, "MatMulConstBOnly": weight_only_const},
                )
                current = mid
            if dynamic:
                quantize_dynamic(
                    current,
                    out,
                    op_types_to_quantize=sorted({nodes[n] for n in dynamic}),
                    nodes_to_quantize=dynamic,
                    per_channel=per_channel,
                    weight_type=QuantType.QInt8,
                    extra_options=DYNAMIC_EXTRA_OPTIONS,
                )
                saturation_free_file(out, current)
            elif current != prepared:
                Path(current).replace(out)
            else:
                shutil.copyfile(prepared, out)
    except MmedgeError:
        raise
    except Exception as exc:
        raise MmedgeError(
            f"onnxruntime could not quantize {prepared.name} ({str(exc).splitlines()[0][:160]}); leave the failing "
            "op type or node out."
        ) from None
    finally:
        out.with_name(out.stem + ".static.onnx").unlink(missing_ok=True)
    precision = "+".join(s for s in ("int8-static", "int8-dynamic") if s in plan.values()) or "fp32"
    copy_metadata(prepared, out, {"mmedge.precision": precision, "mmedge.plan": json.dumps(plan, sort_keys=True)})
    return {"ops": op_histogram(out), "static_nodes": len(static), "dynamic_nodes": len(dynamic)}


def static_plan(nodes: list[dict], op_types, dynamic_op_types) -> dict[str, str]:
    ops = set(op_types) | ({"MatMul"} if "Gemm" in op_types else set())  # Gemm was rewritten as MatMul
    plan = {}
    for n in nodes:
        if n["op"] in ops and n["op"] != "LSTM":
            plan[n["node"]] = "int8-static"
        elif n["op"] in dynamic_op_types:
            plan[n["node"]] = "int8-dynamic"
    return plan


def quantize_static_model(src: Path, out: Path, cfg: StaticQuantConfig, data_cfg=None) -> dict:
    prepared = prepare(src, out.with_name("prepared.onnx"))
    cache = out.with_name("calibration.json")
    try:
        nodes = quantizable_nodes(prepared)
        plan = static_plan(nodes, cfg.op_types, cfg.dynamic_op_types)
        if not any(s == "int8-static" for s in plan.values()):
            raise MmedgeError(
                f"the model has no {'/'.join(cfg.op_types)} node with a constant weight to quantize statically; "
                "choose other op_types."
            )
        feeds = calibration_feeds(src, cfg.calibration, data_cfg)
        calibrate(prepared, feeds, cfg.calibration, sorted({n["op"] for n in nodes} | set(cfg.op_types)), cache)
        info = quantize_plan(
            prepared, out, plan, cache, cfg.calibration, cfg.per_channel, cfg.activation_type, cfg.weight_only_const
        )
    finally:
        prepared.unlink(missing_ok=True)
    copy_metadata(src, out, {"mmedge.precision": "int8-static", "mmedge.plan": json.dumps(plan, sort_keys=True)})
    return {
        **info,
        "calibration": {**cfg.calibration.model_dump(mode="json"), "samples_used": len(feeds["image"])},
        "calibration_ranges": cache.name,
    }


@register_step(StaticQuantConfig)
def quantize_static_step(cfg: StaticQuantConfig, ctx: StepContext) -> StepResult:
    return _onnx_step("quantize.static", lambda s, o, c: quantize_static_model(s, o, c, ctx.recipe.data), cfg, ctx)
