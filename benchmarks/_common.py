"""Helpers shared by the benchmark scripts: where results go, how they are written, and the provenance they carry."""

from __future__ import annotations

import json
from pathlib import Path

from mmedge.provenance import collect

RESULTS = Path(__file__).resolve().parent / "results"


def machine_sentence(provenance: dict) -> str:
    """The Markdown sentence about where the figures were measured, written from the recorded provenance (the CPU
    with its instruction-set flags, onnxruntime, mmedge and its commit), so it cannot disagree with the JSON."""
    cpu, packages, git = provenance["cpu"], provenance["packages"], provenance["git"]
    ort = packages.get("onnxruntime") or packages.get("onnxruntime-gpu")
    if git["commit"] is None:
        code = "not from a git checkout"
    else:
        code = f"commit {git['commit'][:10]}" + (" with uncommitted changes" if git["dirty"] else "")
    return (
        f"Machine: {cpu['summary']}, {cpu['logical_cores']} logical cores; onnxruntime {ort}; "
        f"mmedge {provenance['mmedge_version']} ({code})."
    )


def write_results(name: str, data: dict, markdown: str) -> None:
    """<name>.json and <name>.md under benchmarks/results. The JSON records the provenance: the one the script took
    when it started (``data["provenance"]``), else the one of now."""
    data = {"provenance": data.get("provenance") or collect(), **{k: v for k, v in data.items() if k != "provenance"}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
