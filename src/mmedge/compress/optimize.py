"""The `optimize` step: ONNX Runtime's offline graph optimizations, and for transformer graphs the fusions
of ``onnxruntime.transformers.optimizer`` (LayerNorm, GELU, ...), which ships inside onnxruntime.

Which execution providers can run the result depends on what was written, and the step's metrics say it
(``portable``, ``loads_on``): the ``basic`` level alone writes standard ONNX ops, which any EP may load; the
transformer fusions (on by default for transformer graphs) write ORT contrib ops (``com.microsoft`` Attention,
BiasGelu, ...) that only the CPU and CUDA EPs have kernels for; ``extended`` and ``all`` write kernels of the CPU
EP alone. For an NPU or mobile target, set ``transformer_fusions: off``.

Residual adds stay apart from their LayerNormalization: ORT's ``SkipLayerNormalization`` CPU kernel (onnxruntime
1.32, one thread, hidden size 384) took 43 / 81 / 197 / 351 us at 9 / 18 / 65 / 128 rows against 27 / 42 / 64 /
100 us for ``Sum`` + ``LayerNormalization``, which is also what every other EP runs. ORT fuses ``Add`` +
``LayerNormalization`` into it when a session loads, but not ``Sum``, so each residual add before a
LayerNormalization is written as a (two-input) ``Sum``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field

from mmedge.compress.onnx_check import Tolerance, gated_result
from mmedge.compress.quantize.graph import copy_metadata, op_histogram, residual_sums
from mmedge.results import OptimizeMetrics
from mmedge.runtime.options import session_options
from mmedge.runtime.providers import STANDARD_DOMAINS, eps_running
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step


class OptimizeConfig(StepConfig):
    type: Literal["optimize"] = "optimize"
    level: Literal["basic", "extended", "all"] = Field(
        "basic",
        description="ORT graph optimization level written into the file. 'basic' (constant folding, "
        "redundant node removal) runs on every EP; 'extended'/'all' add CPU-only fused kernels.",
    )
    transformer_fusions: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run onnxruntime.transformers.optimizer first; 'auto' does so for models with "
        "LayerNormalization (transformer graphs). Its fused kernels are ORT contrib ops that only the CPU and CUDA "
        "EPs run (the metrics' loads_on); 'off' keeps the graph portable to every EP.",
    )
    num_heads: int = Field(
        0,
        ge=0,
        description="Attention heads, for the Attention fusion; 0 reads them from the graph (the Reshape that "
        "splits the heads) and falls back to ORT's own detection.",
    )
    fuse_skip_layernorm: bool = Field(
        False,
        description="Fuse residual Add + LayerNormalization into ORT's SkipLayerNormalization, for an EP where "
        "bench shows that kernel faster. Off: the residual add is written as Sum, which ORT leaves apart; its CPU "
        "kernel measured 1.6-3.5x slower than Sum + LayerNormalization.",
    )
    tolerance: Tolerance = Field(
        default_factory=lambda: Tolerance(max_accuracy_drop=0.1, min_agreement=0.999),
        description="Graph rewrites must not change answers; the gate is tight.",
    )


def _constants_and_producers(graph) -> tuple[dict, dict]:
    """({tensor: array} of the initializers and Constant nodes, {tensor: the node that writes it}) of ``graph``."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values, {o: n for n in graph.node for o in n.output}


def attention_heads(model) -> tuple[int, int]:
    """(num_heads, hidden_size) of a transformer graph, 0 where unknown: the hidden size is the width of its
    LayerNormalizations, the heads come from the Reshapes that split it into ``[..., heads or -1, head_dim]`` (a
    constant shape, or a Concat of constants as torch.onnx writes it)."""
    from collections import Counter

    graph = model.graph
    values, producer = _constants_and_producers(graph)

    def const(name):  # an integer constant, looking through Unsqueeze
        node = producer.get(name)
        if name not in values and node is not None and node.op_type == "Unsqueeze":
            name = node.input[0]
        v = values.get(name)
        return v.reshape(-1).tolist() if v is not None and v.dtype.kind == "i" else None

    widths = Counter(
        values[n.input[1]].size
        for n in graph.node
        if n.op_type.endswith("LayerNormalization") and len(n.input) > 1 and n.input[1] in values
    )
    hidden = widths.most_common(1)[0][0] if widths else 0
    votes: Counter = Counter()
    for node in graph.node:
        if node.op_type != "Reshape" or not hidden:
            continue
        shape = const(node.input[1])
        if shape is None and node.input[1] in producer and producer[node.input[1]].op_type == "Concat":
            parts = [const(i) for i in producer[node.input[1]].input]
            shape = [p[0] if p and len(p) == 1 else None for p in parts]
        if not shape or len(shape) < 2 or not isinstance(shape[-1], int) or not 0 < shape[-1] < hidden:
            continue
        heads, rem = divmod(hidden, shape[-1])
        if not rem and shape[-2] in (-1, heads):
            votes[heads] += 1
    return (votes.most_common(1)[0][0] if votes else 0), hidden


def bert_attention_form(model) -> int:
    """Rewrite, in place, the two spots where torch.onnx writes mmedge's attention differently from the BERT graphs
    that ``onnxruntime.transformers``' Attention fusion matches, without changing what the graph computes: an
    ``Unsqueeze`` of several constant axes (the padding mask's ``[:, None, None, :]``) becomes one ``Unsqueeze`` per
    axis, and the scores' scale ``q·kᵀ × d^-½`` becomes ``q·kᵀ ÷ d^½`` (the fusion finds the mask's ``Mul`` beside
    the scores only when the scale is a ``Div``). Returns how many nodes were rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    values, producer = _constants_and_producers(graph)
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def feeds_softmax(node) -> bool:  # node -> Add (the mask) -> Softmax
        adds = [r for r in readers.get(node.output[0], []) if r.op_type == "Add"]
        return any(r.op_type == "Softmax" for a in adds for r in readers.get(a.output[0], []))

    nodes, count = [], 0
    for node in graph.node:
        axes = values.get(node.input[1]) if node.op_type == "Unsqueeze" and len(node.input) == 2 else None
        scale = values.get(node.input[1]) if node.op_type == "Mul" and len(node.input) == 2 else None
        if axes is not None and axes.size > 1 and (axes >= 0).all():
            current = node.input[0]
            for i, axis in enumerate(sorted(int(a) for a in axes.reshape(-1))):  # ascending: each keeps its place
                name = f"{node.name}_axis{axis}"
                graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), f"{name}_axes"))
                out = node.output[0] if i == axes.size - 1 else f"{name}_out"
                nodes.append(helper.make_node("Unsqueeze", [current, f"{name}_axes"], [out], name=name))
                current = out
            count += 1
            continue
        if (
            scale is not None
            and scale.size == 1
            and scale.dtype.kind == "f"
            and float(scale.reshape(-1)[0]) != 0.0
            and node.input[0] in producer
            and producer[node.input[0]].op_type == "MatMul"
            and feeds_softmax(node)
        ):
            divisor = f"{node.name}_divisor"
            graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(scale.dtype), divisor))
            node.op_type = "Div"
            node.input[1] = divisor
            count += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _not_producer_warning(record: logging.LogRecord) -> bool:
    return "Model producer not matched" not in record.getMessage()


def optimize_model(src: Path, out: Path, cfg: OptimizeConfig) -> dict:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(src))
    before = op_histogram(model)
    stage = src
    fused, heads = False, 0
    if cfg.transformer_fusions == "on" or (cfg.transformer_fusions == "auto" and "LayerNormalization" in before):
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model as transformer_optimize

        # model_type "bert" enables the generic fusions; num_heads/hidden_size 0 lets ORT try to infer them.
        heads, hidden = attention_heads(model)
        heads = cfg.num_heads or heads
        bert_attention_form(model)
        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = cfg.fuse_skip_layernorm
        # it warns that mmedge, not PyTorch, produced the graph; the model type is given, so the warning says nothing
        logging.getLogger("onnxruntime.transformers.optimizer").addFilter(_not_producer_warning)
        optimized = transformer_optimize(
            model,  # rewritten in place; ``before`` and the heads are already read from it
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden if heads else 0,
            optimization_options=options,
            opt_level=0,
        )
        model = optimized.model
        fused = True
    sums = 0 if cfg.fuse_skip_layernorm else residual_sums(model)
    if fused or sums:
        stage = out.with_name(out.stem + ".fused.onnx")
        onnx.save_model(model, str(stage))
    opts = session_options(level=cfg.level, optimized_path=out)
    ort.InferenceSession(str(stage), opts, providers=["CPUExecutionProvider"])
    if stage != src:
        stage.unlink(missing_ok=True)
    copy_metadata(src, out, {"mmedge.optimized": cfg.level})
    optimized = onnx.load(str(out), load_external_data=False)
    after = op_histogram(optimized)
    return {
        "transformer_fusions": fused,
        "num_heads": heads if fused else None,
        "residual_sums": sums,
        "level": cfg.level,
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "ops": after,
        **portability(optimized),
    }


def portability(model) -> dict:
    """Which EPs can run ``model`` (an onnx ModelProto): ``portable`` when it holds standard ONNX ops only (any EP
    may load it), the ops outside the standard (``domain:op``) and ``loads_on``, the EPs with a kernel for each."""
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    return {
        "portable": all(domain in STANDARD_DOMAINS for domain, _ in ops),
        "non_standard_ops": sorted(f"{d}:{op}" for d, op in ops if d not in STANDARD_DOMAINS),
        "loads_on": eps_running(ops),
    }


@register_step(OptimizeConfig, OptimizeMetrics)
def optimize_step(cfg: OptimizeConfig, ctx: StepContext) -> StepResult:
    src, out = ctx.artifact.path, ctx.out_dir / "model.onnx"
    return gated_result(ctx, "optimize", out, cfg.tolerance, OptimizeMetrics, optimize_model(src, out, cfg))
