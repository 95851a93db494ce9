"""PyTorch eager vs ONNX Runtime fp32 on the default model, batch 1 and 32, interleaved in one run.

Both runtimes get the same real test inputs and the same thread count. Rounds alternate the order
(A B, B A, ...) so drift on a shared machine hits both alike; medians and ratios are reported.

    python benchmarks/latency.py         -> benchmarks/results/latency.{json,md}
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from _common import write_results
from mmedge.models.checkpoint import load_checkpoint
from mmedge.pipeline import run_recipe
from mmedge.recipe import load_recipe
from mmedge.report.markdown import table
from mmedge.runtime.bench import machine_info, tile_batch
from mmedge.runtime.inputs import split_feeds
from mmedge.runtime.session import open_session

ROUNDS = 40
CALLS_PER_ROUND = 10
WARMUP = 30


def main() -> None:
    records = run_recipe(load_recipe(), progress=False)  # cached after `make demo`
    export = next(i for i, r in enumerate(records) if r.config.type == "export")
    ckpt_path = records[export - 1].result.artifact.path  # the PyTorch model that export turned into ONNX
    onnx_path = records[export].result.artifact.path
    model = load_checkpoint(ckpt_path).model.eval()
    samples = split_feeds(onnx_path, n=64)
    rows = []
    data = {"model": str(onnx_path), "machine": machine_info(), "torch": torch.__version__, "results": []}
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        sess = open_session(onnx_path, "cpu", threads=threads)
        for batch in (1, 32):
            feeds = tile_batch(samples, batch)
            tensors = [torch.from_numpy(feeds[k]) for k in ("image", "input_ids", "attention_mask")]

            def run_torch(tensors=tensors):
                with torch.inference_mode():
                    model(*tensors)

            def run_ort(sess=sess, feeds=feeds):
                sess.run(None, feeds)

            variants = {"pytorch-eager": run_torch, "onnxruntime": run_ort}
            times: dict[str, list[float]] = {k: [] for k in variants}
            for fn in variants.values():
                for _ in range(WARMUP):
                    fn()
            for r in range(ROUNDS):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    for _ in range(CALLS_PER_ROUND):
                        t0 = time.perf_counter()
                        variants[name]()
                        times[name].append((time.perf_counter() - t0) * 1e3)
            med = {k: float(np.median(v)) for k, v in times.items()}
            p90 = {k: float(np.percentile(v, 90)) for k, v in times.items()}
            ratio = med["onnxruntime"] / med["pytorch-eager"]
            data["results"].append(
                {
                    "threads": threads,
                    "batch": batch,
                    "median_ms": med,
                    "p90_ms": p90,
                    "ort_over_torch": ratio,
                    "calls": ROUNDS * CALLS_PER_ROUND,
                }
            )
            rows.append(
                [
                    str(threads),
                    str(batch),
                    f"{med['pytorch-eager']:.3f}",
                    f"{med['onnxruntime']:.3f}",
                    f"{p90['pytorch-eager']:.3f}",
                    f"{p90['onnxruntime']:.3f}",
                    f"{ratio:.2f}×",
                ]
            )
    md = "\n".join(
        [
            "# Latency — PyTorch eager vs ONNX Runtime fp32 (the default recipe's exported model)",
            "",
            f"Interleaved: {ROUNDS} rounds × {CALLS_PER_ROUND} calls per variant, alternating order; real test inputs.",
            "",
            table(
                ["threads", "batch", "torch p50 ms", "ORT p50 ms", "torch p90 ms", "ORT p90 ms", "ORT / torch"], rows
            ),
            "",
            f"Machine: {data['machine']['cpu']}, {data['machine']['logical_cores']} logical cores; torch "
            f"{torch.__version__}, onnxruntime {data['machine']['onnxruntime']}.",
            "",
        ]
    )
    write_results("latency", data, md)


if __name__ == "__main__":
    main()
