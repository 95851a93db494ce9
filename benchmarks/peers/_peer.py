"""What every peer quantize script shares: its command line, the calibration feeds and the record it leaves.

The scripts run inside their tool's own virtualenv, so this module needs numpy and the standard library only (never
mmedge). A script is called as

    python quantize_<tool>.py --variant VARIANT --model fp32.onnx --calibration calibration.npz --out out.onnx

and writes ``out.onnx`` plus ``out.onnx.json`` (the tool's settings as used, for the results file). A failure is
an uncaught exception: its last traceback line is what the benchmark reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# Rows per calibration run for the tools that take batches (mmedge's CalibrationConfig.batch_size). MinMax ranges do
# not depend on how the rows are batched.
BATCH = 32


def parse(variants: tuple[str, ...]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=variants, required=True)
    p.add_argument("--model", type=Path, required=True, help="the fp32 ONNX model")
    p.add_argument("--calibration", type=Path, required=True, help=".npz: one (N, ...) array per model input")
    p.add_argument("--out", type=Path, required=True, help="the quantized ONNX model to write")
    return p.parse_args()


def load_feeds(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rows(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def batches(feeds: dict[str, np.ndarray], size: int = BATCH) -> list[dict[str, np.ndarray]]:
    """The calibration rows in order, ``size`` at a time: every tool sees the same rows."""
    return [{k: v[s : s + size] for k, v in feeds.items()} for s in range(0, rows(feeds), size)]


class Reader:
    """onnxruntime's CalibrationDataReader protocol (get_next/rewind) over the calibration batches; duck-typed so
    that it needs no import of the tool."""

    def __init__(self, feeds: dict[str, np.ndarray], size: int = BATCH):
        self.items = batches(feeds, size)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def rewind(self):
        self.i = 0

    def __len__(self):
        return len(self.items)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def done(out: Path, **settings) -> None:
    """Record the settings the tool ran with beside the model it wrote (``<out>.json``)."""
    if not out.is_file():
        raise FileNotFoundError(f"the tool wrote no model at {out}")
    Path(f"{out}.json").write_text(json.dumps(settings, indent=1, default=str) + "\n")
