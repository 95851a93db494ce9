"""Activation smoothing before dynamic int8 (SmoothQuant, Xiao et al. 2023), as an ONNX-to-ONNX rewrite.

Dynamic int8 quantizes each activation tensor with one scale. Transformer activations carry a few channels
that are 10-100x larger than the rest (measured on all-MiniLM-L6-v2: the FFN down-projection inputs), so that
one scale leaves the other channels a handful of levels — the fidelity loss per-channel *weight* scales cannot
fix. Smoothing moves the range from the activation into the weight, exactly: for ``Y = X W`` with a per-input-
channel factor ``s``, ``Y = (X / s) (diag(s) W)``. ``s_k = max|X_k|^alpha / max|W_k|^(1 - alpha)`` balances
the two (alpha 0.5 is the paper's default). The division is one Mul on the activation, shared by every MatMul
that reads it; the ranges ``max|X_k|`` come from running the float model on calibration inputs.

Every choice here (the alpha per activation, whether to split outliers, which MatMuls stay float) compares
simulated int8 outputs, so the simulation quantizes the weights as the dynamic step will (:class:`WeightQuantizer`:
per tensor or per column, saturation-free or max-abs scales, 7 or 8 bits, signed or not): a choice tuned for
another quantizer than the one that runs is tuned for the wrong error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from mmedge.compress.saturation import saturation_free_scales

ALPHAS = (0.0, 0.5, 0.75, 0.9, 1.0)  # searched per activation when alpha is None; 0.0 here means "leave it"
# An outlier split costs a Gather and a k-row float MatMul per activation, plus an Add where no residual Sum can take
# the float part; it is made only where it cuts the simulated int8 error at least twofold. On all-MiniLM-L6-v2 fused
# by optimize that is 9 of 24 activations, the FFN inputs of layers 0-3 and one of layer 4: mean cosine 0.99846,
# min 0.9955, NN agreement 96.3 %. At threefold, 5 activations: 0.99832, 0.9922, 94.8 %, and a speed difference
# within this machine's timing noise.
SPLIT_GAIN = 2.0


@dataclass(frozen=True)
class WeightQuantizer:
    """How ORT's dynamic quantizer (with mmedge's saturation-free rewrite) stores a (K, N) MatMul weight, as the
    quantize.dynamic step configures it; the defaults are that step's. Weights of fused Attention nodes follow the
    same settings."""

    per_channel: bool = False  # one scale per output column (N), else one for the tensor
    saturation_free: bool = True  # mmedge's scales (signed 8-bit only); else ORT's max-abs scales
    reduce_range: bool = False  # 7-bit weights
    weight_type: Literal["int8", "uint8"] = "int8"

    def describe(self) -> str:
        scales = "saturation-free" if self._saturation_free else "max-abs"
        bits = "7-bit" if self.reduce_range else "8-bit"
        return f"{'per-channel' if self.per_channel else 'per-tensor'} {bits} {self.weight_type}, {scales} scales"

    @property
    def _saturation_free(self) -> bool:  # what quantize.dynamic applies it to
        return self.saturation_free and self.weight_type == "int8" and not self.reduce_range

    def fake_quant(self, w: np.ndarray) -> np.ndarray:
        """``w`` (K, N) as the quantized model holds it: quantized to the integer grid and scaled back (float64)."""
        w = w.astype(np.float64)
        axis = 0 if self.per_channel else None  # reduce over K: one scale per column
        if self.weight_type == "uint8":  # asymmetric, zero point inside [0, qmax]
            qmax = 127 if self.reduce_range else 255
            lo, hi = np.minimum(w.min(axis=axis), 0.0), np.maximum(w.max(axis=axis), 0.0)
            scale = np.where(hi > lo, (hi - lo) / qmax, 1.0)
            zero = np.round(-lo / scale)
            return (np.clip(np.round(w / scale) + zero, 0, qmax) - zero) * scale
        qmax = 64 if self.reduce_range else 127  # ORT's symmetric int8: [-127, 127], [-64, 64] with reduce_range
        if self._saturation_free:
            scale = saturation_free_scales(w, per_column=self.per_channel).astype(np.float64)
        else:
            scale = np.abs(w).max(axis=axis) / qmax
            scale = np.where(scale > 0, scale, 1.0)
        return np.clip(np.round(w / scale), -qmax, qmax) * scale


def fake_quant_activation(x: np.ndarray) -> np.ndarray:
    """``x`` as ORT's DynamicQuantizeLinear sees it: one uint8 scale and zero point for the whole tensor, its range
    widened to include 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    step = (hi - lo) / 255 or 1.0
    zero = np.round(-lo / step)
    return (np.clip(np.round(x / step) + zero, 0, 255) - zero) * step


def smooth_matmuls(
    src: Path,
    out: Path,
    feeds: dict[str, np.ndarray],
    alpha: float | None = 0.5,
    batch: int = 32,
    outlier_channels: int = 0,
    weights: WeightQuantizer = WeightQuantizer(),
) -> dict:
    """Write ``src`` with every activation that feeds constant-weight MatMuls (or fused Attention nodes) smoothed;
    returns what was done.

    ``alpha=None`` picks, per activation, the alpha of ALPHAS (or no smoothing) whose simulated int8 MatMul output
    (per-tensor uint8 activations as ORT's dynamic quantizer makes them, weights as ``weights`` says) is closest
    to float on the calibration rows.

    ``outlier_channels=k`` also splits each activation read only by MatMuls (LLM.int8(), Dettmers et al. 2022): its
    k input channels with the largest ``max|X_k| * max|W_k|`` leave the int8 product (the smoothing Mul zeroes
    them) and are multiplied in float by a small side MatMul (``Gather`` of k channels, k x N weight) whose output
    is added back. Those channels are what set the int8 ranges; on all-MiniLM-L6-v2 four of 1536 per FFN input cut
    the simulated error of the worst MatMuls 2-3.5-fold. An activation is split only where the cut is at least
    SPLIT_GAIN-fold. The side MatMuls are named in ``outlier_matmuls`` and must stay float."""
    import onnx
    from onnx import helper, numpy_helper

    from mmedge.runtime.session import open_session

    model = onnx.load(str(src))
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    groups: dict[str, list] = {}  # activation tensor -> MatMuls / Attention nodes that read it with a 2-D weight
    for node in graph.node:
        weight = consts.get(node.input[1]) if node.op_type in ("MatMul", "Attention") else None
        if weight is not None and len(weight.dims) == 2 and node.input[0] not in consts:
            groups.setdefault(node.input[0], []).append(node)
    info = {
        "smoothed_activations": 0,
        "smoothed_matmuls": 0,
        "folded_into_attention": 0,
        "alpha": alpha,
        "simulated_weights": weights.describe(),
    }
    if not groups:
        onnx.save_model(model, str(out))
        return info
    ranges, samples = _activation_ranges(src, list(groups), feeds, batch, open_session)
    shared_weights = {}
    for node in graph.node:  # a weight read by two MatMuls of different groups cannot take two scalings
        for name in node.input:
            shared_weights[name] = shared_weights.get(name, 0) + 1
    chosen, side = {}, []
    candidates = ALPHAS if alpha is None else (alpha,)
    for act, nodes in groups.items():
        if any(shared_weights[n.input[1]] > 1 for n in nodes):
            continue
        ws = [numpy_helper.to_array(consts[n.input[1]]).astype(np.float32) for n in nodes]
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)  # (K,)
        amax = ranges[act]
        x = samples[act]

        def search(split, ws=ws, amax=amax, wmax=wmax, x=x):  # -> (alpha, simulated error)
            errors = {a: _int8_error(x, ws, _scales(amax, wmax, a, split), weights, split) for a in candidates}
            return min(errors.items(), key=lambda kv: kv[1])

        split = np.zeros(len(amax), bool)
        best, error = search(split) if alpha is None or outlier_channels else (alpha, None)
        if outlier_channels and all(n.op_type == "MatMul" for n in nodes) and outlier_channels < len(amax) // 2:
            outliers = split.copy()
            outliers[np.argsort(-(amax * wmax))[:outlier_channels]] = True
            split_alpha, split_error = search(outliers)
            if split_error * SPLIT_GAIN <= error:
                best, split = split_alpha, outliers
        chosen[act] = best
        if best == 0.0 and not split.any():
            continue
        scale = _scales(amax, wmax, best, split)
        inv = (1.0 / scale) * ~split  # split channels leave the int8 product
        act_name = act.replace("/", "_").strip("_")
        for n, w in zip(nodes, ws, strict=True):
            consts[n.input[1]].CopyFrom(numpy_helper.from_array(w * (scale * ~split)[:, None], n.input[1]))
        info["smoothed_matmuls"] += len(nodes)
        info["smoothed_activations"] += 1
        if not split.any() and _fold_into_attention(graph, consts, act, nodes, inv):
            info["folded_into_attention"] += 1
            continue
        graph.initializer.append(numpy_helper.from_array(inv.astype(np.float32), f"{act_name}_smooth_inv"))
        mul = helper.make_node(
            "Mul", [act, f"{act_name}_smooth_inv"], [f"{act_name}_smoothed"], name=f"{act_name}_smooth"
        )
        first = min(list(graph.node).index(n) for n in nodes)
        graph.node.insert(first, mul)
        for n in nodes:
            n.input[0] = mul.output[0]
        if split.any():
            side += _side_matmuls(graph, act, act_name, nodes, ws, np.flatnonzero(split))
    onnx.save_model(model, str(out))
    if alpha is None:
        info["alphas_chosen"] = {str(a): sum(1 for v in chosen.values() if v == a) for a in ALPHAS}
    if outlier_channels:
        info["outlier_channels"] = outlier_channels
        info["outlier_matmuls"] = side
    return info


def _side_matmuls(graph, act: str, act_name: str, nodes: list, weights: list[np.ndarray], idx: np.ndarray) -> list[str]:
    """Rewire each MatMul of ``nodes`` (weights already without rows ``idx``) to ``Y = MatMul(...) + Gather(act, idx)
    @ W[idx]``, the float part of an outlier split. The float part joins after the MatMul's bias Add, so ORT still
    folds the bias into the quantized MatMul, and where a Sum (a residual add, see ``optimize``) reads the result
    it becomes one more input of that Sum instead of a new Add. Returns the names of the side MatMuls."""
    from onnx import helper, numpy_helper

    graph.initializer.append(numpy_helper.from_array(idx.astype(np.int64), f"{act_name}_outlier_idx"))
    gathered = f"{act_name}_outliers"
    nodes_list = list(graph.node)
    at = min(nodes_list.index(n) for n in nodes)
    graph.node.insert(
        at, helper.make_node("Gather", [act, f"{act_name}_outlier_idx"], [gathered], name=gathered, axis=-1)
    )
    consts = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    names = []
    for n, w in zip(nodes, weights, strict=True):
        graph.initializer.append(numpy_helper.from_array(w[idx], f"{n.name}_outlier_weight"))
        side = helper.make_node(
            "MatMul", [gathered, f"{n.name}_outlier_weight"], [f"{n.name}_float_part"], name=f"{n.name}_outliers"
        )
        graph.node.insert(list(graph.node).index(n) + 1, side)
        names.append(side.name)
        last = n  # the MatMul, or the Add of its constant bias
        readers = _readers(graph, n.output[0])
        if len(readers) == 1 and readers[0].op_type == "Add" and any(i in consts for i in readers[0].input):
            last = readers[0]
        readers = _readers(graph, last.output[0])
        if len(readers) == 1 and readers[0].op_type == "Sum" and last.output[0] not in outputs:
            readers[0].input.append(side.output[0])
            continue
        y = last.output[0]
        last.output[0] = f"{n.name}_int8_part"
        add = helper.make_node("Add", [last.output[0], side.output[0]], [y], name=f"{n.name}_outliers_add")
        graph.node.insert(list(graph.node).index(last) + 1, add)
    return names


def _fold_into_attention(graph, consts: dict, act: str, nodes: list, inv: np.ndarray) -> bool:
    """Multiply ``act``'s channels by ``inv`` inside the fused ``Attention`` node that computes it, when one does
    and only ``nodes`` read it: an attention output is softmax(QK^T) V, so scaling V's output columns (weight and
    bias) scales its channels exactly, with no Mul left at run time. Returns whether it did."""
    from onnx import helper, numpy_helper

    attention = next((n for n in graph.node if act in n.output), None)
    if (
        attention is None
        or attention.op_type != "Attention"
        or list(attention.output).index(act) != 0
        or len(attention.input) < 3
        or not {attention.input[1], attention.input[2]} <= consts.keys()
        or any(n not in nodes for n in _readers(graph, act))
        or act in {o.name for o in graph.output}
    ):
        return False
    weight = numpy_helper.to_array(consts[attention.input[1]])
    bias = numpy_helper.to_array(consts[attention.input[2]])
    attrs = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    sizes = list(attrs.get("qkv_hidden_sizes", [weight.shape[1] // 3] * 3))
    v = slice(sizes[0] + sizes[1], sum(sizes))
    if sizes[2] != len(inv) or sum(sizes) != weight.shape[1] or bias.shape != (weight.shape[1],):
        return False
    if sum(1 for n in graph.node for i in n.input if i in (attention.input[1], attention.input[2])) > 2:
        return False  # weights shared with another node
    weight, bias = weight.copy(), bias.copy()
    weight[:, v] *= inv
    bias[v] *= inv
    consts[attention.input[1]].CopyFrom(numpy_helper.from_array(weight, attention.input[1]))
    consts[attention.input[2]].CopyFrom(numpy_helper.from_array(bias, attention.input[2]))
    return True


def _readers(graph, name: str) -> list:
    return [node for node in graph.node if name in node.input]


def int8_sensitive_matmuls(
    src: Path, feeds: dict[str, np.ndarray], batch: int = 32, weights: WeightQuantizer = WeightQuantizer()
) -> list[str]:
    """Names of the constant-weight MatMuls of ``src``, least faithful under dynamic int8 first: the relative error
    of each one's output when its input is quantized per tensor (uint8) and its weight as ``weights`` says,
    simulated on the calibration rows. On all-MiniLM-L6-v2 the top three were the three whose float fallback helped most
    when measured one by one end to end (36 re-quantizations), at the cost of one forward pass."""
    import onnx
    from onnx import numpy_helper

    from mmedge.runtime.session import open_session

    graph = onnx.load(str(src)).graph
    consts = {i.name: i for i in graph.initializer}
    nodes = [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and n.input[1] in consts
        and len(consts[n.input[1]].dims) == 2
        and n.input[0] not in consts
    ]
    if not nodes:
        return []
    _, samples = _activation_ranges(src, sorted({n.input[0] for n in nodes}), feeds, batch, open_session)
    error = {}
    for n in nodes:
        w = numpy_helper.to_array(consts[n.input[1]]).astype(np.float32)
        error[n.name] = _int8_error(samples[n.input[0]], [w], np.ones(w.shape[0], np.float32), weights)
    return sorted(error, key=error.get, reverse=True)


def _scales(amax: np.ndarray, wmax: np.ndarray, alpha: float, split: np.ndarray | None = None) -> np.ndarray:
    """s_k = max|X_k|^alpha / max|W_k|^(1 - alpha), 1 where a channel is all zero or split off (or alpha is 0, "leave
    it"), kept within 1e-4..1e4."""
    live = (amax > 0) & (wmax > 0) & (alpha > 0)
    if split is not None:
        live &= ~split
    s = np.where(live, amax**alpha / np.maximum(wmax, 1e-8) ** (1 - alpha), 1.0)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def _int8_error(
    x: np.ndarray,
    weights: list[np.ndarray],
    scale: np.ndarray,
    quantizer: WeightQuantizer,
    split: np.ndarray | None = None,
) -> float:
    """Relative squared error of X @ W when X / s is quantized per tensor (uint8) and W * s as ``quantizer`` says;
    ``split`` channels are computed in float instead (their error is zero)."""
    keep = np.ones(x.shape[1], bool) if split is None else ~split
    xq = fake_quant_activation(x * keep / scale)
    err = ref = 0.0
    for w in weights:
        y = x @ w
        wq = quantizer.fake_quant(w * (scale * keep)[:, None])
        err += float(((xq @ wq + x[:, ~keep] @ w[~keep] - y) ** 2).sum())
        ref += float((y**2).sum())
    return err / max(ref, 1e-12)


def _activation_ranges(src: Path, names: list[str], feeds: dict[str, np.ndarray], batch: int, open_session) -> dict:
    """max |x| per last-axis channel of each named tensor over the calibration inputs ({name: (K,)}), and a sample
    of its rows ({name: (M, K)}) for the alpha search."""
    import tempfile

    import onnx

    model = onnx.load(str(src))
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory(prefix="mmedge-smooth-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save_model(model, str(probe))
        sess = open_session(probe)
        n = min(len(v) for v in feeds.values())
        ranges: dict[str, np.ndarray] = {}
        rows: dict[str, list] = {}
        rng = np.random.default_rng(0)
        for start in range(0, n, batch):
            got = sess.run(names, {k: v[start : start + batch] for k, v in feeds.items()})
            for name, value in zip(names, got, strict=True):
                flat = value.reshape(-1, value.shape[-1])
                m = np.abs(flat).max(axis=0)
                ranges[name] = m if name not in ranges else np.maximum(ranges[name], m)
                rows.setdefault(name, []).append(flat[rng.choice(len(flat), min(len(flat), 256), replace=False)])
    return ranges, {name: np.concatenate(r) for name, r in rows.items()}
