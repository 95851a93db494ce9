"""Summaries of an .onnx file or a bundle folder (no torch)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mmedge.errors import NotOnnxError
from mmedge.runtime.session import check_onnx_path, model_metadata


def onnx_summary(path: str | Path) -> dict:
    import onnx
    from google.protobuf.message import DecodeError

    path = check_onnx_path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise NotOnnxError(
            f"{path} is not a loadable ONNX model: it is another kind of file, or truncated or "
            f"damaged ({type(exc).__name__}); pass a complete .onnx file."
        ) from None
    if not model.graph.node and not model.graph.input:
        raise NotOnnxError(f"{path} holds no ONNX graph (an empty or foreign file); pass a complete .onnx file.")

    def io(values):
        out = []
        init = {i.name for i in model.graph.initializer}
        for v in values:
            if v.name in init:
                continue
            t = v.type.tensor_type
            shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
            out.append({"name": v.name, "dtype": _dtype_name(t.elem_type), "shape": shape})
        return out

    params = sum(_elements(init.dims) for init in model.graph.initializer) + _constant_elements(model.graph)
    meta = model_metadata(model)
    mmedge = {k.removeprefix("mmedge."): _maybe_json(v) for k, v in meta.items() if k.startswith("mmedge.")}
    return {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "op_types": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "parameters": params,
        "mmedge": {k: v for k, v in mmedge.items() if k not in ("tokenizer", "spec")},
        "vocabulary_size": _vocabulary_size(mmedge.get("tokenizer")),
    }


def _dtype_name(elem_type: int) -> str:
    """numpy's name for an ONNX element type, or the ONNX number where numpy has none (undefined, a sequence or
    map input, a type newer than this onnx, a damaged file)."""
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError, TypeError):
        return f"onnx type {elem_type}"


def _elements(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _constant_elements(graph) -> int:
    """Values held by Constant nodes (exporters other than mmedge's often store weights so), in this graph and the
    subgraphs of its If/Loop/Scan nodes."""
    from onnx import AttributeProto

    total = 0
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                total += _constant_elements(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                total += sum(_constant_elements(g) for g in attr.graphs)
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value":
                total += _elements(attr.t.dims)
            elif attr.name == "sparse_value":
                total += _elements(attr.sparse_tensor.values.dims)  # the stored (non-zero) values
            elif attr.name in ("value_floats", "value_ints"):
                total += len(attr.floats) + len(attr.ints)
            elif attr.name in ("value_float", "value_int"):
                total += 1
    return total


def _vocabulary_size(tok) -> int | None:
    """Words of mmedge's vocabulary, or entries of a Hugging Face tokenizer.json's model vocabulary."""
    if not isinstance(tok, dict):
        return None
    if tok.get("type") == "hf":
        vocab = (_maybe_json(tok.get("json", "{}")) or {}).get("model", {}).get("vocab")
        return len(vocab) if isinstance(vocab, dict | list) else None
    return len(tok["words"]) if "words" in tok else None


def _maybe_json(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def bundle_summary(path: str | Path) -> dict:
    """What ``mmedge inspect`` shows of a bundle: its manifest, checksum problems and, when intact, its model, all
    from one snapshot of the folder."""
    from mmedge.bundle.manifest import load_bundle

    with load_bundle(path, verify=False) as bundle:
        problems = bundle.verify()
        model = _bundle_model(bundle) if not problems else bundle.manifest.get("model")
    m = bundle.manifest
    return {
        "bundle": str(bundle.root),
        "name": _entry(m, "name"),
        "schema_version": _entry(m, "schema_version"),
        "mmedge_version": _entry(m, "mmedge_version"),
        "created": _entry(m, "created"),
        "verified": not problems,
        "problems": problems,
        "files": _entry(m, "files", dict),
        "labels": _entry(m, "labels", list),
        "inputs": _entry(m, "inputs", list),
        "preprocessing": _entry(m, "preprocessing", dict),
        "metrics": _entry(m, "metrics", dict),
        "model": model,
    }


def _bundle_model(bundle) -> dict:
    """``onnx_summary`` of a bundle's model, read from the snapshot and named by its place in the bundle."""
    with bundle.model_copy() as copy:
        summary = onnx_summary(copy)
    summary["path"] = str(bundle.model_path)
    return summary


def _entry(manifest: dict, key: str, kind: type | None = None):
    """The manifest's ``key``, None where it is missing, or an empty ``kind`` where it is not one: an edited manifest
    is shown as it is rather than failing with a KeyError, and what reads a section as a mapping or a list can."""
    value = manifest.get(key)
    return kind() if kind is not None and not isinstance(value, kind) else value
