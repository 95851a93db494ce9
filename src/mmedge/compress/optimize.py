"""The `optimize` step: ONNX Runtime's offline graph optimizations, and for transformer graphs the fusions
of ``onnxruntime.transformers.optimizer`` (LayerNorm, GELU, ...), which ships inside onnxruntime.

Only the ``basic`` level is portable: ``extended`` and ``all`` write fused kernels that exist on the CPU
execution provider alone, so a model optimized that way must not ship to other EPs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mmedge.artifact import Artifact, StepResult
from mmedge.compress.onnx_check import Tolerance, check_rewrite
from mmedge.compress.quantize import copy_metadata, op_histogram
from mmedge.recipe import StepConfig, register_step


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
        "LayerNormalization (transformer graphs).",
    )
    tolerance: Tolerance = Field(
        default_factory=lambda: Tolerance(max_accuracy_drop=0.1, min_agreement=0.999),
        description="Graph rewrites must not change answers; the gate is tight.",
    )


def _has_layernorm(path: Path) -> bool:
    return "LayerNormalization" in op_histogram(path)


def optimize_model(src: Path, out: Path, cfg: OptimizeConfig) -> dict:
    import onnxruntime as ort

    stage = src
    fused = False
    if cfg.transformer_fusions == "on" or (cfg.transformer_fusions == "auto" and _has_layernorm(src)):
        from onnxruntime.transformers.optimizer import optimize_model as transformer_optimize

        # model_type "bert" enables the generic fusions; num_heads/hidden_size 0 lets ORT infer them.
        optimized = transformer_optimize(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
        stage = out.with_name(out.stem + ".fused.onnx")
        optimized.save_model_to_file(str(stage))
        fused = True
    opts = ort.SessionOptions()
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.level]
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(stage), opts, providers=["CPUExecutionProvider"])
    if stage != src:
        stage.unlink(missing_ok=True)
    copy_metadata(src, out, {"mmedge.optimized": cfg.level})
    before, after = op_histogram(src), op_histogram(out)
    return {
        "transformer_fusions": fused,
        "level": cfg.level,
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "ops": after,
    }


@register_step(OptimizeConfig, consumes="onnx", produces="onnx")
def optimize_step(cfg: OptimizeConfig, ctx) -> StepResult:
    src, out = ctx.artifact.path, ctx.out_dir / "model.onnx"
    info = optimize_model(src, out, cfg)
    metrics = check_rewrite("optimize", src, out, ctx.recipe.data, cfg.tolerance)
    metrics.update(info)
    return StepResult(Artifact(out, "onnx", ctx.artifact.spec, (*ctx.artifact.lineage, "optimize")), metrics)
