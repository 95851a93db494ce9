"""Helpers shared by the benchmark scripts: where results go, how they are written, and the provenance they carry."""

from __future__ import annotations

import json
import sys
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


def run_models(folder: Path) -> dict[str, Path]:
    """{"export": the fp32 ONNX of the run's first model, "quantize": the shipped model} of a `mmedge run` folder,
    from its results.json (the steps of its last run, with the artifact each wrote; paths relative to the folder the
    run was started in)."""
    results = folder / "results.json"
    if not results.is_file():
        sys.exit(f"{folder} has no results.json; pass the folder a `mmedge run` wrote, e.g. .mmedge/runs/digits-vqa.")
    found = {}
    for step in json.loads(results.read_text())["steps"]:
        path = Path((step.get("artifact") or {}).get("path") or "")
        kind = step["type"].split(".")[0]
        if kind in ("export", "quantize") and path.suffix == ".onnx":
            # relative paths start at the folder the run was started in: the one that holds .mmedge
            base = next((p.parent for p in folder.resolve().parents if p.name == ".mmedge"), Path.cwd())
            found[kind] = path if path.is_absolute() else base / path
            reference = found[kind].parent / "reference.onnx"  # the first model, when the chain changed it
            if kind == "export" and reference.is_file():
                found[kind] = reference
    return found
