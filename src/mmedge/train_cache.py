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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHUNK = 256  # images or texts per forward pass while the caches are filled
CACHE_EVENT = "mmedge.tower_caches"  # what torch.profiler calls the building of a cache (benchmarks/scaling.py)


class SplitCache:
    """The frozen prefixes of one split: per distinct image (``images``; a blank image last) and per distinct
    question string (``texts``; the empty question last), with each question's row into both. ``parallel``: every
    rank of a distributed run builds it together, each computing a share of the chunks (``gather_rows``)."""

    def __init__(self, model, split, vocab, parallel: bool = False):
        from mmedge.distributed import gather_rows

        prep = model.spec().image
        rows = gather_rows if parallel else _rows
        with torch.no_grad(), torch.profiler.record_function(CACHE_EVENT):
            model.eval()
            picked = np.unique(split.image_index)
            slot = np.full(len(split.images), -1, dtype=np.int64)
            slot[picked] = np.arange(len(picked))
            images = rows(
                lambda a, b: model.image_prefix(torch.from_numpy(split.pictures(picked[a:b], prep))), len(picked), CHUNK
            )
            blank = torch.zeros((1, prep.channels, prep.height, prep.width))
            self.images = torch.cat([images, model.image_prefix(blank)])  # (M + 1, ...)
            self.image_row = torch.from_numpy(slot[split.image_index])  # (N,)
            strings = sorted(set(split.texts))
            index = {t: i for i, t in enumerate(strings)}
            ids, mask = vocab.encode([*strings, ""])
            ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
            self.texts = rows(lambda a, b: model.text_prefix(ids[a:b], mask[a:b]), len(ids), CHUNK)  # (S + 1, ...)
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


def _rows(compute, n: int, chunk: int) -> torch.Tensor:
    """``compute(start, stop)`` over the chunks of ``n`` rows, joined (in one process)."""
    return torch.cat([compute(s, min(s + chunk, n)) for s in range(0, n, chunk)])


@dataclass(frozen=True)
class CachedBatch:
    """One step's questions on the cached path, as a loss hook (distillation) sees them: rows of ``split``, and
    each row's image and text row in that split's cache (a blank image / the empty question where modality dropout
    removed one). Two caches of one split (e.g. a student's and its teacher's) share these rows."""

    split: str  # "train" or "val"
    rows: torch.Tensor  # (b,) question rows
    image_rows: torch.Tensor  # (b,)
    text_rows: torch.Tensor  # (b,)
    target: torch.Tensor  # (b,) label indices


CachedLossFn = Callable[[torch.Tensor, CachedBatch], torch.Tensor]


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


def train_cached(
    model,
    data,
    vocab,
    cfg,
    on_epoch: Callable[[dict], None] | None = None,
    loss_fn: CachedLossFn | None = None,
    extra_params: tuple = (),
    resume=None,
):
    """``train.train_model`` for a late-fusion model (same schedule, early stopping and history): the frozen
    prefixes of train and val are computed once; each step runs the trained layers on a batch of questions.

    ``loss_fn(logits, CachedBatch)`` replaces the cross-entropy (distillation); it is also taken over validation
    (as asked, and with modality dropout also with images blanked and with questions emptied) to break ties of
    validation accuracy between epochs. ``extra_params`` train alongside the model; ``resume``: as in
    ``train_model``."""
    from mmedge.distributed import all_sum, data_parallel, from_main, per_rank, shard, step_rows, world
    from mmedge.epochs import BestEpoch, EpochCheckpoint, warmup_cosine
    from mmedge.runtime.evaluate import score

    w = world()
    per_rank(cfg.batch_size)
    gen = torch.Generator().manual_seed(cfg.seed)
    keeper = BestEpoch(model, cfg, on_epoch)
    train, val = SplitCache(model, data.train, vocab, parallel=True), SplitCache(model, data.val, vocab, parallel=True)
    targets = torch.from_numpy(data.train.labels)
    n = len(targets)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(
        [*(p for p in model.parameters() if p.requires_grad), *extra_params], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    val_targets = torch.from_numpy(data.val.labels)
    sched = warmup_cosine(opt, steps_per_epoch, steps_per_epoch * cfg.epochs)
    by_image = train.images.dim() > 2  # image layers train: batches of whole pictures run each one once per step
    checkpoint = EpochCheckpoint(resume)
    first, finished = checkpoint.restore(model, opt, sched, gen, keeper, extra_params)
    run = data_parallel(model, extra_params)
    for epoch in range(first, first if finished else cfg.epochs):
        model.train()
        order = _grouped_order(train.image_row, gen) if by_image else torch.randperm(n, generator=gen)
        loss_sum, hits, seen = 0.0, 0, 0
        for start in range(0, n, cfg.batch_size):
            part = shard(len(order[start : start + cfg.batch_size]))  # this rank's slice of the step
            if part is None:
                continue
            rows = part.take(order[start : start + cfg.batch_size])
            image_rows, text_rows = train.image_row[rows], train.text_row[rows]
            if cfg.modality_dropout > 0:  # blank the image of rate/2 of the questions, empty the text of rate/2
                u = part.take(torch.rand(part.total, generator=gen))  # drawn for the whole step, as one process
                image_rows = torch.where(u < cfg.modality_dropout / 2, train.blank_image, image_rows)
                no_text = (u >= cfg.modality_dropout / 2) & (u < cfg.modality_dropout)
                text_rows = torch.where(no_text, train.empty_text, text_rows)
            with step_rows(part):
                logits = run(train.logits, model, rows, image_rows, text_rows)
            if loss_fn is None:
                loss = F.cross_entropy(logits, targets[rows])
            else:
                loss = loss_fn(logits, CachedBatch("train", rows, image_rows, text_rows, targets[rows]))
            opt.zero_grad(set_to_none=True)
            (loss * part.scale).backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(rows)
            hits += int((logits.argmax(1) == targets[rows]).sum())
            seen += len(rows)
        loss_sum, hits, seen = all_sum([loss_sum, hits, seen])
        val_accuracy, val_loss = 0.0, None
        if w.main:  # rank 0 validates; its figures decide for every rank
            with torch.no_grad():
                model.eval()
                val_accuracy = score(val.logits(model).numpy(), data.val).accuracy
                val_loss = (
                    None if loss_fn is None else _val_loss(model, val, val_targets, loss_fn, cfg.modality_dropout > 0)
                )
        val_accuracy, shared_loss = from_main([val_accuracy, math.nan if val_loss is None else val_loss])
        val_loss = None if math.isnan(shared_loss) else shared_loss
        stop = keeper.end_epoch(epoch, loss_sum / seen, hits / seen, val_accuracy, val_loss)
        stop = bool(from_main([float(stop)])[0])  # a wall-clock cap is read on rank 0's clock
        checkpoint.save(epoch, stop or epoch + 1 == cfg.epochs, model, opt, sched, gen, keeper, extra_params)
        if stop:
            break
    return model, keeper.finish()


def _val_loss(model, val: SplitCache, targets: torch.Tensor, loss_fn: CachedLossFn, with_removed: bool) -> float:
    """The mean of ``loss_fn`` over validation as asked, and with ``with_removed`` also over validation with every
    image blank and with every question empty (in steps of ``CHUNK`` questions, as hooks on the head see them)."""
    total, count = 0.0, 0
    for start in range(0, len(targets), CHUNK):
        rows = torch.arange(start, min(start + CHUNK, len(targets)))
        image, text = val.image_row[rows], val.text_row[rows]
        variants = [(image, text)]
        if with_removed:
            variants += [
                (torch.full_like(image, val.blank_image), text),
                (image, torch.full_like(text, val.empty_text)),
            ]
        for i, t in variants:
            batch = CachedBatch("val", rows, i, t, targets[rows])
            total += float(loss_fn(val.logits(model, rows, i, t), batch)) * len(rows)
            count += len(rows)
    return total / count


def _grouped_order(image_row: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random order of the questions in which each picture's questions come together (pictures shuffled, and
    the questions of a picture), so that a batch runs the trained image layers on a few pictures, not one per
    question."""
    n = len(image_row)
    pictures = torch.randperm(int(image_row.max()) + 1, generator=gen)
    rank = torch.empty_like(pictures)
    rank[pictures] = torch.arange(len(pictures))
    return torch.argsort(rank[image_row] * n + torch.randperm(n, generator=gen))
