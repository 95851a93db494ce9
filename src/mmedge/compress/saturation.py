"""Saturation-free int8 weight scales for ONNX Runtime's u8s8 integer MatMul on x86 CPUs without VNNI.

On AVX2 (and AVX-512 without VNNI) MLAS multiplies uint8 activations by int8 weights with ``vpmaddubsw``: the
products of two neighbouring input channels (k = 2j, 2j+1) are added into a *saturating* int16 before the exact
int32 accumulation. With full-range weights (|w| up to 127) and activations up to 255 that pair sum reaches
2 * 255 * 127 = 64770 and clips at 32767, a silent error far above rounding: all-MiniLM-L6-v2 quantized with
ORT's per-tensor recipe kept a mean cosine of only 0.961 to fp32 on this kind of CPU. ``reduce_range`` (7-bit
weights) avoids it by giving up a whole bit everywhere.

Here the scale of each output column is chosen so that no neighbouring pair can saturate: for every pair the
positive weights and the negative weights each sum to at most 128 in magnitude (255 * 128 = 32640 fits int16).
A column whose largest weight sits next to small ones keeps nearly all of its 8 bits; only columns with two large
same-signed neighbours give up some range. The result computes exactly on every x86 kernel (checked against an
exact integer product), and costs nothing at run time: the graph is unchanged, only the integer weights and their
scales differ. Kernels that do not saturate (VNNI, ARM) compute the same model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# 255 * 128 = 32640 <= 32767: a pair of products that always fits int16. Scaled pair sums stay within 127.5 so
# that the rounded integer pair sums stay within 128.
PAIR_LIMIT = 127.5
# ORT ops that multiply uint8 activations by the int8 weight at input 1 with MLAS's u8s8 GEMM. ORT quantizes
# QAttention's weights as MatMul's (8-bit, per channel when asked; onnxruntime 1.32), so they saturate alike.
INTEGER_OPS = ("MatMulInteger", "QAttention")


def saturation_free_scales(weight: np.ndarray, per_column: bool = True) -> np.ndarray:
    """Scales for symmetric int8 quantization of a (K, N) MatMul weight whose neighbouring-row pairs cannot
    saturate: (N,) per column, or one scale (shape ()) for the whole tensor."""
    w = weight.astype(np.float64)
    if w.shape[0] % 2:
        w = np.concatenate([w, np.zeros((1, w.shape[1]))])
    pos, neg = np.maximum(w, 0), np.minimum(w, 0)
    pair = np.maximum(pos[0::2] + pos[1::2], -(neg[0::2] + neg[1::2]))  # (K/2, N) largest same-signed pair sum
    axis = 0 if per_column else None
    scale = np.maximum(pair.max(axis=axis) / PAIR_LIMIT, np.abs(w).max(axis=axis) / 127)
    return np.maximum(scale, np.finfo(np.float32).tiny).astype(np.float32)


def make_saturation_free(quantized, float_weights: dict[str, np.ndarray]) -> int:
    """Requantize, in place, the int8 MatMul weights of an ORT dynamically quantized model (``W_quantized`` with
    ``W_scale`` and a zero ``W_zero_point``, as ``quantize_dynamic`` names them) from their float originals with
    saturation-free scales. Returns how many weights were rewritten."""
    from onnx import TensorProto, numpy_helper

    consts = {i.name: i for i in quantized.graph.initializer}
    integer_inputs = {n.input[1] for n in quantized.graph.node if n.op_type in INTEGER_OPS and len(n.input) > 1}
    done = 0
    for name, w in float_weights.items():
        q, s, z = (consts.get(f"{name}_{part}") for part in ("quantized", "scale", "zero_point"))
        if q is None or s is None or q.name not in integer_inputs or q.data_type != TensorProto.INT8 or w.ndim != 2:
            continue
        if z is not None and np.any(numpy_helper.to_array(z)):
            continue  # asymmetric weights: not what this rewrite assumes
        old = numpy_helper.to_array(s)
        if old.size not in (1, w.shape[1]):
            continue
        scale = saturation_free_scales(w, per_column=old.size > 1).reshape(old.shape)
        cols = scale.reshape(-1) if old.size > 1 else scale.reshape(())
        ints = np.clip(np.round(w / cols), -127, 127).astype(np.int8)
        q.CopyFrom(numpy_helper.from_array(ints, q.name))
        s.CopyFrom(numpy_helper.from_array(scale.astype(np.float32), s.name))
        done += 1
    return done


def matmul_weights(float_model) -> dict[str, np.ndarray]:
    """The constant weights feeding a MatMul (or a fused Attention) in ``float_model`` (a path or a loaded
    ModelProto), by name."""
    import onnx
    from onnx import numpy_helper

    if not isinstance(float_model, onnx.ModelProto):
        float_model = onnx.load(str(float_model))
    consts = {i.name: i for i in float_model.graph.initializer}
    return {
        n.input[1]: numpy_helper.to_array(consts[n.input[1]]).astype(np.float32)
        for n in float_model.graph.node
        if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in consts
    }


def saturation_free_file(quantized: Path, float_model) -> int:
    """``make_saturation_free`` on the model file ``quantized`` (rewritten atomically, and only when a weight
    changed), with the float weights of ``float_model`` (a path or a loaded ModelProto)."""
    import onnx

    from mmedge.runtime.session import save_onnx

    model = onnx.load(str(quantized))
    done = make_saturation_free(model, matmul_weights(float_model))
    if done:
        save_onnx(model, quantized)
    return done
