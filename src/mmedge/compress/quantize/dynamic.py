"""The ``quantize.dynamic`` step: ONNX Runtime's dynamic int8 (weights stored int8, activations quantized on the
fly), optionally after activation smoothing, with saturation-free weight scales and an accuracy-aware float
fallback. The result passes the rewrite gate (parity with its input and accuracy) before the next step sees it.

Facts these defaults rest on (measured on this stack): ConvInteger is ~6x slower than float Conv, so Conv is left
out unless asked for; dynamic int8 turns LSTM into DynamicQuantizeLSTM; ORT's dynamic quantizer has no Gemm
handler, so Gemm nodes are first rewritten as MatMul + Add (``graph.gemm_to_matmul``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from mmedge.compress.onnx_check import Tolerance, gated_result
from mmedge.compress.quantize.calibration import CalibrationConfig, calibration_feeds, quiet
from mmedge.compress.quantize.graph import (
    QUANTIZED_OPS,
    copy_metadata,
    gemm_to_matmul,
    op_histogram,
    pre_processed,
    residual_sums,
    similarity_head,
)
from mmedge.compress.quantize.plan import DYNAMIC_EXTRA_OPTIONS, DYNAMIC_OP_TYPES, check_op_types
from mmedge.compress.saturation import make_saturation_free, matmul_weights
from mmedge.errors import MmedgeError, brief
from mmedge.results import DynamicQuantMetrics
from mmedge.runtime.session import save_onnx
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step


class DynamicQuantConfig(StepConfig):
    type: Literal["quantize.dynamic"] = "quantize.dynamic"
    op_types: tuple[str, ...] = Field(
        ("MatMul", "Gemm", "LSTM", "Gather", "Attention"),
        description="Op types to quantize (Attention: the fused kernel `optimize` writes, as QAttention). "
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
        "the range, 1 all of it, 'auto' picks per activation the alpha whose simulated int8 output (weights "
        "quantized as this step configures them) is closest to float. Off by default; on all-MiniLM-L6-v2 "
        "(saturation-free scales) the mean cosine to fp32 went from 0.9921 to 0.9973 (auto); 0.5 lowered it (0.979 "
        "with max-abs scales).",
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
    calibration_data: Path | None = Field(
        None,
        description="smooth_alpha, keep_float: an .npz of model inputs (one array per input) to calibrate on instead "
        "of the training split; a model from elsewhere (onnx:) takes the --inputs file.",
    )
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate against the input model.")

    @field_validator("op_types")
    @classmethod
    def _ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_op_types(v, DYNAMIC_OP_TYPES)

    @model_validator(mode="after")
    def _outliers_need_smoothing(self):
        if self.outlier_channels and self.smooth_alpha is None:
            raise ValueError("outlier_channels splits the activations that smoothing rewrites; set smooth_alpha too")
        return self


def weight_quantizer(cfg: DynamicQuantConfig):
    """The weight quantization ``cfg`` configures, for the smoothing and keep_float simulations."""
    from mmedge.compress.smooth import WeightQuantizer

    return WeightQuantizer(cfg.per_channel, cfg.saturation_free, cfg.reduce_range, cfg.weight_type)


def quantize_dynamic_model(src: Path, out: Path, cfg: DynamicQuantConfig, data_cfg=None, feeds=None) -> dict:
    """Dynamic int8 ``src`` -> ``out`` as ``cfg`` says. Smoothing and keep_float calibrate on ``feeds`` (model
    inputs) when given, else on a draw from ``data_cfg``'s training split."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, pre_process = pre_processed(src, out.with_name(out.stem + ".pre.onnx"))
    rewritten = gemm_to_matmul(model) if "Gemm" in cfg.op_types else 0
    residual_sums(model)  # as prepare() does for the other quantizers
    prepared = out.with_name(out.stem + ".prepared.onnx")
    onnx.save_model(model, str(prepared))
    smoothing, kept_float = None, []
    if (cfg.smooth_alpha is not None or cfg.keep_float) and feeds is None:
        calibration = CalibrationConfig(samples=cfg.calibration_samples, data=cfg.calibration_data)
        feeds = calibration_feeds(src, calibration, data_cfg)
    if cfg.smooth_alpha is not None:
        from mmedge.compress.smooth import smooth_matmuls

        alpha = None if cfg.smooth_alpha == "auto" else cfg.smooth_alpha
        smoothing = smooth_matmuls(
            prepared, prepared, feeds, alpha=alpha, outlier_channels=cfg.outlier_channels, weights=weight_quantizer(cfg)
        )
        model = onnx.load(str(prepared))
    side = smoothing.get("outlier_matmuls", []) if smoothing else []
    if cfg.keep_float:
        from mmedge.compress.smooth import int8_sensitive_matmuls

        head = set(similarity_head(model)) | set(side)  # float anyway
        ranked = int8_sensitive_matmuls(prepared, feeds, weights=weight_quantizer(cfg))
        kept_float = [n for n in ranked if n not in head][: cfg.keep_float]
    ops = [op for op in cfg.op_types if op != "Gemm"] + (["MatMul"] if "Gemm" in cfg.op_types else [])
    try:
        with quiet():  # ORT's advice to pre-process: mmedge did, or records why not (metrics.pre_process)
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
            f"onnxruntime could not quantize {src} dynamically ({brief(exc, 160)}); narrow op_types."
        ) from None
    finally:
        prepared.unlink(missing_ok=True)
    safe = cfg.saturation_free and cfg.weight_type == "int8" and not cfg.reduce_range
    half = set(kept_float) if cfg.keep_float_storage == "float16" else set()
    requantized = 0
    if safe or half:  # both rewrites in one pass over the quantized file
        quantized = onnx.load(str(out))
        requantized = make_saturation_free(quantized, matmul_weights(model)) if safe else 0
        if requantized + float16_weights(quantized, half):
            save_onnx(quantized, out)
    info = {"gemm_rewritten": rewritten, "pre_process": pre_process, "saturation_free_weights": requantized}
    if not QUANTIZED_OPS & set(op_histogram(out)):
        # e.g. a convolutional model: dynamic int8 of its op types found no node; the model goes on unchanged
        shutil.copyfile(src, out)
        held = ", ".join(f"{n} {op}" for op, n in list(op_histogram(src).items())[:4])
        info["nothing_quantized"] = (
            f"dynamic int8 found no {'/'.join(sorted(set(ops)))} node to quantize in the model (its most common ops: "
            f"{held}), so it goes on unchanged; a convolutional model is quantized by quantize.static, calibrated "
            "on real inputs (--inputs FILE.npz)"
        )
        print(f"note: quantize.dynamic: {info['nothing_quantized']}.", file=sys.stderr, flush=True)
    else:
        copy_metadata(src, out, {"mmedge.precision": "int8-dynamic"})
    info["ops"] = op_histogram(out)
    if cfg.keep_float:
        info["float_matmuls"] = kept_float
    return {**info, "smoothing": smoothing} if smoothing else info


def float16_weights(model, nodes: set[str]) -> int:
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


@register_step(DynamicQuantConfig, DynamicQuantMetrics)
def quantize_dynamic_step(cfg: DynamicQuantConfig, ctx: StepContext) -> StepResult:
    src, out = ctx.artifact.path, ctx.out_dir / "model.onnx"
    return gated_result(
        ctx,
        "quantize.dynamic",
        out,
        cfg.tolerance,
        DynamicQuantMetrics,
        quantize_dynamic_model(src, out, cfg, ctx.recipe.data),
    )
