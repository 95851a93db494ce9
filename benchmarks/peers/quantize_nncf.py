"""NNCF post-training quantization of the ONNX model: ``nncf.quantize`` over an ``nncf.Dataset`` of the calibration
rows (one row per item, all of them), with its default preset, and with ``model_type=TRANSFORMER`` (NNCF's advice
for models with attention, which keeps some operations in float)."""

from __future__ import annotations

import nncf
import onnx
from _peer import done, load_feeds, parse, rows

VARIANTS = ("static", "static-transformer")


def main() -> None:
    args = parse(VARIANTS)
    feeds = load_feeds(args.calibration)
    n = rows(feeds)
    items = [{k: v[i : i + 1] for k, v in feeds.items()} for i in range(n)]  # (1, ...) per input
    dataset = nncf.Dataset(items)  # each item is already the model's feed dict
    extra = {"model_type": nncf.ModelType.TRANSFORMER} if args.variant == "static-transformer" else {}
    model = onnx.load(args.model)
    quantized = nncf.quantize(model, dataset, subset_size=n, **extra)
    onnx.save(quantized, args.out)
    done(args.out, api="nncf.quantize", subset_size=n, **{k: str(v) for k, v in extra.items()})


if __name__ == "__main__":
    main()
