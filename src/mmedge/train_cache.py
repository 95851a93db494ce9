"""Training and prediction of late-fusion models with each tower's frozen part run once, not once per question.

A late-fusion model (``model.late_fusion``: logits = fuse(encode_image(image), encode_text(text))) answers every
question of an image from one image encoding, and every question string from one text encoding. easy-VQA has 4,000
training images and 107 distinct question strings behind its 38,575 questions, so scoring a split through these
encodings is exact and runs the image tower once per picture and the text tower 107 times, where one forward pass
per question would run each of them 38,575 times. When a tower is frozen
up to some layer, the activations there are computed once for the whole run, and each training step runs only the
layers that train (``image_prefix`` / ``image_suffix``, ``text_prefix`` / ``text_suffix``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

CHUNK = 256  # images or texts per forward pass while the caches are filled


class SplitCache:
    """The frozen prefixes of one split: per distinct image (``images``; a blank image last) and per distinct
    question string (``texts``; the empty question last), with each question's row into both."""

    def __init__(self, model, split, vocab):
        prep = model.spec().image
        with torch.no_grad():
            model.eval()
            picked = np.unique(split.image_index)
            slot = np.full(len(split.images), -1, dtype=np.int64)
            slot[picked] = np.arange(len(picked))
            parts = [
                model.image_prefix(torch.from_numpy(split.pictures(picked[i : i + CHUNK], prep)))
                for i in range(0, len(picked), CHUNK)
            ]
            blank = torch.zeros((1, prep.channels, prep.height, prep.width))
            self.images = torch.cat([*parts, model.image_prefix(blank)])  # (M + 1, ...)
            self.image_row = torch.from_numpy(slot[split.image_index])  # (N,)
            strings = sorted(set(split.texts))
            index = {t: i for i, t in enumerate(strings)}
            ids, mask = vocab.encode([*strings, ""])
            ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
            self.texts = torch.cat(
                [model.text_prefix(ids[i : i + CHUNK], mask[i : i + CHUNK]) for i in range(0, len(ids), CHUNK)]
            )  # (S + 1, ...)
            self.masks = mask  # (S + 1, T)
            self.text_row = torch.tensor([index[t] for t in split.texts], dtype=torch.int64)  # (N,)
        self.blank_image = len(self.images) - 1
        self.empty_text = len(self.texts) - 1

    def logits(
        self, model, rows: torch.Tensor | None = None, image_rows=None, text_rows=None, batch: int = 4096
    ) -> torch.Tensor:
        """Logits (n, answers) of the questions ``rows`` (default: all), each tower's trained part run once per
        distinct image and text among them; ``image_rows`` / ``text_rows`` override the cache rows (a blanked image
        or emptied question)."""
        rows = torch.arange(len(self.image_row)) if rows is None else rows
        image_rows = self.image_row[rows] if image_rows is None else image_rows
        text_rows = self.text_row[rows] if text_rows is None else text_rows
        used_images, image_at = torch.unique(image_rows, return_inverse=True)
        used_texts, text_at = torch.unique(text_rows, return_inverse=True)
        image = model.image_suffix(self.images[used_images])  # (distinct images, F)
        text = model.text_suffix(self.texts[used_texts], self.masks[used_texts])  # (distinct texts, F)
        return torch.cat(
            [
                model.fuse(image[image_at[s : s + batch]], text[text_at[s : s + batch]])
                for s in range(0, len(rows), batch)
            ]
        )


def predict_cached(model, split, vocab, blank_image: bool = False, empty_text: bool = False) -> np.ndarray:
    """``train.predict_split`` for a late-fusion model: the same logits, from one encoding per image and string."""
    cache = SplitCache(model, split, vocab)
    n = len(cache.image_row)
    with torch.no_grad():
        model.eval()
        logits = cache.logits(
            model,
            image_rows=torch.full((n,), cache.blank_image) if blank_image else None,
            text_rows=torch.full((n,), cache.empty_text) if empty_text else None,
        )
    return logits.float().numpy()


def train_cached(model, data, vocab, cfg, on_epoch: Callable[[dict], None] | None = None):
    """``train.train_model`` for a late-fusion model (same schedule, early stopping and history): the frozen
    prefixes of train and val are computed once; each step runs the trained layers on a batch of questions."""
    from mmedge.epochs import BestEpoch, warmup_cosine
    from mmedge.runtime.evaluate import score

    gen = torch.Generator().manual_seed(cfg.seed)
    keeper = BestEpoch(model, cfg, on_epoch)
    train, val = SplitCache(model, data.train, vocab), SplitCache(model, data.val, vocab)
    targets = torch.from_numpy(data.train.labels)
    n = len(targets)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    sched = warmup_cosine(opt, steps_per_epoch, steps_per_epoch * cfg.epochs)
    by_image = train.images.dim() > 2  # image layers train: batches of whole pictures run each one once per step
    for epoch in range(cfg.epochs):
        model.train()
        order = _grouped_order(train.image_row, gen) if by_image else torch.randperm(n, generator=gen)
        loss_sum, hits = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            image_rows, text_rows = train.image_row[rows], train.text_row[rows]
            if cfg.modality_dropout > 0:  # blank the image of rate/2 of the questions, empty the text of rate/2
                u = torch.rand(len(rows), generator=gen)
                image_rows = torch.where(u < cfg.modality_dropout / 2, train.blank_image, image_rows)
                no_text = (u >= cfg.modality_dropout / 2) & (u < cfg.modality_dropout)
                text_rows = torch.where(no_text, train.empty_text, text_rows)
            logits = train.logits(model, rows, image_rows, text_rows)
            loss = F.cross_entropy(logits, targets[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(rows)
            hits += int((logits.argmax(1) == targets[rows]).sum())
        with torch.no_grad():
            model.eval()
            val_accuracy = score(val.logits(model).numpy(), data.val).accuracy
        if keeper.end_epoch(epoch, loss_sum / n, hits / n, val_accuracy):
            break
    return model, keeper.finish()


def _grouped_order(image_row: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random order of the questions in which each picture's questions come together (pictures shuffled, and
    the questions of a picture), so that a batch runs the trained image layers on a few pictures, not one per
    question."""
    n = len(image_row)
    pictures = torch.randperm(int(image_row.max()) + 1, generator=gen)
    rank = torch.empty_like(pictures)
    rank[pictures] = torch.arange(len(pictures))
    return torch.argsort(rank[image_row] * n + torch.randperm(n, generator=gen))
