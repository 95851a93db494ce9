"""easy-vqa baselines: what the answers' balance, the question alone and the picture alone already score.

A model trained on easy-vqa is worth its accuracy above these floors. Every baseline is fitted on the training split
(the package's 4,000 train pictures less the 400 carved for validation, seed 0), chosen on validation where it has
a choice, and scored on the test split and on the paraphrased test questions (the test pictures and answers, every
question reworded so that no wording is a training one):

- majority: always the most common training answer.
- text only: each question wording -> its most common training answer; a wording never seen in training (every
  paraphrase) gets the majority answer.
- image only: multinomial logistic regression from the picture alone (no question), on 16x16 RGB pixels (4x4 block
  means of the 64x64 picture, standardized on train), fitted by L-BFGS to every training question's answer, the L2
  penalty (on the summed squared weights) chosen on validation accuracy (ties: validation cross-entropy). A picture
  gets the same answer whatever it is asked.

Needs the easy-vqa package (pip install "mmedge[pretrained]") and torch for the L-BFGS fit.

    python benchmarks/easy_vqa_baselines.py    -> benchmarks/results/easy-vqa-baselines.{json,md}
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from _common import machine_sentence, write_results
from mmedge.data import DataConfig, load_dataset
from mmedge.data.digits_vqa import VQASplit
from mmedge.provenance import collect
from mmedge.report.markdown import pct, table
from mmedge.runtime.bench import machine_info

SEED = 0
BLOCK = 4  # 64x64 pictures -> 16x16 block means
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # weight of the summed squared weights in the image-only loss
SCORED = ("val", "test", "paraphrase")


def score(predicted: np.ndarray, split: VQASplit) -> dict:
    """Accuracy overall and per question family of predicted label ids (N,)."""
    hit = predicted == split.labels
    per_family = {
        name: float(hit[split.families == i].mean())
        for i, name in enumerate(split.family_names)
        if (split.families == i).any()
    }
    return {"accuracy": float(hit.mean()), "per_family": per_family}


def class_balance(splits: dict[str, VQASplit], classes: tuple[str, ...]) -> dict:
    """Questions per answer in each split, in the package's answer order."""
    return {
        name: dict(zip(classes, np.bincount(s.labels, minlength=len(classes)).tolist(), strict=True))
        for name, s in splits.items()
    }


def majority(train: VQASplit, splits: dict[str, VQASplit]) -> tuple[int, dict]:
    label = int(np.bincount(train.labels).argmax())
    return label, {n: score(np.full(len(s), label), s) for n, s in splits.items()}


def text_only(train: VQASplit, splits: dict[str, VQASplit], fallback: int) -> tuple[dict, dict]:
    """Each training wording's most common answer (ties: the answer first in the package's order)."""
    counts: dict[str, Counter] = {}
    for text, label in zip(train.texts, train.labels, strict=True):
        counts.setdefault(text, Counter())[int(label)] += 1
    answer = {t: min(c, key=lambda k: (-c[k], k)) for t, c in counts.items()}
    scores = {}
    for name, s in splits.items():
        predicted = np.asarray([answer.get(t, fallback) for t in s.texts])
        scores[name] = score(predicted, s) | {"unseen_wordings": sum(t not in answer for t in s.texts)}
    return answer, scores


def features(split: VQASplit) -> np.ndarray:
    """(M, 768) float32: each picture as 16x16 RGB block means in [0, 1]."""
    x = np.stack(list(split.images)).astype(np.float32) / 255.0  # (M, 64, 64, 3)
    m, h, w, c = x.shape
    return x.reshape(m, h // BLOCK, BLOCK, w // BLOCK, BLOCK, c).mean((2, 4)).reshape(m, -1)


def image_only(train: VQASplit, splits: dict[str, VQASplit], classes: tuple[str, ...]) -> dict:
    """Logistic regression from the picture to the answer, fitted on every training question (as answer counts per
    picture: the same loss), L2 weight chosen on validation."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # a small fit: on a shared CPU more threads are slower, not faster
    x_train = features(train)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    counts = np.zeros((len(train.images), len(classes)), np.float32)  # (M, 13) answers asked of each picture
    np.add.at(counts, (train.image_index, train.labels), 1.0)
    xt, ct = torch.from_numpy((x_train - mean) / std), torch.from_numpy(counts)
    picture_x = {n: torch.from_numpy((features(s) - mean) / std) for n, s in splits.items()}

    def fit(l2: float) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.zeros(xt.shape[1], len(classes), requires_grad=True)
        b = torch.zeros(len(classes), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            logp = torch.log_softmax(xt @ w + b, dim=1)
            loss = -(ct * logp).sum() / ct.sum() + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach(), b.detach()

    def predict(w, b, name: str) -> tuple[np.ndarray, float]:
        s = splits[name]
        logp = torch.log_softmax(picture_x[name] @ w + b, dim=1)[torch.from_numpy(s.image_index)]  # (N, 13)
        xent = float(-logp[torch.arange(len(s)), torch.from_numpy(s.labels)].mean())
        return logp.argmax(1).numpy(), xent

    trials, fitted = [], {}
    for l2 in L2_GRID:
        fitted[l2] = fit(l2)
        predicted, xent = predict(*fitted[l2], "val")
        trials.append({"l2": l2, "val_accuracy": score(predicted, splits["val"])["accuracy"], "val_xent": xent})
    best = max(trials, key=lambda t: (t["val_accuracy"], -t["val_xent"]))
    w, b = fitted[best["l2"]]
    scores, answered = {}, {}
    for name in splits:
        predicted, _ = predict(w, b, name)
        scores[name] = score(predicted, splits[name])
        answered[name] = {classes[k]: n for k, n in sorted(Counter(predicted.tolist()).items())}
    return {"l2": best["l2"], "trials": trials, "scores": scores, "answers_given": answered}


def main() -> None:
    provenance = collect()  # the code as it was when the run started
    cfg = DataConfig(name="easy-vqa", seed=SEED)
    data = load_dataset(cfg)
    classes = data.classes
    every = {"train": data.train, "val": data.val, "test": data.test, "paraphrase": data.paraphrase}
    scored = {n: every[n] for n in SCORED}
    balance = class_balance(every, classes)
    label, major = majority(data.train, scored)
    answers, text = text_only(data.train, scored, label)
    image = image_only(data.train, scored, classes)
    baselines = [
        {
            "name": "majority",
            "how": f"always '{classes[label]}', the most common answer of the training split",
            "scores": major,
        },
        {
            "name": "text only",
            "how": f"each of the {len(answers)} training wordings -> its most common training answer; a wording "
            f"not seen in training -> '{classes[label]}' (the majority answer)",
            "scores": text,
        },
        {
            "name": "image only",
            "how": f"multinomial logistic regression on 16x16 RGB block means of the picture (no question), fitted "
            f"by L-BFGS on every training question, L2 penalty {image['l2']:g} chosen on validation accuracy from "
            f"{', '.join(f'{v:g}' for v in L2_GRID)}",
            "scores": image["scores"],
            "l2_trials": image["trials"],
            "answers_given": image["answers_given"],
        },
    ]
    dataset = {
        "config": cfg.model_dump(mode="json"),
        "split": data.split_info.to_json(),
        "paraphrase_questions": len(data.paraphrase),
        "distinct_wordings": {n: len(set(s.texts)) for n, s in every.items()},
        "paraphrase_wordings_in_train": len(set(data.paraphrase.texts) & set(data.train.texts + data.val.texts)),
    }
    results = {
        "dataset": dataset,
        "class_balance": balance,
        "baselines": baselines,
        "provenance": provenance,
        "machine": machine_info(with_provenance=False),
    }
    write_results("easy-vqa-baselines", results, markdown(results, classes) + "\n")


def markdown(results: dict, classes: tuple[str, ...]) -> str:
    ds, balance = results["dataset"], results["class_balance"]
    totals = {n: sum(c.values()) for n, c in balance.items()}
    balance_rows = [
        [answer] + [f"{balance[n][answer]:,} ({balance[n][answer] / totals[n] * 100:.1f}%)" for n in balance]
        for answer in classes
    ]
    balance_rows.append(["all"] + [f"{totals[n]:,}" for n in balance])
    families = list(results["baselines"][0]["scores"]["test"]["per_family"])
    rows = []
    for b in results["baselines"]:
        s = b["scores"]
        rows.append(
            [b["name"], pct(s["val"]["accuracy"]), pct(s["test"]["accuracy"])]
            + [pct(s["test"]["per_family"][f]) for f in families]
            + [pct(s["paraphrase"]["accuracy"])]
        )
    how = [f"- **{b['name']}**: {b['how']}." for b in results["baselines"]]
    image = results["baselines"][2]
    trials = ", ".join(f"{t['l2']:g}: {pct(t['val_accuracy'])}" for t in image["l2_trials"])
    given = ", ".join(f"'{k}' {v:,}" for k, v in image["answers_given"]["test"].items())
    split = ds["split"]
    return "\n".join(
        [
            "# easy-vqa baselines: majority answer, question only, picture only",
            "",
            f"The easy-vqa package's pictures and questions (MIT), seed {ds['config']['seed']}: "
            + ", ".join(f"{n} {split['images'][n]:,} pictures ({split['rows'][n]:,} questions)" for n in split["rows"])
            + f"; split {split['rule']}. The paraphrase set asks the {split['images']['test']:,} test pictures "
            f"{ds['paraphrase_questions']:,} questions with the test answers, reworded into "
            f"{ds['distinct_wordings']['paraphrase']} wordings of which {ds['paraphrase_wordings_in_train']} occur in "
            f"train or val (the package's questions use {ds['distinct_wordings']['test']} wordings, shared by train "
            "and test).",
            "",
            "## Accuracy",
            "",
            table(
                ["baseline", "val", "test"] + [f"test: {f}" for f in families] + ["paraphrase (test pictures)"], rows
            ),
            "",
            *how,
            "",
            f"Image only, validation accuracy per L2 penalty: {trials}. On test it answers {given}: the picture alone "
            "cannot tell which question is asked, so it gives each picture the answer most likely to any question.",
            "",
            "## Class balance (questions per answer)",
            "",
            table(["answer", *balance], balance_rows),
            "",
            machine_sentence(results["provenance"]),
        ]
    )


if __name__ == "__main__":
    main()
