"""onnx-neural-compressor (Intel Neural Compressor for ONNX Runtime): ``quantize`` with its StaticQuantConfig
(its defaults: QOperator format, MinMax calibration, per-tensor weights) sampling every calibration row, and its
DynamicQuantConfig (defaults)."""

from __future__ import annotations

from _peer import Reader, done, load_feeds, parse, rows
from onnx_neural_compressor.quantization import config, quantize

VARIANTS = ("static", "dynamic")


def main() -> None:
    args = parse(VARIANTS)
    if args.variant == "static":
        feeds = load_feeds(args.calibration)
        qconfig = config.StaticQuantConfig(calibration_data_reader=Reader(feeds), calibration_sampling_size=rows(feeds))
    else:
        qconfig = config.DynamicQuantConfig()
    quantize(str(args.model), str(args.out), qconfig)
    done(args.out, api="onnx_neural_compressor.quantization.quantize", config=type(qconfig).__name__)


if __name__ == "__main__":
    main()
