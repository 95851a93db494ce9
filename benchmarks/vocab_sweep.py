"""How far the easy-vqa recipe may cut MiniLM's vocabulary: accuracy of the trained model against ``vocab_size``.

``prune.structured`` with ``vocab_size: N`` keeps the N lowest WordPiece ids (BERT's most frequent pieces), every
one-character ``##x`` piece and every piece of the training and validation questions; a word outside them is spelt
from smaller pieces. Questions worded as in training never notice the cut; reworded questions do, as their words
may lie outside the kept pieces. So the choice is made on the validation paraphrases (the validation pictures asked
in wordings that neither training nor the test paraphrases use): the smallest N whose validation-paraphrase
accuracy is within ``--tolerance`` points of the whole vocabulary's. Test and test-paraphrase accuracy are reported
once, beside it, and take no part in the choice.

The model is the trained model of a run of the easy-vqa recipe (its ``train`` step folder), with nothing else
changed, so the figures show what the cut alone costs.

    python benchmarks/vocab_sweep.py --run .mmedge/runs/easy-vqa   -> benchmarks/results/vocab-sweep-easy-vqa.{json,md}
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_sentence, write_results
from mmedge.compress.prune import prune_vocabulary
from mmedge.data import DataConfig, load_dataset
from mmedge.models.checkpoint import load_checkpoint
from mmedge.provenance import collect
from mmedge.report.markdown import pct, table
from mmedge.runtime.evaluate import score
from mmedge.train import predict_split

GRID = (1000, 2000, 4000, 6000, 8000, 12000, 16000)
SPLITS = ("val", "val_paraphrase", "test", "paraphrase")


def accuracies(ckpt, data) -> dict[str, float]:
    return {
        name: score(predict_split(ckpt.model, getattr(data, name), ckpt.vocab), getattr(data, name)).accuracy
        for name in SPLITS
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder of the easy-vqa recipe")
    parser.add_argument("--tolerance", type=float, default=0.5, help="points of validation-paraphrase accuracy")
    args = parser.parse_args(argv)
    provenance = collect()
    trained = sorted(args.run.glob("01-train-*/checkpoint"))
    if not trained:
        sys.exit(f"{args.run} holds no train step folder (01-train-*); run `mmedge run easy-vqa` first.")
    data = load_dataset(DataConfig(name="easy-vqa"))
    rows = []
    for n in (None, *GRID):
        started = time.perf_counter()
        ckpt = load_checkpoint(trained[-1])
        sizes = {"pieces_after": len(ckpt.vocab)} if n is None else prune_vocabulary(ckpt, data, n)
        rows.append({"vocab_size": n, "pieces": sizes["pieces_after"], **accuracies(ckpt, data)})
        rows[-1]["seconds"] = time.perf_counter() - started
        print(rows[-1], flush=True)
    whole = rows[0]["val_paraphrase"]
    within = [r for r in rows[1:] if r["val_paraphrase"] >= whole - args.tolerance / 100]
    chosen = min(within, key=lambda r: r["vocab_size"])["vocab_size"] if within else None
    md = [
        "# MiniLM's vocabulary cut on easy-vqa: accuracy of the trained model against vocab_size",
        "",
        f"The trained model of `{args.run}` ({trained[-1].parent.name}), its vocabulary cut by "
        "`prune.structured`'s `vocab_size` and nothing else changed. Chosen on validation paraphrases: the "
        f"smallest vocab_size within {args.tolerance:g} points of the whole vocabulary's validation-paraphrase "
        f"accuracy, **{chosen}**. Test columns are reported, not used.",
        "",
        table(
            ["vocab_size", "pieces kept", "val", "val paraphrase", "test", "test paraphrase"],
            [
                [
                    "whole" if r["vocab_size"] is None else f"{r['vocab_size']:,}",
                    f"{r['pieces']:,}",
                    *(pct(r[s]) for s in SPLITS),
                ]
                for r in rows
            ],
        ),
        "",
        machine_sentence(provenance),
        "",
    ]
    write_results(
        "vocab-sweep-easy-vqa",
        {
            "provenance": provenance,
            "run": str(args.run),
            "tolerance_points": args.tolerance,
            "chosen": chosen,
            "rows": rows,
        },
        "\n".join(md),
    )


if __name__ == "__main__":
    main()
