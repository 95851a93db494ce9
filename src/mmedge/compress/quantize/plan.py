"""Quantization by plan: which nodes of a model can be quantized, under which schemes, and ``quantize_plan``,
which applies a {node: scheme} plan (the static QDQ pass, then the dynamic pass). The quantize.* steps and
quantize.auto build their plans from these.

Facts these rest on (measured on this stack): ConvInteger is ~6x slower than float Conv, so the dynamic steps
leave Conv out unless asked; dynamic int8 turns LSTM into DynamicQuantizeLSTM, while ORT's QDQ quantizer has no
LSTM, so a static plan quantizes LSTM in its dynamic pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mmedge.compress.quantize.calibration import CalibrationConfig, calibration_method, quiet
from mmedge.compress.quantize.graph import copy_metadata, op_histogram, similarity_head
from mmedge.compress.saturation import saturation_free_file
from mmedge.errors import MmedgeError, brief, closest

SCHEMES = ("fp32", "int8-dynamic", "int8-static")
# What ORT's dynamic quantizer handles (IntegerOpsRegistry), plus Gemm via the MatMul rewrite.
DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "LSTM", "Gather", "Conv", "Attention", "EmbedLayerNormalization", "Transpose")
# Op types ORT's QDQ quantizer handles that are worth quantizing alone; element-wise ops ride along in QDQ fusion.
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm", "Gather", "Relu", "MaxPool", "AveragePool", "Concat", "Transpose")

# Fused transformer kernels (com.microsoft Attention, SkipLayerNormalization, ...) defeat ONNX shape inference;
# their outputs are float.
DYNAMIC_EXTRA_OPTIONS = {"MatMulConstBOnly": True, "DefaultTensorType": 1}  # onnx.TensorProto.FLOAT


TRANSFORMER_MATMULS_HELP = (
    "How a static plan quantizes the MatMuls of a branch that computes attention (a fused Attention kernel, what "
    "`optimize` writes for a transformer, or a Softmax over queries times keys). 'dynamic': int8 with activation "
    "ranges measured per call; the kernels around them (LayerNormalization, the attention, GELU) run in float, so a "
    "static QDQ MatMul quantizes its input and dequantizes its output on every call, which DynamicQuantizeMatMul "
    "does in one kernel. 'static': QDQ like the other op types."
)
# Fused attention kernels (com.microsoft), and the element-wise steps (scale, mask) between the product of queries
# and keys and the Softmax of an unfused attention.
ATTENTION_KERNELS = ("Attention", "MultiHeadAttention", "QAttention")
_SCORE_STEPS = ("Add", "Sub", "Mul", "Div", "Where", "Cast")


def static_scheme(node: dict, transformer_matmuls: str) -> str:
    """The scheme a static plan gives ``node`` (an entry of ``quantizable_nodes``) of an op type it quantizes
    statically: int8-dynamic for a MatMul of a branch that computes attention when ``transformer_matmuls`` says so."""
    if node["op"] == "MatMul" and node["attention"] and transformer_matmuls == "dynamic":
        return "int8-dynamic"
    return "int8-static"


def attention_branches(model, branches: dict[str, str]) -> set[str]:
    """The branches (``branches``: {node: branch}) of ``model`` (an onnx ModelProto) that compute attention: a
    fused kernel (ATTENTION_KERNELS), or a Softmax whose input comes, through element-wise steps (scale, mask), from a
    MatMul of two activations (queries times keys). A classifier's Softmax over logits is not attention."""
    graph = model.graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}

    def scores(tensor: str, hops: int = 4) -> bool:  # the tensor is a product of two activations, a few steps back
        node = producer.get(tensor)
        if node is None or hops == 0:
            return False
        if node.op_type in ("MatMul", "FusedMatMul"):
            return not any(i in consts for i in node.input[:2])
        return node.op_type in _SCORE_STEPS and any(scores(i, hops - 1) for i in node.input if i not in consts)

    return {
        branches.get(n.name, "other")
        for n in graph.node
        if n.op_type in ATTENTION_KERNELS or (n.op_type == "Softmax" and scores(n.input[0]))
    }


def check_op_types(value: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    """``value`` if every op type is one of ``known`` (and there is one); a config validator's ValueError otherwise."""
    for op in value:
        if op not in known:
            raise ValueError(f"unknown op type '{op}'{closest(op, list(known))}; quantizable: {', '.join(known)}")
    if not value:
        raise ValueError("needs at least one op type")
    return value


def quantizable_nodes(prepared: Path) -> list[dict]:
    """Nodes a plan can quantize: name, op type, branch, and whether that branch computes attention
    (``attention_branches``). MatMul/Conv/Gemm with a constant weight, LSTM, and Gather on a constant table
    (embeddings)."""
    import onnx

    from mmedge.runtime.branches import node_branches

    model = onnx.load(str(prepared))
    consts = {i.name for i in model.graph.initializer}
    branches = node_branches(model)
    attention = attention_branches(model, branches)
    keep_float = set(similarity_head(model))
    out = []
    for node in model.graph.node:
        op = node.op_type
        if node.name in keep_float:
            continue
        weighted = op in ("MatMul", "Conv", "Gemm", "Attention") and len(node.input) > 1 and node.input[1] in consts
        table = op == "Gather" and node.input[0] in consts
        if not (weighted or table or op == "LSTM"):
            continue
        branch = branches.get(node.name, "other")
        out.append({"node": node.name, "op": op, "branch": branch, "attention": branch in attention})
    return out


def riding_nodes(model, static: set[str], ranges: set[str]) -> list[str]:
    """Nodes of a convolutional tower that ride along with its statically quantized Convs: a ReLU/ReLU6 (``Relu``,
    ``Clip``) reading such a Conv, and a residual ``Add`` whose two inputs both come from such Convs or riders, where
    ``ranges`` (the calibrated tensors) holds every tensor they read and write. Quantized with them, onnxruntime folds
    the activation into the Conv's output scale and runs the Add as QLinearAdd; left float, each one dequantizes its
    inputs and quantizes its output again. Nothing outside the Convs' paths rides (masks, biases, a transformer's
    residual stream)."""
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    producer = {o: n for n in model.graph.node for o in n.output}
    quantized = static & convs
    riders = []

    def from_quantized(name: str) -> bool:
        return name in producer and producer[name].name in quantized

    for node in model.graph.node:  # topological order: a node's producers come first
        if node.op_type in ("Relu", "Clip"):
            data = [node.input[0]]
        elif node.op_type == "Add" and len(node.input) == 2:
            data = list(node.input)
        else:
            continue
        if all(from_quantized(i) for i in data) and all(t in ranges for t in (*data, *node.output)):
            riders.append(node.name)
            quantized.add(node.name)
    return riders


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
    static (QDQ) pass first, with the ranges in ``cache``, then the dynamic pass. Returns the op histogram and
    how many nodes each pass took."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    graph = onnx.load(str(prepared), load_external_data=False)
    nodes = {n.name: n.op_type for n in graph.graph.node}
    static = sorted(n for n, s in plan.items() if s == "int8-static")
    riders = []
    if static and cache is not None:
        riders = riding_nodes(graph, set(static), set(json.loads(Path(cache).read_text()).get("data", {})))
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
                    op_types_to_quantize=sorted({nodes[n] for n in (*static, *riders)}),
                    nodes_to_quantize=[*static, *riders],
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=calibration_method(calib),
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
                Path(current).replace(out)  # the static pass's output is the result (same folder: one rename)
            else:
                shutil.copyfile(prepared, out)
    except MmedgeError:
        raise
    except Exception as exc:
        raise MmedgeError(
            f"onnxruntime could not quantize {prepared.name} ({brief(exc, 160)}); leave the failing "
            "op type or node out."
        ) from None
    finally:
        out.with_name(out.stem + ".static.onnx").unlink(missing_ok=True)
    precision = "+".join(s for s in ("int8-static", "int8-dynamic") if s in plan.values()) or "fp32"
    copy_metadata(prepared, out, {"mmedge.precision": precision, "mmedge.plan": json.dumps(plan, sort_keys=True)})
    return {
        "ops": op_histogram(out),
        "static_nodes": len(static),
        "riding_nodes": len(riders),
        "dynamic_nodes": len(dynamic),
    }
