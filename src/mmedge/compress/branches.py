"""Which modality branch each ONNX node belongs to (torch-free).

The exporter records each node's PyTorch module scope (``pkg.torch.onnx.name_scopes``); the ModelSpec's
branch map turns a module path into image / text / fusion / head. Export stores the result in the model's
metadata (``mmedge.node_branches``), because later rewrites (ORT pre-processing, quantization) drop node
metadata and add nodes of their own. For those, a node takes the branch of the node whose name it extends
(``fusion_MatMul`` from ``fusion``, ``x_quant`` from ``x``), else of its producers, else of its consumers.
"""

from __future__ import annotations

import json

from mmedge.models.spec import BRANCHES, ModelSpec

META_KEY = "mmedge.node_branches"
OTHER = "other"  # shape handling between branches (concat, last-token gather)


def branches_from_scopes(model, spec: ModelSpec) -> dict[str, str]:
    """{node name: branch} from the exporter's name scopes (call on a freshly exported model)."""
    out = {}
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        try:
            scopes = json.loads(meta.get("pkg.torch.onnx.name_scopes", "[]").replace("'", '"'))
        except json.JSONDecodeError:
            scopes = []
        branch = next((b for s in reversed(scopes) if s and (b := spec.branch_of(s))), None)
        out[node.name] = branch or OTHER
    return out


def branches_from_names(model, spec: ModelSpec) -> dict[str, str]:
    """{node name: branch} from node names that spell their module path (``/text_model/encoder/.../MatMul``, as
    the TorchScript exporter names nodes). A module reached through a method of its parent (``hf.get_text_features``
    runs ``hf.text_model``) is named without the parent, so a branch prefix also matches without its leading
    components."""
    tails = sorted(
        (
            (".".join(p.split(".")[i:]), branch)
            for branch, prefixes in spec.branches.items()
            for p in prefixes
            for i in range(len(p.split(".")))
        ),
        key=lambda t: -len(t[0]),
    )
    out = {}
    for node in model.graph.node:
        path = ".".join(p for p in node.name.split("/") if p)
        out[node.name] = next((b for tail, b in tails if path.startswith(tail + ".")), OTHER)
    return out


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
