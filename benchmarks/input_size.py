"""Which input side the easy-vqa recipe feeds EfficientNet-Lite0: accuracy and image-tower latency against the side.

easy-VQA's pictures are 64×64; EfficientNet-Lite0 was trained on ImageNet at 224. Upsampling the pictures may let
the frozen ImageNet features see the shapes better, at a latency that grows with the pixel count. For each side the
recipe's train step runs as the recipe configures it (towers frozen, their outputs cached, the fusion head trained,
the best epoch on validation kept), and the trained model is scored on the validation split and the validation
paraphrases. The choice is made there: the smallest side whose validation accuracy is within the recipe's accuracy
budget (``budgets.max_accuracy_drop``, the points the whole chain may lose) of the best side's, as a larger side
costs latency on every call. The test split takes no part.

Latency: the image tower alone (EfficientNet-Lite0 and its projection, ``encode_image``) in PyTorch, one thread,
batch 1 and 32, every side in the same alternating rounds; the median per side and its per-round ratio to the
native side (p10, p50, p90).

    python benchmarks/input_size.py   -> benchmarks/results/input-size-easy-vqa.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from _common import machine_sentence, write_results
from mmedge.data import DataConfig
from mmedge.provenance import collect
from mmedge.recipe import load_recipe
from mmedge.report.markdown import pct, table
from mmedge.runtime.evaluate import score
from mmedge.train import TrainConfig, build_for_data, predict_split, train_model

SIDES = (64, 96, 128)
BATCHES = (1, 32)
NATIVE = 64


def train_at(side: int, cfg: TrainConfig, data_cfg: DataConfig) -> tuple[object, dict]:
    """The recipe's train step at input side ``side``: the trained model and its validation figures."""
    started = time.perf_counter()
    data, vocab, model = build_for_data("effnet-minilm", {"image_size": side}, data_cfg, cfg.seed)
    model, history = train_model(model, data, vocab, cfg)
    model.eval()
    figures = {
        split: score(predict_split(model, getattr(data, split), vocab), getattr(data, split)).accuracy
        for split in ("val", "val_paraphrase")
    }
    return model, {"side": side, **figures, "epochs_run": len(history), "seconds": time.perf_counter() - started}


def image_latency(models: dict[int, object], rounds: int, calls: int) -> dict[str, dict]:
    """Per batch size: {side: median ms} and {side: (p10, p50, p90) of the per-round ratio to the native side}, the
    image tower of every side timed in the same alternating rounds on one thread."""
    import torch

    torch.set_num_threads(1)
    out = {}
    for batch in BATCHES:
        inputs = {s: torch.rand(batch, 3, s, s) for s in models}
        per_round = {s: [] for s in models}
        with torch.no_grad():
            for s, m in models.items():  # warm-up
                for _ in range(3):
                    m.encode_image(inputs[s])
            for _ in range(rounds):
                for s, m in models.items():
                    times = []
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        m.encode_image(inputs[s])
                        times.append((time.perf_counter() - t0) * 1000)
                    per_round[s].append(float(np.median(times)))
        ratios = {
            s: [float(x) for x in np.percentile(np.asarray(v) / np.asarray(per_round[NATIVE]), [10, 50, 90])]
            for s, v in per_round.items()
        }
        out[str(batch)] = {"p50_ms": {s: float(np.median(v)) for s, v in per_round.items()}, "ratio": ratios}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tolerance", type=float, help="points of validation accuracy; default: the recipe's accuracy budget"
    )
    parser.add_argument("--rounds", type=int, default=15, help="alternating timing rounds per batch size")
    args = parser.parse_args(argv)
    provenance = collect()
    recipe = load_recipe("easy-vqa")
    if args.tolerance is None:
        args.tolerance = recipe.budgets.max_accuracy_drop
    train = next(s for s in recipe.steps if s.type == "train")
    cfg = TrainConfig(**train.model_dump(exclude={"type"}))
    models, rows = {}, []
    for side in SIDES:
        models[side], row = train_at(side, cfg, recipe.data)
        rows.append(row)
        print(row, flush=True)
    timing = image_latency(models, args.rounds, calls=5)
    best = max(r["val"] for r in rows)
    chosen = min(r["side"] for r in rows if r["val"] >= best - args.tolerance / 100)
    md = [
        "# EfficientNet-Lite0's input side on easy-vqa: validation accuracy and image-tower latency",
        "",
        "The easy-vqa recipe's train step (towers frozen, the head trained on cached tower outputs, the best epoch on "
        "validation kept) at each input side; the pictures are 64×64 and are resized to the side. Chosen on "
        f"validation: the smallest side within {args.tolerance:g} point(s) (the recipe's accuracy budget) of the best "
        "validation accuracy, "
        f"**{chosen}**. Latency: the image tower alone (`encode_image`) in PyTorch, 1 thread, {args.rounds} "
        "alternating rounds per batch size; median ms and the per-round ratio to the native side (p10–p50–p90).",
        "",
        table(
            ["side", "val", "val paraphrase", "epochs", "p50 ms b1", "ratio b1", "p50 ms b32", "ratio b32"],
            [
                [
                    str(r["side"]),
                    pct(r["val"]),
                    pct(r["val_paraphrase"]),
                    str(r["epochs_run"]),
                    *(
                        x
                        for b in ("1", "32")
                        for x in (
                            f"{timing[b]['p50_ms'][r['side']]:.2f}",
                            "–".join(f"{v:.2f}" for v in timing[b]["ratio"][r["side"]]),
                        )
                    ),
                ]
                for r in rows
            ],
        ),
        "",
        machine_sentence(provenance),
        "",
    ]
    write_results(
        "input-size-easy-vqa",
        {
            "provenance": provenance,
            "train": cfg.model_dump(mode="json"),
            "tolerance_points": args.tolerance,
            "chosen": chosen,
            "rows": rows,
            "latency": timing,
        },
        "\n".join(md),
    )


if __name__ == "__main__":
    main()
