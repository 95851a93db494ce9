"""onnxruntime.quantization with its documented settings: static QDQ per-channel (QInt8 weights, QUInt8 activations,
MinMax calibration) and dynamic (QInt8 weights, the default operator list)."""

from __future__ import annotations

from _peer import Reader, done, load_feeds, parse
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

VARIANTS = ("static-qdq-per-channel", "dynamic")


def main() -> None:
    args = parse(VARIANTS)
    if args.variant == "dynamic":
        settings = {"api": "quantize_dynamic", "weight_type": "QInt8", "per_channel": False}
        quantize_dynamic(args.model, args.out, weight_type=QuantType.QInt8)
    else:
        feeds = load_feeds(args.calibration)
        settings = {
            "api": "quantize_static",
            "quant_format": "QDQ",
            "per_channel": True,
            "weight_type": "QInt8",
            "activation_type": "QUInt8",
            "calibrate_method": "MinMax",
        }
        quantize_static(
            args.model,
            args.out,
            Reader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    done(args.out, **settings)


if __name__ == "__main__":
    main()
