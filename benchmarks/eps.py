"""The shipped bundles on every execution provider this machine has, interleaved, with the report and plots.

Every registered EP is asked for; those this onnxruntime lacks are recorded as unavailable (never a number).
The float32 bundle is also timed as a float16 copy: on CPU fp16 is expected to be slower (no fp16 kernels),
on CUDA it is the comparison that matters. With onnxruntime-gpu on an NVIDIA machine the same command
records the CUDA (I/O binding) and TensorRT rows.

    python benchmarks/eps.py    -> benchmarks/results/eps-<machine>/{results.json, report.md, plots/}
"""

from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

from mmedge.compress.quantize.fp16 import Fp16Config, fp16_model
from mmedge.report.render import write_report
from mmedge.runtime.bench import bench_matrix
from mmedge.runtime.evaluate import evaluate_model
from mmedge.runtime.inputs import bundle_feeds
from mmedge.runtime.providers import PROVIDERS, available

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = {"cnn-lstm": ROOT / "exported" / "digits-vqa", "vit": ROOT / "exported" / "digits-vqa-vit"}


def main() -> None:
    gpu = "cuda" in available()
    out = ROOT / "benchmarks" / "results" / f"eps-{'gpu' if gpu else 'cpu'}-{platform.machine()}"
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: b / "model.onnx" for name, b in BUNDLES.items()}
        feeds = {name: bundle_feeds(b) for name, b in BUNDLES.items()}
        models["cnn-lstm fp16"] = Path(tmp) / "fp16.onnx"
        fp16_model(models["cnn-lstm"], models["cnn-lstm fp16"], Fp16Config())
        feeds["cnn-lstm fp16"] = feeds["cnn-lstm"]
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
    write_report(doc, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
