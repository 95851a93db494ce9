"""Wall time of each step of the default recipe, run from scratch (no cache) into a temporary folder.

python benchmarks/pipeline.py        -> benchmarks/results/pipeline.{json,md}
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_sentence, write_results
from mmedge.pipeline import run_recipe
from mmedge.provenance import collect
from mmedge.recipe import load_recipe
from mmedge.report.markdown import table
from mmedge.runtime.bench import machine_info


def main() -> None:
    provenance = collect()  # the code as it was when the run started
    base = load_recipe()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = base.model_copy(update={"workdir": Path(tmp) / "runs", "output": Path(tmp) / "bundle"})
        started = time.perf_counter()
        records = run_recipe(recipe, force=True, progress="off")
        total = time.perf_counter() - started
    steps = [{"step": r.config.type, "seconds": round(r.seconds, 2)} for r in records]
    val = next(r.result.metrics for r in records if r.config.type == "validate")
    train = records[0].result.metrics
    data = {
        "recipe": base.name,
        "total_seconds": round(total, 2),
        "steps": steps,
        "provenance": provenance,
        "machine": machine_info(with_provenance=False),
        "test_accuracy": val.test.accuracy,
        "epochs_run": train.epochs_run,
    }
    md = "\n".join(
        [
            "# Pipeline wall time — default recipe (digits-vqa, cnn-lstm)",
            "",
            table(
                ["step", "seconds"], [[s["step"], f"{s['seconds']:.1f}"] for s in steps] + [["total", f"{total:.1f}"]]
            ),
            "",
            f"Test accuracy {val.test.accuracy:.2%} after {train.epochs_run} epochs.",
            "",
            machine_sentence(provenance),
            "",
        ]
    )
    write_results("pipeline", data, md)


if __name__ == "__main__":
    main()
