"""The compression trade-off table of a recipe: every variant × accuracy, size and latency, interleaved.

Variants, all from one run of the recipe (cached after `make demo`): the trained teacher exported to fp32
ONNX, the structurally pruned model, the pruned + distilled model, and from the latter int8 dynamic, int8
static (QDQ), fp16 and what `quantize.auto` shipped. Latency: CPU execution provider, 1 thread, batch 1 and
32, all variants timed by mmedge's comparison harness (alternating rounds in one process); medians, and ratios to
the fp32 teacher taken round by round with their p10-p90 interval.

    python benchmarks/compression.py                  -> benchmarks/results/compression-digits-vqa.{json,md}
    python benchmarks/compression.py vit-transformer  -> benchmarks/results/compression-digits-vqa-vit.{json,md}
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_sentence, write_results
from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model
from mmedge.compress.quantize.fp16 import Fp16Config, fp16_model
from mmedge.compress.quantize.static import StaticQuantConfig, quantize_static_model
from mmedge.export.onnx import export_checkpoint
from mmedge.pipeline import run_recipe
from mmedge.provenance import collect
from mmedge.recipe import load_recipe
from mmedge.report.markdown import pct, table
from mmedge.runtime.bench import compare_latency, machine_info
from mmedge.runtime.evaluate import evaluate_model
from mmedge.runtime.inputs import split_feeds

# Targets of the shipped artifact against the fp32 teacher: (max accuracy drop in points, size ratio, p50 b1 ratio)
TARGETS = {"digits-vqa": (1.0, 0.25, 0.60), "digits-vqa-vit": (1.0, 0.35, 0.80)}
ROUNDS = 40
CALLS_PER_ROUND = 10
BATCHES = (1, 32)


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
        out[f"auto ({by_type['quantize.auto'].result.metrics.chosen}), shipped"] = by_type[
            "quantize.auto"
        ].result.artifact.path
    return out


def main() -> None:
    provenance = collect()  # the code as it was when the run started
    recipe = load_recipe(sys.argv[1] if len(sys.argv) > 1 else None)
    records = run_recipe(recipe, progress="lines")
    paths = variants(records, recipe.workdir / recipe.name / "benchmark-variants")
    accuracy = {
        name: evaluate_model(p, recipe.data, ablation=False)[0]["test"]["accuracy"] for name, p in paths.items()
    }
    samples = split_feeds(paths["fp32 teacher"], recipe.data, n=64)
    lat = {
        str(b): compare_latency(paths, samples, "cpu", 1, b, rounds=ROUNDS, calls_per_round=CALLS_PER_ROUND, warmup=20)
        for b in BATCHES
    }
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
            "p50_ms": {b: c.candidates[name].p50_ms for b, c in lat.items()},
            "p90_ms": {b: c.candidates[name].p90_ms for b, c in lat.items()},
            # per round: this variant's time over the teacher's in the same round; median, and p10-p90 interval
            "p50_ratio": {b: c.ratio_interval(name, base)[1] for b, c in lat.items()},
            "ratio_p10_p90": {
                b: [c.ratio_interval(name, base)[0], c.ratio_interval(name, base)[2]] for b, c in lat.items()
            },
            "equally_fast_as_teacher": {b: c.equally_fast(name, base) for b, c in lat.items()},
        }
        results.append(r)
        rows.append(
            [
                name,
                pct(r["test_accuracy"]),
                f"{r['drop_points']:.2f}",
                f"{size / 1e6:.3f}",
                f"{r['size_ratio']:.2f}×",
                *(
                    cell
                    for b in ("1", "32")
                    for cell in (
                        f"{r['p50_ms'][b]:.3f}",
                        f"{r['p50_ratio'][b]:.2f}× ({r['ratio_p10_p90'][b][0]:.2f}–{r['ratio_p10_p90'][b][1]:.2f})",
                    )
                ),
            ]
        )
    shipped = results[-1]
    drop, size_t, lat_t = TARGETS.get(recipe.name, (1.0, 0.25, 0.60))
    checks = {
        "accuracy_drop": {"value": shipped["drop_points"], "target": drop, "met": shipped["drop_points"] <= drop},
        "size_ratio": {"value": shipped["size_ratio"], "target": size_t, "met": shipped["size_ratio"] <= size_t},
        "p50_batch1_ratio": {
            "value": shipped["p50_ratio"]["1"],
            "interval": shipped["ratio_p10_p90"]["1"],
            "target": lat_t,
            "met": shipped["p50_ratio"]["1"] <= lat_t,
            "met_beyond_spread": shipped["ratio_p10_p90"]["1"][1] <= lat_t,
        },
    }
    data = {
        "recipe": recipe.name,
        "provenance": provenance,
        "machine": machine_info(with_provenance=False),
        "rounds": ROUNDS,
        "calls_per_round": CALLS_PER_ROUND,
        "variants": results,
        "targets": checks,
        "comparisons": {b: c.to_json() for b, c in lat.items()},
    }
    md = "\n".join(
        [
            f"# Compression trade-off — recipe `{recipe.name}`",
            "",
            "Test split accuracy with ONNX Runtime; latency on the CPU execution provider, 1 thread, "
            f"{ROUNDS} interleaved rounds × {CALLS_PER_ROUND} calls per variant and batch size; ratios to the fp32 "
            "teacher taken round by round: median (p10–p90).",
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
            machine_sentence(provenance),
            "",
        ]
    )
    write_results(f"compression-{recipe.name}", data, md)


if __name__ == "__main__":
    main()
