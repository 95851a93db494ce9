"""The ``quantize.static`` step: ONNX Runtime's static QDQ int8 with calibrated activation ranges, then dynamic int8
for the op types QDQ does not cover (LSTM, embedding tables). The result passes the rewrite gate (parity with its
input and accuracy) before the next step sees it.

Facts these defaults rest on (measured on this stack): static QDQ per-channel was the fastest path for a probe with
heavier convolutions (~1.4x over fp32 at batch 1) but slower than fp32 on the tiny digits model; ORT's QDQ quantizer
leaves LSTM in float, so the dynamic pass after it makes it DynamicQuantizeLSTM; a large-negative attention mask
ruins calibration, so element-wise paths stay float.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from mmedge.compress.onnx_check import Tolerance, gated_result
from mmedge.compress.quantize.calibration import CalibrationConfig, calibrate, calibration_feeds
from mmedge.compress.quantize.graph import copy_metadata, prepare
from mmedge.compress.quantize.plan import (
    DYNAMIC_OP_TYPES,
    STATIC_OP_TYPES,
    TRANSFORMER_MATMULS_HELP,
    check_op_types,
    quantizable_nodes,
    quantize_plan,
    static_scheme,
)
from mmedge.errors import MmedgeError
from mmedge.results import StaticQuantMetrics
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step


class StaticQuantConfig(StepConfig):
    type: Literal["quantize.static"] = "quantize.static"
    op_types: tuple[str, ...] = Field(
        ("Conv", "MatMul", "Gemm"),
        description="Op types quantized statically (QDQ). Additive masks and other element-wise paths stay float: "
        "quantizing a large-negative attention mask ruins calibration.",
    )
    dynamic_op_types: tuple[str, ...] = Field(
        ("LSTM", "Gather", "Attention"),
        description="Op types quantized dynamically after the static pass: ORT's QDQ quantizer has no LSTM and no "
        "fused Attention (what `optimize` writes for a transformer), so without this they stay float; Gather stores "
        "the embedding table in int8.",
    )
    transformer_matmuls: Literal["dynamic", "static"] = Field("dynamic", description=TRANSFORMER_MATMULS_HELP)
    per_channel: bool = Field(True, description="One scale per output channel of each weight (more faithful).")
    activation_type: Literal["uint8", "int8"] = Field(
        "uint8", description="uint8 activations with int8 weights (u8s8) is the fast path on x86."
    )
    weight_only_const: bool = Field(
        True, description="Quantize MatMuls only where one input is a weight (not activation x activation)."
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="How ranges are estimated.")
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate against the input model.")

    @field_validator("op_types")
    @classmethod
    def _ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_op_types(v, STATIC_OP_TYPES)

    @field_validator("dynamic_op_types")
    @classmethod
    def _dyn_ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return check_op_types(v, DYNAMIC_OP_TYPES) if v else v


def static_plan(nodes: list[dict], op_types, dynamic_op_types, transformer_matmuls: str = "dynamic") -> dict[str, str]:
    """{node: scheme} for ``quantize_plan``: nodes of ``op_types`` static (LSTM never: QDQ has none; the MatMuls of
    a branch that computes attention as ``transformer_matmuls`` says), nodes of ``dynamic_op_types`` dynamic, the rest
    float."""
    ops = set(op_types) | ({"MatMul"} if "Gemm" in op_types else set())  # Gemm was rewritten as MatMul
    plan = {}
    for n in nodes:
        if n["op"] in ops and n["op"] != "LSTM":
            plan[n["node"]] = static_scheme(n, transformer_matmuls)
        elif n["op"] in dynamic_op_types:
            plan[n["node"]] = "int8-dynamic"
    return plan


def quantize_static_model(src: Path, out: Path, cfg: StaticQuantConfig, data_cfg=None) -> dict:
    """Static QDQ ``src`` -> ``out`` as ``cfg`` says, calibrated on ``cfg.calibration``'s data (or a draw from
    ``data_cfg``'s training split); the ranges are kept beside ``out`` as calibration.json."""
    prepared = prepare(src, out.with_name("prepared.onnx"))
    cache = out.with_name("calibration.json")
    try:
        nodes = quantizable_nodes(prepared)
        plan = static_plan(nodes, cfg.op_types, cfg.dynamic_op_types, cfg.transformer_matmuls)
        if not any(s == "int8-static" for s in plan.values()):
            if static_plan(nodes, cfg.op_types, (), "static"):
                raise MmedgeError(
                    "every node quantize.static would quantize statically is a MatMul of a transformer, which it "
                    "quantizes dynamically (transformer_matmuls: dynamic); use quantize.dynamic for this model, "
                    "or set transformer_matmuls: static."
                )
            raise MmedgeError(
                f"the model has no {'/'.join(cfg.op_types)} node with a constant weight to quantize statically; "
                "choose other op_types."
            )
        feeds = calibration_feeds(src, cfg.calibration, data_cfg)
        calibrate(prepared, feeds, cfg.calibration, sorted({n["op"] for n in nodes} | set(cfg.op_types)), cache)
        info = quantize_plan(
            prepared, out, plan, cache, cfg.calibration, cfg.per_channel, cfg.activation_type, cfg.weight_only_const
        )
    finally:
        prepared.unlink(missing_ok=True)
    copy_metadata(src, out, {"mmedge.precision": "int8-static", "mmedge.plan": json.dumps(plan, sort_keys=True)})
    samples = min(len(v) for v in feeds.values())  # every input has one row per sample, whatever it is named
    return {
        **info,
        "calibration": {**cfg.calibration.model_dump(mode="json"), "samples_used": samples},
        "calibration_ranges": cache.name,
    }


@register_step(StaticQuantConfig, StaticQuantMetrics)
def quantize_static_step(cfg: StaticQuantConfig, ctx: StepContext) -> StepResult:
    src, out = ctx.artifact.path, ctx.out_dir / "model.onnx"
    return gated_result(
        ctx,
        "quantize.static",
        out,
        cfg.tolerance,
        StaticQuantMetrics,
        quantize_static_model(src, out, cfg, ctx.recipe.data),
    )
