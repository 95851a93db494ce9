"""ONNX Runtime quantization steps: dynamic int8 and float16. Each writes a new model and passes the
rewrite gate (parity with its input and test accuracy) before the next step sees it.

Facts these defaults rest on (measured on this stack): ConvInteger is ~6x slower than float Conv, so Conv
is left out of dynamic quantization unless asked for; dynamic int8 turns LSTM into DynamicQuantizeLSTM; ORT's
dynamic quantizer has no Gemm handler, so Gemm nodes are first rewritten as MatMul + Add to be quantized;
float16 gives no speed-up on CPU (it is a GPU target) and keeps float32 inputs and outputs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from mmedge.artifact import Artifact, StepResult
from mmedge.compress.onnx_check import Tolerance, check_rewrite
from mmedge.errors import MmedgeError, closest
from mmedge.recipe import StepConfig, register_step

# What ORT's dynamic quantizer handles (IntegerOpsRegistry), plus Gemm via the MatMul rewrite.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "LSTM", "Gather", "Conv", "Attention", "EmbedLayerNormalization", "Transpose")


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
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI where 8-bit can saturate.")
    weight_type: Literal["int8", "uint8"] = Field(
        "int8",
        description="Signed int8 weights pair with uint8 activations in MatMulInteger (u8s8), the fast path on x86.",
    )
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate against the input model.")

    @field_validator("op_types")
    @classmethod
    def _ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _check_op_types(v, DYNAMIC_OP_TYPES)


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


def op_histogram(path: Path) -> dict[str, int]:
    import onnx

    return dict(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node).most_common())


def _pre_processed(src: Path, tmp: Path):
    """ORT's quantization pre-processing (shape inference + constant folding), else the model as it is.

    The exporter builds the LSTM's gate weights with Slice/Concat of initializers; folded, they become the
    constant W/R inputs that the LSTM quantizer needs (without it the LSTM silently stays float). Pre-processing
    fails on some transformer graphs; then the reason is recorded and the unprocessed model is used.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(tmp))
        return onnx.load(str(tmp)), "applied"
    except Exception as exc:
        return onnx.load(str(src)), f"skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    finally:
        tmp.unlink(missing_ok=True)


def quantize_dynamic_model(src: Path, out: Path, cfg: DynamicQuantConfig) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, pre_process = _pre_processed(src, out.with_name(out.stem + ".pre.onnx"))
    rewritten = gemm_to_matmul(model) if "Gemm" in cfg.op_types else 0
    prepared = out.with_name(out.stem + ".prepared.onnx")
    onnx.save_model(model, str(prepared))
    ops = [op for op in cfg.op_types if op != "Gemm"] + (["MatMul"] if "Gemm" in cfg.op_types else [])
    try:
        quantize_dynamic(
            prepared,
            out,
            op_types_to_quantize=sorted(set(ops)),
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            weight_type=QuantType.QInt8 if cfg.weight_type == "int8" else QuantType.QUInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as exc:
        raise MmedgeError(
            f"onnxruntime could not quantize {src} dynamically ({str(exc).splitlines()[0][:160]}); narrow op_types."
        ) from None
    finally:
        prepared.unlink(missing_ok=True)
    copy_metadata(src, out, {"mmedge.precision": "int8-dynamic"})
    return {"gemm_rewritten": rewritten, "pre_process": pre_process, "ops": op_histogram(out)}


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
    info = rewrite(src, out, cfg)
    metrics = check_rewrite(name, src, out, ctx.recipe.data, cfg.tolerance)
    metrics.update(info)
    return StepResult(Artifact(out, "onnx", ctx.artifact.spec, (*ctx.artifact.lineage, name)), metrics)


@register_step(DynamicQuantConfig, consumes="onnx", produces="onnx")
def quantize_dynamic_step(cfg: DynamicQuantConfig, ctx) -> StepResult:
    return _onnx_step("quantize.dynamic", quantize_dynamic_model, cfg, ctx)


@register_step(Fp16Config, consumes="onnx", produces="onnx")
def quantize_fp16_step(cfg: Fp16Config, ctx) -> StepResult:
    return _onnx_step("quantize.fp16", fp16_model, cfg, ctx)
