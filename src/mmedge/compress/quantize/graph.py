"""Graph helpers the quantization steps share: what a model holds (op histogram), carrying mmedge's metadata over
to a rewritten model, and the model every quantizer starts from (ORT pre-processing, Gemm as MatMul + Add).

Facts these rest on (measured on this stack): ORT's dynamic quantizer has no Gemm handler, so Gemm nodes are
first rewritten as MatMul + Add to be quantized; ORT's pre-processing folds the exporter's Slice/Concat of LSTM
gate weights into the constants its LSTM quantizer needs, and fails on some transformer graphs.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

from mmedge.errors import MmedgeError
from mmedge.runtime.session import model_metadata, save_onnx, set_metadata

# Ops that mark a model as quantized (dynamic int8, QDQ, or the integer ops ORT fuses them into).
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
        "DynamicQuantizeMatMul",
    }
)


def op_histogram(model) -> dict[str, int]:
    """{op type: count} of a model file or a loaded ModelProto, most common first."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def copy_metadata(src: Path, dst: Path, extra: dict[str, str] | None = None) -> None:
    """Carry the mmedge metadata (labels, tokenizer, preprocessing, ...) of ``src`` over to the rewritten model file
    ``dst`` (rewritten atomically), with ``extra`` added."""
    import onnx

    model = onnx.load(str(dst))
    set_metadata(model, {**model_metadata(src), **(extra or {})})
    save_onnx(model, dst)


def gemm_to_matmul(model) -> int:
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


def pre_processed(src: Path, tmp: Path):
    """ORT's quantization pre-processing (shape inference + constant folding) of ``src``, else the model as it is;
    returns (ModelProto, "applied" or "skipped: reason"). ``tmp`` is a scratch path, removed afterwards.

    The exporter builds the LSTM's gate weights with Slice/Concat of initializers; folded, they become the
    constant W/R inputs that the LSTM quantizer needs (without it the LSTM silently stays float). Pre-processing
    fails on some transformer graphs; then the reason is recorded and the unprocessed model is used.
    """
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
        model, note = onnx.load(str(tmp)), "applied"
    except Exception as exc:
        from mmedge.errors import brief

        first = brief(exc, 160) if str(exc).strip() else "no message"  # some ORT failures carry an empty message
        model, note = onnx.load(str(src)), f"skipped: {type(exc).__name__}: {first}"
    finally:
        tmp.unlink(missing_ok=True)
    return upgraded(model, note)


QDQ_OPSET = 13  # per-channel (axis) QuantizeLinear/DequantizeLinear, which the quantizers write, need opset 13


def upgraded(model, note: str):
    """(``model`` at opset ``QDQ_OPSET`` at least, ``note`` with the conversion said). ORT's quantizers write
    per-axis DequantizeLinear nodes whatever the model's opset, and a model at opset 11 or 12 (PP-OCR's, from
    Paddle2ONNX) is then refused by onnxruntime ("Unrecognized attribute: axis")."""
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), QDQ_OPSET)
    if opset >= QDQ_OPSET:
        return model, note
    try:
        converted = version_converter.convert_version(model, QDQ_OPSET)
    except Exception as exc:
        from mmedge.errors import brief

        raise MmedgeError(
            f"the model is at opset {opset}, and int8 needs opset {QDQ_OPSET}, to which onnx could not convert it "
            f"({brief(exc, 160)}); re-export it at opset {QDQ_OPSET} or later."
        ) from None
    converted.ir_version = max(model.ir_version, 7)  # opset 13 needs IR 7; keep a newer one
    onnx.checker.check_model(converted)
    return converted, f"{note}; opset {opset} converted to {QDQ_OPSET}"


def residual_sums(model) -> int:
    """Rewrite, in place, each ``Add`` of two computed tensors whose only reader is a LayerNormalization as ``Sum``
    (the same sum, which ORT's load-time SkipLayerNormalization fusion does not match). Returns how many."""
    graph = model.graph
    consts = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    count = 0
    for node in graph.node:
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or node.output[0] in outputs:
            continue
        reads = readers.get(node.output[0], [])
        if (
            len(reads) == 1
            and reads[0].op_type == "LayerNormalization"
            and reads[0].input[0] == node.output[0]
            and not any(i in consts for i in node.input)
        ):
            node.op_type = "Sum"
            count += 1
    return count


def prepare(src: Path, out: Path) -> Path:
    """The model every plan starts from: ORT pre-processing, Gemm as MatMul + Add, a transformer's residual adds
    as Sum (``residual_sums``: the quantized model stays clear of ORT's slow SkipLayerNormalization fusion, as
    ``optimize`` keeps it), mmedge metadata kept (plus ``mmedge.pre_process``: whether pre-processing applied)."""
    model, pre_process = pre_processed(src, out.with_name(out.stem + ".pre.onnx"))
    gemm_to_matmul(model)
    residual_sums(model)
    set_metadata(model, {**model_metadata(src), "mmedge.pre_process": pre_process})
    save_onnx(model, out)
    return out


def similarity_head(model) -> list[str]:
    """Zero-shot dual encoders: the MatMul that scores the image embedding against the label embeddings stays in
    float. It is classes x D — quantizing it saves nothing — and u8s8 MatMulInteger on a scaled unit vector lost
    0.4 logits on a tiny CLIP (measured), which would also break the shipped label_embeddings.npy path."""
    if "zero-shot" not in model_metadata(model).get("mmedge.task", ""):
        return []
    producer = {o: n for n in model.graph.node for o in n.output}
    node, seen = producer.get("logits"), []
    while node is not None and node.name not in seen:  # back from the logits through scale and casts
        seen.append(node.name)
        if node.op_type == "MatMul":
            return [node.name]
        node = next((producer[i] for i in node.input if i in producer), None)
    return []
