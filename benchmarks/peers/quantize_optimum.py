"""Optimum's ORTQuantizer (optimum-onnx) with the AutoQuantizationConfig for this CPU: ``avx512_vnni`` when
/proc/cpuinfo lists avx512_vnni, else ``avx2``; dynamic, and static with MinMax calibration.

ORTQuantizer loads a model folder (``from_pretrained(folder, file_name=...)``); the fp32 model is linked into a
folder of its own, so that it finds no other .onnx file and writes nothing beside the input."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model has no Hub config; never look for one online

from _peer import cpu_flags, done, load_feeds, parse, rows
from onnxruntime.quantization import CalibrationMethod
from optimum.onnxruntime import ORTQuantizer
from optimum.onnxruntime.configuration import AutoQuantizationConfig, CalibrationConfig

VARIANTS = ("dynamic", "static")


def main() -> None:
    args = parse(VARIANTS)
    static = args.variant == "static"
    preset = "avx512_vnni" if "avx512_vnni" in cpu_flags() else "avx2"
    qconfig = getattr(AutoQuantizationConfig, preset)(is_static=static)
    with tempfile.TemporaryDirectory(prefix="peers-optimum-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        os.symlink(args.model.resolve(), folder / "model.onnx")
        quantizer = ORTQuantizer.from_pretrained(folder, file_name="model.onnx")
        ranges = None
        if static:
            feeds = load_feeds(args.calibration)
            n = rows(feeds)
            # ORTQuantizer iterates a dataset of single rows (a datasets.Dataset in its docs; a list of dicts is
            # iterated the same way) and stacks batch_size of them per calibration run
            dataset = [{k: v[i] for k, v in feeds.items()} for i in range(n)]
            calibration = CalibrationConfig(
                dataset_name="mmedge-calibration",
                dataset_config_name="default",
                dataset_split="train",
                dataset_num_samples=n,
                method=CalibrationMethod.MinMax,
                moving_average=False,
                averaging_constant=0.01,
            )
            ranges = quantizer.fit(
                dataset,
                calibration,
                onnx_augmented_model_name=str(Path(tmp) / "augmented.onnx"),
                operators_to_quantize=qconfig.operators_to_quantize,
                batch_size=32,
            )
        out_dir = Path(tmp) / "out"
        quantizer.quantize(qconfig, save_dir=out_dir, calibration_tensors_range=ranges)
        shutil.move(out_dir / "model_quantized.onnx", args.out)
    done(
        args.out,
        api="ORTQuantizer.quantize",
        preset=f"AutoQuantizationConfig.{preset}(is_static={static})",
        format=str(qconfig.format),
        per_channel=qconfig.per_channel,
        operators_to_quantize=list(qconfig.operators_to_quantize),
        calibration="MinMax" if static else None,
    )


if __name__ == "__main__":
    main()
