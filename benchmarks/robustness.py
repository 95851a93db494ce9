"""Missing-modality robustness of the default cnn-lstm, trained with and without `modality_dropout`.

Every run uses the same seed, data, epochs and early stopping (no wall-clock cap); the only difference is the share
of training questions that see the image blanked or the text emptied. Test accuracy is reported with both inputs,
with the image missing (a blank frame) and with the text missing (an empty question).

    python benchmarks/robustness.py    -> benchmarks/results/robustness.{json,md}
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_sentence, write_results
from mmedge.data import DataConfig
from mmedge.provenance import collect
from mmedge.report.markdown import pct, table
from mmedge.runtime.bench import machine_info
from mmedge.train import TrainConfig, run_training

RATES = (0.0, 0.15, 0.3)
EPOCHS = 20


def main() -> None:
    provenance = collect()  # the code as it was when the run started
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in RATES:
            cfg = TrainConfig(epochs=EPOCHS, seed=0, modality_dropout=rate)
            _, m = run_training("cnn-lstm", {}, DataConfig(), cfg, Path(tmp) / f"r{rate}", progress="lines")
            runs.append(
                {
                    "modality_dropout": rate,
                    "epochs_run": m["epochs_run"],
                    "train_seconds": round(m["train_seconds"], 1),
                    "full": m["test"]["accuracy"],
                    "image_missing": m["image_blanked"]["accuracy"],
                    "text_missing": m["text_emptied"]["accuracy"],
                    "per_family": {
                        k: m[k]["per_family"] for k in ("test", "image_blanked", "text_emptied") if "per_family" in m[k]
                    },
                }
            )
    rows = [
        [
            f"{r['modality_dropout']:g}",
            str(r["epochs_run"]),
            pct(r["full"]),
            pct(r["image_missing"]),
            pct(r["text_missing"]),
        ]
        for r in runs
    ]
    md = "\n".join(
        [
            "# Missing-modality robustness: training with and without modality_dropout",
            "",
            f"cnn-lstm (default options), digits-vqa (MNIST), {EPOCHS} epochs max, seed 0; test split. "
            "Image missing = all-zero image; text missing = empty question.",
            "",
            table(["modality_dropout", "epochs", "both inputs", "image missing", "text missing"], rows),
            "",
            machine_sentence(provenance),
        ]
    )
    data = {"runs": runs, "provenance": provenance, "machine": machine_info(with_provenance=False)}
    write_results("robustness", data, md + "\n")


if __name__ == "__main__":
    main()
