"""Where the time goes: ONNX Runtime's node profiler, summed per modality branch (no torch)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np


def branch_latency(
    path: str | Path, feeds: dict[str, np.ndarray], ep: str = "cpu", threads: int = 1, runs: int = 100
) -> dict:
    """Kernel time per branch (image, text, fusion, head, other) over ``runs`` calls: totals in µs per call and
    each branch's share. Profiling adds overhead to every kernel; read the shares, not the totals."""
    import onnx
    import onnxruntime as ort

    from mmedge.runtime.branches import node_branches
    from mmedge.runtime.options import session_options
    from mmedge.runtime.providers import require

    provider = require(ep)
    with tempfile.TemporaryDirectory(prefix="mmedge-profile-") as tmp:
        # the graph as ORT runs it (fused, re-laid-out nodes), to map the profiler's node names to branches
        opts = session_options(
            threads, optimized_path=Path(tmp) / "optimized.onnx", profile_prefix=str(Path(tmp) / "profile")
        )
        sess = ort.InferenceSession(str(path), opts, providers=[(provider.ort_name, dict(provider.options))])
        for _ in range(runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
        owner = node_branches(onnx.load(opts.optimized_model_filepath), onnx.load(str(path)))
    per_branch: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        branch = owner.get(node, "other")
        per_branch[branch] = per_branch.get(branch, 0.0) + float(e["dur"])
    total = sum(per_branch.values()) or 1.0
    return {
        "us_per_call": {b: v / runs for b, v in sorted(per_branch.items())},
        "share": {b: round(v / total, 4) for b, v in sorted(per_branch.items())},
    }


def node_placement(
    path: str | Path, feeds: dict[str, np.ndarray], ep: str = "cpu", threads: int = 1, allow_fallback: bool = False
) -> dict:
    """Which EP ran each node, read from ONNX Runtime's profiler on a real call: {provider: nodes} and the op
    types that ran outside the requested EP (nodes the EP did not take)."""
    from mmedge.runtime.providers import require
    from mmedge.runtime.session import open_session

    provider = require(ep)
    with tempfile.TemporaryDirectory(prefix="mmedge-placement-") as tmp:
        sess = open_session(
            path, ep, threads, allow_fallback=allow_fallback, profile_prefix=str(Path(tmp) / "placement")
        )
        sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    nodes: dict[str, str] = {}
    ops: dict[str, str] = {}
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in args and e.get("name", "").endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            nodes[name] = args["provider"]
            ops[name] = args.get("op_name", "?")
    per_provider: dict[str, int] = {}
    for p in nodes.values():
        per_provider[p] = per_provider.get(p, 0) + 1
    elsewhere = sorted({ops[n] for n, p in nodes.items() if p != provider.ort_name})
    return {
        "nodes": len(nodes),
        "per_provider": dict(sorted(per_provider.items())),
        "share_on_ep": round(per_provider.get(provider.ort_name, 0) / max(len(nodes), 1), 4),
        "ops_not_on_ep": elsewhere,
    }
