"""The compression trade-off table of a recipe: every variant × accuracy, size and latency, interleaved.

Variants, all from one run of the recipe (cached after `make demo`): the trained teacher exported to fp32
ONNX, the structurally pruned model, the pruned + distilled model, and from the latter int8 dynamic, int8
static (QDQ), fp16 and what `quantize.auto` shipped. Latency: CPU execution provider, 1 thread, batch 1 and
32, all variants timed in alternating rounds in one process; medians and ratios to the fp32 teacher.

    python benchmarks/compression.py                  -> benchmarks/results/compression-digits-vqa.{json,md}
    python benchmarks/compression.py vit-transformer  -> benchmarks/results/compression-digits-vqa-vit.{json,md}
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results
from mmedge.compress.quantize import (
    DynamicQuantConfig,
    Fp16Config,
    StaticQuantConfig,
    fp16_model,
    quantize_dynamic_model,
    quantize_static_model,
)
from mmedge.export.onnx import export_checkpoint
from mmedge.pipeline import run_recipe
from mmedge.recipe import load_recipe
from mmedge.report.markdown import pct, table
from mmedge.runtime.bench import bench_interleaved, machine_info
from mmedge.runtime.evaluate import evaluate_model
from mmedge.runtime.inputs import split_feeds

# Targets of the shipped artifact against the fp32 teacher: (max accuracy drop in points, size ratio, p50 b1 ratio)
TARGETS = {"digits-vqa": (1.0, 0.25, 0.60), "digits-vqa-vit": (1.0, 0.35, 0.80)}
ROUNDS = 40


def variants(records, work: Path) -> dict[str, Path]:
    by_type = {r.config.type: r for r in records}
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    export_checkpoint(by_type["train"].result.artifact.path, work / "teacher.onnx")
    out["fp32 teacher"] = work / "teacher.onnx"
    if "prune.structured" in by_type:
        export_checkpoint(by_type["prune.structured"].result.artifact.path, work / "pruned.onnx")
        out["pruned"] = work / "pruned.onnx"
    student = by_type["export"].result.artifact.path
    out["pruned+distilled" if "distill" in by_type else "student fp32"] = student
    quantize_dynamic_model(student, work / "dynamic.onnx", DynamicQuantConfig())
    out["int8 dynamic"] = work / "dynamic.onnx"
    quantize_static_model(student, work / "static.onnx", StaticQuantConfig())
    out["int8 static"] = work / "static.onnx"
    fp16_model(student, work / "fp16.onnx", Fp16Config())
    out["fp16"] = work / "fp16.onnx"
    if "quantize.auto" in by_type:
        out[f"auto ({by_type['quantize.auto'].result.metrics['chosen']}), shipped"] = by_type[
            "quantize.auto"
        ].result.artifact.path
    return out


def main() -> None:
    recipe = load_recipe(sys.argv[1] if len(sys.argv) > 1 else None)
    records = run_recipe(recipe, progress="lines")
    paths = variants(records, recipe.workdir / recipe.name / "benchmark-variants")
    accuracy = {
        name: evaluate_model(p, recipe.data, ablation=False)[0]["test"]["accuracy"] for name, p in paths.items()
    }
    lat = bench_interleaved(
        {n: str(p) for n, p in paths.items()},
        split_feeds(paths["fp32 teacher"], recipe.data, n=64),
        "cpu",
        threads=1,
        batch_sizes=(1, 32),
        rounds=ROUNDS,
    )
    base = "fp32 teacher"
    rows, results = [], []
    for name, p in paths.items():
        size = p.stat().st_size
        r = {
            "variant": name,
            "test_accuracy": accuracy[name],
            "drop_points": round((accuracy[base] - accuracy[name]) * 100, 3),
            "size_bytes": size,
            "size_ratio": size / paths[base].stat().st_size,
            "p50_ms": {b: lat[name][b]["p50_ms"] for b in ("1", "32")},
            "p90_ms": {b: lat[name][b]["p90_ms"] for b in ("1", "32")},
            "p50_ratio": {b: lat[name][b]["p50_ms"] / lat[base][b]["p50_ms"] for b in ("1", "32")},
        }
        results.append(r)
        rows.append(
            [
                name,
                pct(r["test_accuracy"]),
                f"{r['drop_points']:.2f}",
                f"{size / 1e6:.3f}",
                f"{r['size_ratio']:.2f}×",
                f"{r['p50_ms']['1']:.3f}",
                f"{r['p50_ratio']['1']:.2f}×",
                f"{r['p50_ms']['32']:.3f}",
                f"{r['p50_ratio']['32']:.2f}×",
            ]
        )
    shipped = results[-1]
    drop, size_t, lat_t = TARGETS.get(recipe.name, (1.0, 0.25, 0.60))
    checks = {
        "accuracy_drop": {"value": shipped["drop_points"], "target": drop, "met": shipped["drop_points"] <= drop},
        "size_ratio": {"value": shipped["size_ratio"], "target": size_t, "met": shipped["size_ratio"] <= size_t},
        "p50_batch1_ratio": {
            "value": shipped["p50_ratio"]["1"],
            "target": lat_t,
            "met": shipped["p50_ratio"]["1"] <= lat_t,
        },
    }
    data = {"recipe": recipe.name, "machine": machine_info(), "rounds": ROUNDS, "variants": results, "targets": checks}
    md = "\n".join(
        [
            f"# Compression trade-off — recipe `{recipe.name}`",
            "",
            "Test split accuracy with ONNX Runtime; latency on the CPU execution provider, 1 thread, "
            f"{ROUNDS} interleaved rounds × 10 calls per variant and batch size; ratios to the fp32 teacher.",
            "",
            table(
                ["variant", "accuracy", "drop (pts)", "MB", "size", "p50 b1 ms", "b1", "p50 b32 ms", "b32"],
                rows,
            ),
            "",
            "Targets for the shipped model against the fp32 teacher: "
            + "; ".join(
                f"{k} {v['value']:.3f} (target ≤ {v['target']:g}) — {'met' if v['met'] else 'NOT met'}"
                for k, v in checks.items()
            )
            + ".",
            "",
            f"Machine: {data['machine']['cpu']}, {data['machine']['logical_cores']} logical cores, "
            f"onnxruntime {data['machine']['onnxruntime']}.",
            "",
        ]
    )
    write_results(f"compression-{recipe.name}", data, md)


if __name__ == "__main__":
    main()
