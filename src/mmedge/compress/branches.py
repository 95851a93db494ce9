"""How export finds which modality branch each ONNX node belongs to (torch-free).

The exporter records each node's PyTorch module scope (``pkg.torch.onnx.name_scopes``); the ModelSpec's
branch map turns a module path into image / text / fusion / head. Export stores the result in the model's
metadata (``mmedge.node_branches``); reading it back, for rewritten models too, is ``mmedge.runtime.branches``.
"""

from __future__ import annotations

import json

from mmedge.models.spec import ModelSpec
from mmedge.runtime.branches import OTHER


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
