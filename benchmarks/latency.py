"""PyTorch eager vs ONNX Runtime fp32 on the default model, batch 1 and 32, interleaved in one run.

Both runtimes get the same real test inputs and the same thread count. They are timed by mmedge's comparison
harness (``compare_callables``): rounds alternate the order (A B, B A, ...) so drift on a shared machine hits both
alike; medians are reported, and the ratio round by round with its p10-p90 interval.

    python benchmarks/latency.py         -> benchmarks/results/latency.{json,md}
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from _common import machine_sentence, write_results
from mmedge.models.checkpoint import load_checkpoint
from mmedge.pipeline import run_recipe
from mmedge.provenance import collect
from mmedge.recipe import load_recipe
from mmedge.report.markdown import table
from mmedge.runtime.bench import compare_callables, machine_info, tile_batch
from mmedge.runtime.inputs import split_feeds
from mmedge.runtime.session import open_session

ROUNDS = 40
CALLS_PER_ROUND = 10
WARMUP = 30


def main() -> None:
    provenance = collect()  # the code as it was when the run started
    records = run_recipe(load_recipe(), progress=False)  # cached after `make demo`
    export = next(i for i, r in enumerate(records) if r.config.type == "export")
    ckpt_path = records[export - 1].result.artifact.path  # the PyTorch model that export turned into ONNX
    onnx_path = records[export].result.artifact.path
    model = load_checkpoint(ckpt_path).model.eval()
    samples = split_feeds(onnx_path, n=64)
    rows = []
    data = {
        "model": str(onnx_path),
        "provenance": provenance,
        "machine": machine_info(with_provenance=False),
        "results": [],
    }
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

            c = compare_callables(
                {"pytorch-eager": run_torch, "onnxruntime": run_ort},
                ep="cpu",
                threads=threads,
                batch_size=batch,
                rounds=ROUNDS,
                calls_per_round=CALLS_PER_ROUND,
                warmup=WARMUP,
            )
            med = {k: t.p50_ms for k, t in c.candidates.items()}
            p90 = {k: t.p90_ms for k, t in c.candidates.items()}
            lo, ratio, hi = c.ratio_interval("onnxruntime", "pytorch-eager")  # per round: ORT time / torch time
            data["results"].append(
                {
                    "threads": threads,
                    "batch": batch,
                    "median_ms": med,
                    "p90_ms": p90,
                    "ort_over_torch": ratio,
                    "ort_over_torch_p10_p90": [lo, hi],
                    "equally_fast": c.equally_fast("onnxruntime", "pytorch-eager"),
                    "calls": c.rounds * c.calls_per_round,
                    "comparison": c.to_json(),
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
                    f"{ratio:.2f}× ({lo:.2f}–{hi:.2f})",
                ]
            )
    md = "\n".join(
        [
            "# Latency — PyTorch eager vs ONNX Runtime fp32 (the default recipe's exported model)",
            "",
            f"Interleaved: {ROUNDS} rounds × {CALLS_PER_ROUND} calls per variant, alternating order; real test inputs. "
            "ORT / torch: the median over rounds of the ratio within a round, with its p10–p90 interval.",
            "",
            table(
                ["threads", "batch", "torch p50 ms", "ORT p50 ms", "torch p90 ms", "ORT p90 ms", "ORT / torch"], rows
            ),
            "",
            f"{machine_sentence(provenance)} torch {provenance['packages']['torch']}.",
            "",
        ]
    )
    write_results("latency", data, md)


if __name__ == "__main__":
    main()
