"""The shipped bundles on every execution provider this machine has, interleaved, with the report and plots.

Every registered EP is asked for; those this onnxruntime lacks are recorded as unavailable (never a number).
A bundle that ships a float32 model is also timed as a float16 copy: on CPU fp16 is expected to be slower (no fp16
kernels), on CUDA it is the comparison that matters; an int8 bundle has no float16 copy (``fp16_not_made``). With
onnxruntime-gpu on an NVIDIA machine the same command records the CUDA (I/O binding) and TensorRT rows.

    python benchmarks/eps.py    -> benchmarks/results/eps-<machine>/{results.json, report.md, plots/}
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

from mmedge.compress.quantize.fp16 import Fp16Config, fp16_model
from mmedge.export.mobile import QUANTIZED_OPS
from mmedge.report.render import write_report
from mmedge.runtime.bench import bench_matrix
from mmedge.runtime.evaluate import evaluate_model
from mmedge.runtime.inputs import bundle_feeds
from mmedge.runtime.providers import PROVIDERS, available
from mmedge.summary import onnx_summary

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = {"cnn-lstm": ROOT / "exported" / "digits-vqa", "vit": ROOT / "exported" / "digits-vqa-vit"}


def main() -> None:
    gpu = "cuda" in available()
    out = ROOT / "benchmarks" / "results" / f"eps-{'gpu' if gpu else 'cpu'}-{platform.machine()}"
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: b / "model.onnx" for name, b in BUNDLES.items()}
        feeds = {name: bundle_feeds(b) for name, b in BUNDLES.items()}
        # A float16 copy is the GPU comparison for a float32 bundle; an int8 bundle has no float16 counterpart.
        skipped = []
        for name in list(BUNDLES):
            if QUANTIZED_OPS & set(onnx_summary(models[name])["op_types"]):
                skipped.append(name)
                continue
            models[f"{name} fp16"] = Path(tmp) / f"{name}-fp16.onnx"
            fp16_model(models[name], models[f"{name} fp16"], Fp16Config())
            feeds[f"{name} fp16"] = feeds[name]
        doc = bench_matrix(
            models,
            feeds,
            list(PROVIDERS),
            [1, 2],
            [1, 8, 32],
            rounds=20,
            calls=10,
            warmup=20,
            allow_missing=True,
        )
        for name, path in models.items():
            doc["models"][name]["accuracy"] = evaluate_model(path, ablation=False)[0]["test"]["accuracy"]
            doc["models"][name]["path"] = path.name if name.endswith("fp16") else str(path.relative_to(ROOT))
    doc["fp16_not_made"] = {name: "the bundle ships an int8 model" for name in skipped}
    write_report(doc, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
