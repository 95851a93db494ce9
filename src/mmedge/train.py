"""Training loop: AdamW with a cosine schedule, evaluation each epoch, early stopping, seed control.

Each epoch draws fresh questions for the training images (same images, new paraphrases and operands) and
applies a random affine jitter to the digits; both matter on 3,750 training images, where arithmetic
questions need the exact digit. The best epoch on the validation split is kept.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from mmedge.artifact import Artifact
from mmedge.data import DataConfig, load_dataset
from mmedge.data.digits_vqa import FAMILIES, VQASplit, make_questions
from mmedge.data.images import ImagePreprocessing
from mmedge.data.text import Tokenizer, WordVocab
from mmedge.distributed import (
    Shard,
    all_sum,
    broadcast_state,
    data_parallel,
    from_main,
    global_batch,
    per_rank,
    shard,
    step_rows,
    world,
)
from mmedge.epochs import BestEpoch, EpochCheckpoint, warmup_cosine
from mmedge.errors import RecipeError
from mmedge.models.checkpoint import load_checkpoint, save_checkpoint
from mmedge.results import ModelMetrics, TrainMetrics
from mmedge.runtime.evaluate import score
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step

# rank r seeds torch's global generator with seed + r * this: dropout on tensors not laid out by the step's rows
# (``global_batch``) draws apart on each rank
RANK_SEED_STRIDE = 1_000_003

if TYPE_CHECKING:  # torch is imported where it is used: a recipe parses, and its dry run prints, without it
    import torch


class TrainConfig(StepConfig):
    type: Literal["train"] = "train"
    epochs: int = Field(
        20,
        ge=1,
        description="Epochs; the cosine schedule spans them. 20 reach ~99% on digits-vqa in ~2 minutes on 2 cores.",
    )
    batch_size: int = Field(
        64,
        ge=1,
        description="Questions per optimizer step (16 images x 4 questions): more steps "
        "per epoch learned faster here than larger batches.",
    )
    lr: float = Field(
        3e-3,
        gt=0,
        description="Peak AdamW learning rate, reached after one warm-up epoch, then "
        "cosine decay to zero over `epochs`.",
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    patience: int = Field(6, ge=1, description="Stop after this many epochs without a better validation accuracy.")
    seed: int = Field(0, description="Seeds weights, batches, augmentation and question sampling.")
    augment: bool = Field(
        True,
        description="Random affine jitter (±10°, ±2 px, scale 0.9–1.1) on training "
        "digits; without it accuracy stalls below 97%.",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Optional wall-clock cap: training stops after the epoch that crosses it and keeps the best "
        "epoch, and says so. None by default, so that a busy machine trains the same model as a quiet one "
        "(epochs and early stopping on validation decide). Part of the step's cache key like every field.",
    )
    questions_per_image: int = Field(
        4,
        ge=1,
        description="Fresh questions drawn per training image each epoch; they share one pass of the image encoder.",
    )
    threads: int = Field(0, ge=0, description="torch threads; 0 uses every core.")
    modality_dropout: float = Field(
        0.0,
        ge=0,
        le=0.5,
        description="Share of training questions that see one modality removed — half of them with the image "
        "blanked, half with the text emptied, the true answer kept — so the model degrades gracefully when a "
        "camera frame or a prompt is missing at run time. 0 trains on complete pairs only.",
    )


def _tensors(
    split: VQASplit, vocab: Tokenizer, rows: np.ndarray | None = None, texts: list[str] | None = None, prep=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch

    rows = np.arange(len(split)) if rows is None else rows
    texts = [split.texts[i] for i in rows] if texts is None else texts
    ids, mask = vocab.encode(texts)
    return torch.from_numpy(split.pixels(rows, prep)), torch.from_numpy(ids), torch.from_numpy(mask)


def predict_split(
    model, split: VQASplit, vocab: Tokenizer, blank_image: bool = False, empty_text: bool = False, batch_size: int = 512
) -> np.ndarray:
    """Logits float32 (N, classes) for a whole split, optionally with one modality removed."""
    import torch

    if getattr(model, "late_fusion", False):
        from mmedge.train_cache import predict_cached  # the same logits from one encoding per image and string

        return predict_cached(model, split, vocab, blank_image, empty_text)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(split), batch_size):
            rows = np.arange(start, min(start + batch_size, len(split)))
            texts = [""] * len(rows) if empty_text else None
            image, ids, mask = _tensors(split, vocab, rows, texts, model.spec().image)
            if blank_image:
                image = torch.zeros_like(image)
            out.append(model(image, ids, mask).float().numpy())
    return np.concatenate(out)


def augment(images: torch.Tensor, gen: torch.Generator, part: Shard | None = None) -> torch.Tensor:
    """Random affine jitter of (B, C, H, W) digits: rotation ±10°, shift ±2 px, scale 0.9–1.1. ``part``: the images
    are this rank's slice of a step's; the draws are made for the whole step, as one process would make them."""
    import torch
    import torch.nn.functional as F

    b, _, h, _ = images.shape
    if part is not None:
        b = part.total
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(b, generator=gen) * 0.2
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2.0 * 2 / h)  # normalized coords span 2
    if part is not None:
        angle, scale, shift = part.take(angle), part.take(scale), part.take(shift)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


@dataclass(frozen=True)
class Batch:
    """One optimizer step's inputs, as a loss hook (e.g. distillation) sees them."""

    image: torch.Tensor  # (b, C, H, W) augmented images, one per image of the step
    shared: torch.Tensor  # (b * q,) index of each question's image in ``image``
    input_ids: torch.Tensor  # (b * q, T)
    attention_mask: torch.Tensor  # (b * q, T)
    target: torch.Tensor  # (b * q,) label indices


LossFn = Callable[["torch.Tensor", Batch], "torch.Tensor"]


def drop_modalities(
    features: torch.Tensor,
    blank: torch.Tensor,
    batch: Batch,
    rate: float,
    pad_id: int,
    gen: torch.Generator,
    part: Shard | None = None,
) -> tuple[torch.Tensor, Batch]:
    """Blank the image of ``rate / 2`` of the questions (their features become ``blank``, the encoding of an
    all-zero image, as a missing frame is fed at run time) and empty the text of another ``rate / 2`` (all
    padding, mask 0). The answers stay the true ones. ``part``: as in ``augment``, for the step's questions."""
    import torch

    u = torch.rand(len(batch.target) if part is None else part.total, generator=gen)
    u = u if part is None else part.take(u)
    no_image, no_text = u < rate / 2, (u >= rate / 2) & (u < rate)
    keep = no_image.view(-1, *([1] * (features.dim() - 1)))
    features = torch.where(keep, blank.expand_as(features), features)
    ids = batch.input_ids.masked_fill(no_text[:, None], pad_id)
    mask = batch.attention_mask.masked_fill(no_text[:, None], 0)
    return features, Batch(batch.image, batch.shared, ids, mask, batch.target)


def _steps(q_image: np.ndarray, grouped: bool, cfg: TrainConfig, gen: torch.Generator):
    """One epoch's steps, as this rank computes them: (image rows, question rows, each question's index into the
    step's images, the rank's slice of the step's images, and of its questions). Every rank draws the same order;
    each takes its slice of every step (the whole step in a world of one).

    Grouped (every image has ``questions_per_image`` questions): the image encoder runs once per image and its
    features are shared by its questions. Otherwise each step is ``batch_size`` questions with their images."""
    import torch

    q = cfg.questions_per_image
    if grouped:
        n_images = len(q_image) // q
        q_rows = np.argsort(q_image, kind="stable").reshape(n_images, q)
        order = torch.randperm(n_images, generator=gen).numpy()
        per_step = max(1, cfg.batch_size // q)
        for start in range(0, len(order), per_step):
            part = shard(len(order[start : start + per_step]))
            if part is None:
                continue
            img_rows = part.take(order[start : start + per_step])
            shared = torch.arange(len(img_rows)).repeat_interleave(q)
            questions = Shard(part.start * q, part.stop * q, part.total * q)
            yield img_rows, q_rows[img_rows].reshape(-1), shared, part, questions
        return
    order = torch.randperm(len(q_image), generator=gen).numpy()
    for start in range(0, len(order), cfg.batch_size):
        part = shard(len(order[start : start + cfg.batch_size]))
        if part is None:
            continue
        rows = part.take(order[start : start + cfg.batch_size])
        yield q_image[rows], rows, torch.arange(len(rows)), part, part


def _forward(model, image, batch: Batch, cfg: TrainConfig, vocab: Tokenizer, gen, images: Shard, questions: Shard):
    """One step's logits (and its batch, with the modalities that dropout removed): whole forward passes for a
    model from outside the zoo, else one image-encoder pass per image, shared by its questions. ``images`` and
    ``questions``: this rank's shares of the step's images and questions, that the passes over them hold
    (``step_rows``)."""
    import torch

    shared = batch.shared
    if not hasattr(model, "encode_image"):  # a model from outside the zoo: whole forward passes
        pictures = image[shared]
        if cfg.modality_dropout > 0:
            pictures, batch = drop_modalities(
                pictures, torch.zeros_like(image[:1]), batch, cfg.modality_dropout, vocab.pad_id, gen, questions
            )
        with step_rows(questions):
            return model(pictures, batch.input_ids, batch.attention_mask), batch
    if cfg.modality_dropout > 0:
        # the blank frame goes through the encoder with the real ones (same BatchNorm statistics)
        with step_rows(images, held_by_all=1):
            encoded = model.encode_image(torch.cat([image, torch.zeros_like(image[:1])]))
        features, batch = drop_modalities(
            encoded[:-1][shared], encoded[-1:], batch, cfg.modality_dropout, vocab.pad_id, gen, questions
        )
    else:
        with step_rows(images):
            features = model.encode_image(image)[shared]
    with step_rows(questions):
        return model.forward_features(features, batch.input_ids, batch.attention_mask), batch


def train_model(
    model,
    data,
    vocab: Tokenizer,
    cfg: TrainConfig,
    on_epoch: Callable[[dict], None] | None = None,
    loss_fn: LossFn | None = None,
    extra_params: tuple = (),
    resume: Path | None = None,
) -> tuple[object, list[dict]]:
    """Train ``model`` in place on ``data`` (DigitsVQA); returns the best-on-validation model and history.

    ``loss_fn(logits, batch)`` replaces the cross-entropy (distillation adds a teacher's terms);
    ``extra_params`` are trained alongside the model (e.g. a feature projection). A late-fusion model without
    augmentation trains on cached tower outputs (``train_cache``) where ``loss_fn`` is None or reads
    ``CachedBatch`` steps (``loss_fn.cached``). ``resume``: a folder for the per-epoch checkpoint (``EpochCheckpoint``)
    that a killed run continues from.

    In a distributed run (``mmedge.distributed``) every rank calls this and computes its share of each step; the
    model returned is the same on every rank."""
    import torch

    w = world()
    torch.manual_seed(cfg.seed + RANK_SEED_STRIDE * w.rank)  # the step's masks are drawn alike (global_batch)
    torch.set_num_threads(w.threads(cfg.threads))
    with global_batch(model, cfg.seed):
        if (
            getattr(model, "late_fusion", False)
            and not cfg.augment
            and (loss_fn is None or getattr(loss_fn, "cached", False))
        ):
            from mmedge.train_cache import train_cached  # each tower's frozen part once, not once per question

            model, history = train_cached(model, data, vocab, cfg, on_epoch, loss_fn, extra_params, resume)
        else:
            model, history = _train_whole(model, data, vocab, cfg, on_epoch, loss_fn, extra_params, resume)
    broadcast_state(model)
    return model, history


def _train_whole(model, data, vocab: Tokenizer, cfg: TrainConfig, on_epoch, loss_fn, extra_params, resume):
    """``train_model`` with whole forward passes (one image-encoder pass per image, shared by its questions)."""
    import torch
    import torch.nn.functional as F

    w = world()
    gen = torch.Generator().manual_seed(cfg.seed)
    train = data.train
    prep = model.spec().image  # images as the model takes them (size, color)
    fresh_questions = train.family_names == FAMILIES  # digits-vqa asks new questions every epoch
    images_per_step = max(1, cfg.batch_size // cfg.questions_per_image)
    per_rank(cfg.batch_size, images_per_step=images_per_step if fresh_questions else None)
    steps_per_epoch = (
        math.ceil(len(train.images) / images_per_step) if fresh_questions else math.ceil(len(train) / cfg.batch_size)
    )
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW([*model.parameters(), *extra_params], lr=cfg.lr, weight_decay=cfg.weight_decay)

    sched = warmup_cosine(opt, steps_per_epoch, total)
    keeper = BestEpoch(model, cfg, on_epoch)
    checkpoint = EpochCheckpoint(resume)
    first, finished = checkpoint.restore(model, opt, sched, gen, keeper, extra_params)
    run = data_parallel(model, extra_params)
    for epoch in range(first, first if finished else cfg.epochs):
        model.train()
        # Fresh questions every epoch: each image gets `questions_per_image` new ones, grouped by image so
        # that the image encoder runs once per image and its features are shared by its questions.
        rng = np.random.default_rng([cfg.seed, epoch])
        if fresh_questions:
            q_image, texts, labels, _ = make_questions(train.digits, cfg.questions_per_image, rng)
        else:  # a dataset with its own questions: the same ones every epoch
            q_image, texts, labels = train.image_index, list(train.texts), train.labels
        ids_all, mask_all = vocab.encode(texts)
        longest = int(mask_all.sum(1).max())  # drop all-padding columns: fewer LSTM/attention steps
        ids_all, mask_all = ids_all[:, :longest], mask_all[:, :longest]
        loss_sum, hits, seen = 0.0, 0, 0
        for img_rows, rows, shared, images, questions in _steps(q_image, fresh_questions, cfg, gen):
            image = torch.from_numpy(train.pictures(img_rows, prep))  # (b, C, H, W)
            if cfg.augment:
                image = augment(image, gen, images)
            batch = Batch(
                image,
                shared,
                torch.from_numpy(ids_all[rows]),
                torch.from_numpy(mask_all[rows]),
                torch.from_numpy(labels[rows]),
            )
            logits, batch = run(_forward, model, image, batch, cfg, vocab, gen, images, questions)
            target = batch.target
            loss = F.cross_entropy(logits, target) if loss_fn is None else loss_fn(logits, batch)
            opt.zero_grad(set_to_none=True)
            (loss * questions.scale).backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(rows)
            hits += int((logits.argmax(1) == target).sum())
            seen += len(rows)
        loss_sum, hits, seen = all_sum([loss_sum, hits, seen])
        # rank 0 validates; its figure decides for every rank
        val_accuracy = score(predict_split(model, data.val, vocab), data.val).accuracy if w.main else 0.0
        (val_accuracy,) = from_main([val_accuracy])
        stop = keeper.end_epoch(epoch, loss_sum / seen, hits / seen, val_accuracy)
        stop = bool(from_main([float(stop)])[0])  # a wall-clock cap is read on rank 0's clock
        checkpoint.save(epoch, stop or epoch + 1 == cfg.epochs, model, opt, sched, gen, keeper, extra_params)
        if stop:
            break
    return model, keeper.finish()


def stop_reason(history: list[dict], epochs: int) -> str:
    """Why training ended: every epoch ran, early stopping on validation, or the optional wall-clock cap."""
    return history[-1].get("stopped", "epochs") if len(history) < epochs else "epochs"


def evaluate_with_ablation(model, data, vocab: Tokenizer) -> dict:
    """Validation accuracy (what later decisions compare against), test accuracy (reported), and test accuracy
    with the image blanked and with the text emptied."""
    split = data.test
    full = score(predict_split(model, split, vocab), split)
    no_image = score(predict_split(model, split, vocab, blank_image=True), split)
    no_text = score(predict_split(model, split, vocab, empty_text=True), split)
    val = score(predict_split(model, data.val, vocab), data.val)
    out = {
        "val": val.to_json(),
        "test": full.to_json(),
        "image_blanked": no_image.to_json(),
        "text_emptied": no_text.to_json(),
    }
    for key in ("paraphrase", "val_paraphrase"):  # test / validation pictures asked in wordings training never saw
        reworded = getattr(data, key, None)
        if reworded is not None:
            out[key] = score(predict_split(model, reworded, vocab), reworded).to_json()
    return out


ProgressMode = Literal["bar", "lines", "off"]


class _Progress:
    """Training progress: a rich bar on a terminal, one line per epoch in a log, or nothing (tests)."""

    def __init__(self, epochs: int, mode: ProgressMode, label: str = "train"):
        self.mode, self.epochs, self.bar, self.label = mode, epochs, None, label
        if mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                transient=False,
            )
            self.task = self.bar.add_task(label, total=epochs, status="")

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def update(self, r: dict) -> None:
        status = f"loss {r['loss']:.3f}  train {r['train_accuracy']:.1%}  val {r['val_accuracy']:.1%}"
        if self.bar:
            self.bar.update(self.task, advance=1, status=status)
        elif self.mode == "lines":
            print(
                f"{self.label} epoch {r['epoch']}/{self.epochs} ({r['seconds']:.0f} s): {status}",
                file=sys.stderr,
                flush=True,
            )


def run_training(
    family: str,
    options: dict,
    data_cfg: DataConfig,
    cfg: TrainConfig,
    out_dir: Path,
    progress: ProgressMode = "bar",
    resume: Path | None = None,
) -> tuple[Path, dict]:
    """Build, train, evaluate (with the modality ablation) and save a checkpoint folder; ``resume``: the folder of
    the per-epoch checkpoint a killed run continues from."""
    data, vocab, model = build_for_data(family, options, data_cfg, cfg.seed)
    started = time.perf_counter()
    with _Progress(cfg.epochs, progress) as bar:
        model, history = train_model(model, data, vocab, cfg, on_epoch=bar.update, resume=resume)
    seconds = time.perf_counter() - started
    if not world().main:  # rank 0 evaluates and writes
        return out_dir, {}
    metrics = {
        "family": family,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs_run": len(history),
        "stopped": stop_reason(history, cfg.epochs),
        "train_seconds": seconds,
        **world().to_json(),
        "best_val_accuracy": max(r["val_accuracy"] for r in history),
        **evaluate_with_ablation(model, data, vocab),
        "history": history,
        "data": data_cfg.model_dump(mode="json"),
        **skipped_rows(data),
        **({"image_format": model.image_format} if getattr(model, "image_format", None) else {}),
    }
    save_checkpoint(
        model, vocab, data.classes, out_dir, extra={"metrics": metrics, "train": cfg.model_dump(mode="json")}
    )
    return out_dir, metrics


def build_for_data(family: str, options: dict, data_cfg: DataConfig, seed: int = 0):
    """(dataset, tokenizer, model): the family's own tokenizer (Hugging Face) or a word vocabulary built from the
    training texts, and the model sized for it and for the dataset's labels (zero-shot: label prompts embedded)."""
    import torch

    from mmedge.models import build_model, family_config, get_family

    data = load_dataset(data_cfg)
    fam = get_family(family)
    config, image_format = fit_image_options(family_config(family, options), data)
    vocab = fam.tokenizer(config) if fam.tokenizer else WordVocab.build(data.train.texts)
    torch.manual_seed(seed)
    model = build_model(family, config, vocab_size=len(vocab), num_classes=len(data.classes))
    if image_format is not None:
        model.image_format = image_format  # what the model takes and where from, for the step's results
    if hasattr(model, "prepare"):
        model.prepare(data.classes, vocab)
    return data, vocab, model


MAX_IMAGE_SIDE = 128  # a side taken from the data is capped here: larger pictures train slowly on a CPU


def fit_image_options(config, data) -> tuple[object, dict | None]:
    """A zoo family's image options fitted to the training data: every option the recipe leaves out (size,
    channels, mean, std, polarity) is taken from the training pictures, mean and std measured on the training
    split. What the recipe forces against the data (gray on colour pictures, another size) is said on stderr and
    returned with the format, for the step's results. Families outside the zoo (hf:, py:) keep their own."""
    from mmedge.models.options import ImageOptions

    if not isinstance(config, ImageOptions):
        return config, None
    native = data.native_format()
    given = config.model_fields_set
    notes, source = [], {}
    side = max(native.height, native.width)
    if native.height != native.width or native.mixed_sizes:
        sizes = "mostly " if native.mixed_sizes else ""
        notes.append(f"the training images are {sizes}{native.height}x{native.width}; each is resized to a square")
    if side > MAX_IMAGE_SIDE:
        notes.append(
            f"the training images' longest side ({side} px) is cut to {MAX_IMAGE_SIDE} px; set "
            "model.options.image_size to choose another size"
        )
        side = MAX_IMAGE_SIDE
    patch = getattr(config, "patch_size", 1)
    if "image_size" in given:
        size, source["image_size"] = config.image_size, "recipe"
        if size != side:
            notes.append(
                f"the recipe sets model.options.image_size {size}; the {native.describe()} training images are "
                f"resized to {size}x{size}"
            )
    else:
        size, source["image_size"] = max(patch, side // patch * patch), "data"
        if size != side:
            notes.append(f"the image size {side} is rounded down to {size}, a multiple of patch_size {patch}")
    if "channels" in given:
        channels, source["channels"] = config.channels, "recipe"
        if channels != native.channels:
            shown = "grayscale" if channels == 1 else "RGB (each gray picture copied to 3 channels)"
            notes.append(
                f"the recipe sets model.options.channels {channels} but the training images are "
                f"{'colour' if native.channels == 3 else 'grayscale'}: the model sees them as {shown}"
            )
    else:
        channels, source["channels"] = native.channels, "data"
    foreground = config.foreground if "foreground" in given else native.foreground
    prep = ImagePreprocessing(height=size, width=size, channels=channels)
    mean, std = data.training_stats(prep)
    for name in ("image_mean", "image_std"):
        if name in given:
            values = tuple(getattr(config, name))
            if len(values) not in (1, channels):
                raise RecipeError(
                    f"model.options.{name} has {len(values)} values but the model takes {channels} channel(s); give "
                    f"one value per channel, or leave {name} out to measure it on the training split."
                )
            source[name] = "recipe"
        else:
            source[name] = "training split"
    mean = tuple(config.image_mean) if "image_mean" in given else mean
    std = tuple(config.image_std) if "image_std" in given else std
    fitted = type(config).model_validate(
        {
            **config.model_dump(),
            "image_size": size,
            "channels": channels,
            "image_mean": mean,
            "image_std": std,
            "foreground": foreground,
        }
    )
    for note in notes:
        print(f"note: {note}.", file=sys.stderr, flush=True)
    image_format = {
        "height": size,
        "width": size,
        "channels": channels,
        "mean": list(mean),
        "std": list(std),
        "foreground": foreground,
        "data_images": native.describe(),
        "source": source,
        "notes": notes,
    }
    return fitted, image_format


@register_step(TrainConfig, TrainMetrics)
def train_step(cfg: TrainConfig, ctx: StepContext) -> StepResult:
    recipe = ctx.recipe
    path, metrics = run_training(
        recipe.model.family_name,
        recipe.model.options,
        recipe.data,
        cfg,
        ctx.out_dir / "checkpoint",
        progress=ctx.progress,
        resume=ctx.resume_dir,
    )
    if not world().main:
        return None  # rank 0 writes the step's result
    ckpt = load_checkpoint(path)
    _save_reference_logits(ckpt, recipe.data, ctx.out_dir)
    return StepResult(
        Artifact(path, "torch-checkpoint", ckpt.spec.to_json(), ("train",)), TrainMetrics.model_validate(metrics)
    )


def skipped_rows(data) -> dict:
    """How the data set was split (rule and counts), and the rows left out with skip_bad_rows (when any were)."""
    out = {"data_split": data.split_info.to_json()} if data.split_info is not None else {}
    if data.skipped:
        out["skipped_rows"] = {"count": len(data.skipped), "rows": list(data.skipped[:50])}
    return out


def _save_reference_logits(ckpt, data_cfg: DataConfig, out_dir: Path) -> None:
    """PyTorch logits on the test split: later steps measure parity of every exported model against them."""
    logits = predict_split(ckpt.model, load_dataset(data_cfg).test, ckpt.vocab)
    np.save(out_dir / "reference_logits.npy", logits)


class LoadModelConfig(StepConfig):
    type: Literal["load.model"] = "load.model"


@register_step(LoadModelConfig, ModelMetrics)
def load_model_step(cfg: LoadModelConfig, ctx: StepContext) -> StepResult:
    """A model used as it comes (a zero-shot Hugging Face model, a pretrained py: factory): scored, not trained."""
    recipe = ctx.recipe
    family = recipe.model.family_name
    data, vocab, model = build_for_data(family, recipe.model.options, recipe.data)
    model.eval()
    metrics = {
        "family": model.spec().family,
        "parameters": sum(p.numel() for p in model.parameters()),
        **evaluate_with_ablation(model, data, vocab),
        "data": recipe.data.model_dump(mode="json"),
        **skipped_rows(data),
    }
    path = ctx.out_dir / "checkpoint"
    save_checkpoint(model, vocab, data.classes, path, extra={"metrics": metrics})
    ckpt = load_checkpoint(path)
    _save_reference_logits(ckpt, recipe.data, ctx.out_dir)
    return StepResult(
        Artifact(path, "torch-checkpoint", ckpt.spec.to_json(), ("load.model",)), ModelMetrics.model_validate(metrics)
    )


class LoadConfig(StepConfig):
    type: Literal["load"] = "load"
    path: Path = Field(..., description="A checkpoint folder written by `mmedge train` (safetensors, no pickle).")


@register_step(LoadConfig, ModelMetrics)
def load_step(cfg: LoadConfig, ctx: StepContext) -> StepResult:
    ckpt = load_checkpoint(cfg.path)
    data = load_dataset(ctx.recipe.data)
    metrics = {
        "family": ckpt.family,
        "parameters": sum(p.numel() for p in ckpt.model.parameters()),
        **evaluate_with_ablation(ckpt.model, data, ckpt.vocab),
        **skipped_rows(data),
    }
    _save_reference_logits(ckpt, ctx.recipe.data, ctx.out_dir)
    artifact = Artifact(Path(cfg.path).resolve(), "torch-checkpoint", ckpt.spec.to_json(), ("load",))
    return StepResult(artifact, ModelMetrics.model_validate(metrics))
