"""The ``quantize.fp16`` step: float16 weights and compute, float32 inputs and outputs kept, with
``onnxruntime.transformers.float16``. The result passes the rewrite gate (parity with its input and accuracy)
before the next step sees it.

Facts these rest on (measured on this stack): ``onnxruntime.transformers.float16`` works on these graphs where
``onnxconverter_common.float16`` produced an invalid transformer graph; float16 gives no speed-up on CPU (it is a
GPU target).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mmedge.compress.onnx_check import Tolerance, gated_result
from mmedge.compress.quantize.graph import op_histogram
from mmedge.results import Fp16Metrics
from mmedge.runtime.session import model_metadata, save_onnx, set_metadata
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step


class Fp16Config(StepConfig):
    type: Literal["quantize.fp16"] = "quantize.fp16"
    keep_io_types: bool = Field(True, description="Keep float32 inputs and outputs so an app feeds the same arrays.")
    op_block_list: tuple[str, ...] = Field((), description="Op types kept in float32 (besides ORT's defaults).")
    tolerance: Tolerance = Field(default_factory=Tolerance, description="Gate against the input model.")


def fp16_model(src: Path, out: Path, cfg: Fp16Config) -> dict:
    """Float16 ``src`` -> ``out`` as ``cfg`` says; returns the op histogram."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(src)), keep_io_types=cfg.keep_io_types, op_block_list=list(cfg.op_block_list) or None
    )
    set_metadata(model, {**model_metadata(src), "mmedge.precision": "fp16"})
    save_onnx(model, out)
    return {"ops": op_histogram(out)}


@register_step(Fp16Config, Fp16Metrics)
def quantize_fp16_step(cfg: Fp16Config, ctx: StepContext) -> StepResult:
    src, out = ctx.artifact.path, ctx.out_dir / "model.onnx"
    return gated_result(ctx, "quantize.fp16", out, cfg.tolerance, Fp16Metrics, fp16_model(src, out, cfg))
