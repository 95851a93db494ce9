"""Which modality branch each ONNX node belongs to, read from a model's metadata (device side: onnx only).

Export stores each node's branch (image / text / fusion / head) in the model's metadata (``mmedge.node_branches``),
because later rewrites (ORT pre-processing, quantization) drop node metadata and add nodes of their own. For those,
a node takes the branch of the node whose name it extends (``fusion_MatMul`` from ``fusion``, ``x_quant`` from
``x``), else of its producers, else of its consumers. How export finds the branches: ``mmedge.compress.branches``.
"""

from __future__ import annotations

import json

BRANCHES = ("image", "text", "fusion", "head")
META_KEY = "mmedge.node_branches"
OTHER = "other"  # shape handling between branches (concat, last-token gather)


def node_branches(model, reference=None) -> dict[str, str]:
    """{node name: branch} for every node of ``model`` (an onnx ModelProto), from its stored map.

    ``reference``: the model ``model`` was rewritten from (e.g. before ORT's session optimizations renamed
    and fused nodes); a node then also takes the branch of the reference node that produced its output tensor."""
    ref = reference if reference is not None else model
    meta = {p.key: p.value for p in ref.metadata_props}
    known: dict[str, str] = json.loads(meta.get(META_KEY, "{}"))
    nodes = list(model.graph.node)
    result: dict[str, str] = {}
    if reference is not None:
        ref_map = node_branches(reference)
        by_tensor = {out: ref_map[n.name] for n in reference.graph.node for out in n.output}
        for node in nodes:
            branch = next((by_tensor[o] for o in node.output if by_tensor.get(o, OTHER) != OTHER), None)
            if branch:
                result[node.name] = branch
    for node in nodes:
        if node.name in result:
            continue
        if node.name in known:
            result[node.name] = known[node.name]
            continue
        # the longest known name this one extends (rewrites append suffixes)
        stem = max((k for k in known if k and node.name.startswith(k)), key=len, default=None)
        if stem is not None:
            result[node.name] = known[stem]
    producer = {out: n.name for n in nodes for out in n.output}
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    for _ in range(len(nodes)):  # propagate until stable
        changed = False
        for n in nodes:
            if n.name in result:
                continue
            near = [result.get(producer.get(i, "")) for i in n.input]
            near += [result.get(c) for o in n.output for c in consumers.get(o, [])]
            branch = next((b for b in near if b and b != OTHER), None)
            if branch:
                result[n.name] = branch
                changed = True
        if not changed:
            break
    return {n.name: result.get(n.name, OTHER) for n in nodes}


def branch_sizes(model) -> dict[str, int]:
    """Bytes of initializers per branch (an initializer used by several branches counts for the first)."""
    from onnx import numpy_helper

    owner = node_branches(model)
    sizes = dict.fromkeys((*BRANCHES, OTHER), 0)
    seen = set()
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        for name in node.input:
            if name in inits and name not in seen:
                seen.add(name)
                sizes[owner[node.name]] += numpy_helper.to_array(inits[name]).nbytes
    return {k: v for k, v in sizes.items() if v}
