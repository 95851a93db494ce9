"""Olive: a one-pass workflow, OnnxStaticQuantization or OnnxDynamicQuantization with the passes' defaults (static:
QDQ, int8 weights and activations, per-tensor, MinMax, Olive's quantization pre-processing), on the local CPU.

The calibration rows reach Olive as a data config whose dataset is registered by this file (Olive imports it as
the workflow's user script): the npz batches, already stacked, through Olive's ``no_auto_batch_dataloader``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")  # nothing leaves the machine

from _peer import batches, done, load_feeds, parse
from olive.data.registry import Registry

VARIANTS = ("static", "dynamic")
PASSES = {"static": "OnnxStaticQuantization", "dynamic": "OnnxDynamicQuantization"}


@Registry.register_dataset()
def mmedge_calibration(npz: str, **kwargs):
    """The calibration batches as Olive's (inputs, label) items; the label is unused by calibration."""
    return [(batch, 0) for batch in batches(load_feeds(Path(npz)))]


def main() -> None:
    from olive.workflows import run as olive_run

    args = parse(VARIANTS)
    quant = {"type": PASSES[args.variant]}
    with tempfile.TemporaryDirectory(prefix="peers-olive-") as tmp:
        config = {
            "input_model": {"type": "ONNXModel", "model_path": str(args.model.resolve())},
            "systems": {
                "local": {
                    "type": "LocalSystem",
                    "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
                }
            },
            "passes": {"quantization": quant},
            "host": "local",
            "target": "local",
            "evaluate_input_model": False,
            "log_severity_level": 3,
            "cache_dir": str(Path(tmp) / "cache"),
            "output_dir": str(Path(tmp) / "out"),
        }
        if args.variant == "static":
            config["data_configs"] = [
                {
                    "name": "calibration",
                    "user_script": str(Path(__file__).resolve()),
                    "load_dataset_config": {
                        "type": "mmedge_calibration",
                        "params": {"npz": str(args.calibration.resolve())},
                    },
                    "dataloader_config": {"type": "no_auto_batch_dataloader"},
                }
            ]
            quant["data_config"] = "calibration"
        output = olive_run(config)
        best = output.get_best_candidate() if output is not None else None
        if best is None or best.model_path is None:
            raise RuntimeError(f"Olive's {PASSES[args.variant]} workflow produced no model")
        shutil.copyfile(best.model_path, args.out)
    done(args.out, api="olive.workflows.run", passes=[PASSES[args.variant]], pass_config="defaults")


if __name__ == "__main__":
    main()
