"""The default recipe on a quiet machine and on a busy one: the same model must come out.

Training stops by epochs and early stopping on validation, never by the clock (unless a recipe sets max_minutes), so
a machine whose cores are taken by other work trains longer but not differently. This runs the default recipe from
scratch twice into temporary folders: once quiet, once with one busy process per core, and compares what each run
decided and measured.

    python benchmarks/under_load.py    -> benchmarks/results/under-load.{json,md}
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_sentence, write_results
from mmedge.pipeline import run_recipe
from mmedge.provenance import collect
from mmedge.recipe import load_recipe
from mmedge.report.markdown import pct, table

BUSY = "while True: pass"  # one spinning Python process per core


def run(busy: int, root: Path) -> dict:
    recipe = load_recipe(edit=lambda d: {**d, "workdir": str(root / "runs"), "output": str(root / "bundle")})
    load = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    try:
        records = run_recipe(recipe, force=True, progress="off")
    finally:
        for p in load:
            p.kill()
    by_type = {r.config.type: r for r in records}
    train, auto, shipped = (by_type[t].result.metrics for t in ("train", "quantize.auto", "validate"))
    return {
        "busy_processes": busy,
        "train_seconds": round(train.train_seconds, 1),
        "epochs_run": train.epochs_run,
        "stopped": train.stopped,
        "teacher_test_accuracy": train.test.accuracy,
        "chosen": auto.chosen,
        "chosen_latency_ratio": auto.choice.latency_ratio,
        "shipped_test_accuracy": shipped.test.accuracy,
    }


def main() -> None:
    provenance = collect()  # the code as it was when the run started
    cores = os.cpu_count() or 1
    rows = []
    for busy in (0, cores):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(run(busy, Path(tmp)))
    data = {"provenance": provenance, "runs": rows}
    md = "\n".join(
        [
            "# The default recipe, quiet and under load",
            "",
            f"Each run from scratch; under load, {cores} other processes spin, one per core.",
            "",
            table(
                ["busy processes", "train s", "epochs", "stopped by", "teacher test", "chosen", "shipped test"],
                [
                    [
                        str(r["busy_processes"]),
                        f"{r['train_seconds']:.0f}",
                        str(r["epochs_run"]),
                        r["stopped"],
                        pct(r["teacher_test_accuracy"]),
                        r["chosen"],
                        pct(r["shipped_test_accuracy"]),
                    ]
                    for r in rows
                ],
            ),
            "",
            machine_sentence(provenance),
        ]
    )
    write_results("under-load", data, md)


if __name__ == "__main__":
    main()
