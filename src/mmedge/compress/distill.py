"""Knowledge distillation: a teacher's soft targets train a student (Hinton et al. 2015).

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))      soft targets
         + (1 - alpha) * cross_entropy(student, labels)                        task loss
         + feature_weight * MSE(projection(student fused), teacher fused)       optional feature loss

The fused embedding is the input of each model's ``head`` (B, F); a learned Linear projection maps the
student's width to the teacher's. The student is the model that reaches this step (e.g. after structured
pruning, to win back accuracy) or a fresh zoo model with smaller options. The teacher is, by default, the
model this pipeline trained or loaded first.

Where student and teacher both fuse late (``late_fusion``: effnet-minilm) and ``augment`` is off, both answer from
tower outputs cached once per picture and per question string (``mmedge.train_cache``), so an epoch costs about
what training the head costs; with ``modality_dropout`` the teacher answers the same blanked picture or emptied
question as the student, which teaches the student the teacher's fallback when an input is missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from mmedge.artifact import Artifact
from mmedge.distributed import world
from mmedge.errors import MmedgeError
from mmedge.results import DistillMetrics
from mmedge.steps.registry import StepContext, StepResult, register_step
from mmedge.train import TrainConfig


class DistillConfig(TrainConfig):
    type: Literal["distill"] = "distill"
    epochs: int = Field(12, ge=1, description="Epochs of distillation; the cosine schedule spans them.")
    lr: float = Field(
        1e-3,
        gt=0,
        description="Peak learning rate; lower than training from scratch, since a pruned student starts "
        "close to the teacher.",
    )
    patience: int = Field(12, ge=1, description="Stop after this many epochs without a better validation accuracy.")
    teacher: Literal["reference"] | Path = Field(
        "reference",
        description="'reference': the model this pipeline trained or loaded first; or a checkpoint folder; or an "
        ".onnx model (run with ONNX Runtime; soft targets only, as its fused embedding is not exposed).",
    )
    student: dict | None = Field(
        None,
        description="None: distill into the model that reaches this step (e.g. the pruned one). A mapping: "
        "options of a fresh, smaller model of `student_family` (e.g. {hidden_size: 64}).",
    )
    student_family: str | None = Field(None, description="Family of a fresh student; default: the recipe's family.")
    temperature: float = Field(
        4.0, gt=0, description="Softmax temperature of the soft targets; higher shows more of the teacher's ranking."
    )
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft-target loss; 1 - alpha goes to the labels.")
    feature_weight: float = Field(
        0.0, ge=0, description="Weight of the fused-embedding MSE through a learned projection; 0 turns it off."
    )


class _HeadInput:
    """Keeps the input of ``model.head`` (the fused embedding, (B, F)) from the latest forward pass."""

    def __init__(self, model):
        self.value = None
        model.head.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        self.value = args[0]


def _head_width(model) -> int:
    """Width of the fused embedding: the input of the head's last Linear layer."""
    import torch

    return [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1].in_features


def id_map(student_vocab, teacher_vocab):
    """(V_student,) tensor: the teacher's token id for each student token id (by word; unknown -> the teacher's
    unk id), so a teacher tokenized differently (e.g. trained on another split) reads the same words."""
    import torch

    index = {w: i for i, w in enumerate(teacher_vocab.words)}
    return torch.tensor([index.get(w, teacher_vocab.unk_id) for w in student_vocab.words], dtype=torch.long)


class OnnxTeacher:
    """An exported model as teacher: logits from ONNX Runtime on the same (augmented) batch."""

    def __init__(self, path: Path):
        from mmedge.runtime.evaluate import model_vocab
        from mmedge.runtime.session import metadata_json, open_session

        self.sess = open_session(path, threads=1)  # leaves the other cores to the student's training
        self.vocab = model_vocab(self.sess)
        self.labels = tuple(metadata_json(self.sess, "mmedge.labels") or ())

    def logits(self, batch, input_ids):
        import torch

        feeds = {
            "image": batch.image[batch.shared].detach().numpy(),
            "input_ids": input_ids.numpy(),
            "attention_mask": batch.attention_mask.numpy(),
        }
        return torch.from_numpy(self.sess.run(None, feeds)[0])


def teacher_caches(teacher, data, vocab) -> dict:
    """A late-fusion teacher's tower outputs on train and val, cached once (``train_cache.SplitCache``): each
    distillation step then runs only its projections, fusion and head. Its towers run whole, as they do not train."""
    from mmedge.train_cache import SplitCache

    if hasattr(teacher, "set_trained"):
        teacher.set_trained(0, 0)
    return {
        "train": SplitCache(teacher, data.train, vocab, parallel=True),  # every rank of a run builds them together
        "val": SplitCache(teacher, data.val, vocab, parallel=True),
    }


def distill_loss(student, teacher, cfg: DistillConfig, ids=None, caches: dict | None = None):
    """The loss hook for ``train_model`` and the parameters it adds (the feature projection).
    ``teacher``: a PyTorch model, or an OnnxTeacher; ``ids``: student -> teacher token ids (see id_map).
    ``caches`` (see teacher_caches): the hook reads ``train_cache.CachedBatch`` steps, where the teacher answers
    each question from its cached tower outputs (with the student's modality dropout: the same blank image or empty
    question)."""
    import torch
    import torch.nn.functional as F

    from mmedge.train_cache import CachedBatch

    on_onnx = isinstance(teacher, OnnxTeacher)
    if cfg.feature_weight > 0 and on_onnx:
        raise MmedgeError("the feature loss needs a PyTorch teacher; set feature_weight to 0 for an .onnx teacher.")
    if not on_onnx:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    projection = None
    if cfg.feature_weight > 0:
        s_fused, t_fused = _HeadInput(student), _HeadInput(teacher)
        projection = torch.nn.Linear(_head_width(student), _head_width(teacher))
    t = cfg.temperature

    def teacher_logits(batch) -> torch.Tensor:
        if isinstance(batch, CachedBatch):
            return caches[batch.split].logits(teacher, batch.rows, batch.image_rows, batch.text_rows)
        input_ids = batch.input_ids if ids is None else ids[batch.input_ids]
        if on_onnx:
            return teacher.logits(batch, input_ids)
        features = teacher.encode_image(batch.image)[batch.shared]
        return teacher.forward_features(features, input_ids, batch.attention_mask)

    def loss(logits: torch.Tensor, batch) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher_logits(batch)
        soft = (
            F.kl_div(
                F.log_softmax(logits / t, 1), F.log_softmax(t_logits / t, 1), log_target=True, reduction="batchmean"
            )
            * t
            * t
        )
        total = cfg.alpha * soft + (1 - cfg.alpha) * F.cross_entropy(logits, batch.target)
        if projection is not None:
            total = total + cfg.feature_weight * F.mse_loss(projection(s_fused.value), t_fused.value)
        return total

    loss.cached = caches is not None
    return loss, tuple(projection.parameters()) if projection is not None else ()


def load_teacher(cfg: DistillConfig, ctx):
    """(teacher, vocab, labels): a PyTorch checkpoint's model, or an OnnxTeacher for an .onnx file."""
    from mmedge.models.checkpoint import load_checkpoint

    if cfg.teacher == "reference":
        ref = ctx.reference()
        if ref is None:
            raise MmedgeError(
                "distill needs a teacher: put `train` or `load` before it, or set `teacher` to a checkpoint or .onnx."
            )
        path = ref.result.artifact.path
    else:
        path = Path(cfg.teacher)
    if path.suffix == ".onnx":
        t = OnnxTeacher(path)
        return t, t.vocab, t.labels
    ckpt = load_checkpoint(path)
    return ckpt.model, ckpt.vocab, ckpt.labels


def teacher_accuracy(teacher, vocab, split) -> float:
    """The teacher's test accuracy, read with its own tokenizer."""
    from mmedge.runtime.evaluate import predict, score
    from mmedge.train import predict_split

    if isinstance(teacher, OnnxTeacher):
        return score(predict(teacher.sess, split, vocab), split).accuracy
    return score(predict_split(teacher, split, vocab), split).accuracy


@register_step(DistillConfig, DistillMetrics)
def distill_step(cfg: DistillConfig, ctx: StepContext) -> StepResult:
    import torch

    from mmedge.data import load_dataset
    from mmedge.models import build_model
    from mmedge.models.checkpoint import load_checkpoint, save_checkpoint
    from mmedge.models.options import image_options
    from mmedge.train import _Progress, evaluate_with_ablation, stop_reason, train_model

    teacher, t_vocab, t_labels = load_teacher(cfg, ctx)
    current = load_checkpoint(ctx.artifact.path)
    if tuple(t_labels) != tuple(current.labels):
        raise MmedgeError(
            f"the teacher answers with other labels ({', '.join(t_labels)}) than the student; distill from a teacher "
            "trained for the same task."
        )
    data = load_dataset(ctx.recipe.data)
    if cfg.student is None:
        student = current.model
    else:
        torch.manual_seed(cfg.seed)
        family = cfg.student_family or ctx.recipe.model.family_name
        # the student takes the teacher's input (image size, channels, statistics fitted to the data)
        options = {**image_options(current.options), **cfg.student}
        student = build_model(family, options, len(current.vocab), len(current.labels))
    cached = (
        getattr(student, "late_fusion", False) and getattr(teacher, "late_fusion", False) and not cfg.augment
    )  # both answer from per-tower encodings: train on cached tower outputs
    caches = teacher_caches(teacher, data, t_vocab) if cached else None
    loss_fn, extra = distill_loss(student, teacher, cfg, id_map(current.vocab, t_vocab), caches)
    started = time.perf_counter()
    with _Progress(cfg.epochs, ctx.progress, label="distill") as bar:
        student, history = train_model(student, data, current.vocab, cfg, bar.update, loss_fn, extra, ctx.resume_dir)
    if not world().main:
        return None  # rank 0 evaluates and writes
    metrics = {
        "family": student.family,
        "parameters": sum(p.numel() for p in student.parameters()),
        "teacher": str(cfg.teacher),
        "teacher_test_accuracy": teacher_accuracy(teacher, t_vocab, data.test),
        "epochs_run": len(history),
        "stopped": stop_reason(history, cfg.epochs),
        "train_seconds": time.perf_counter() - started,
        **world().to_json(),
        "best_val_accuracy": max(r["val_accuracy"] for r in history),
        **evaluate_with_ablation(student, data, current.vocab),
        "history": history,
    }
    out = save_checkpoint(
        student,
        current.vocab,
        current.labels,
        ctx.out_dir / "checkpoint",
        extra={**current.extra, "distill": {k: v for k, v in metrics.items() if k != "history"}},
    )
    spec = student.spec().to_json()
    return StepResult(
        Artifact(out, "torch-checkpoint", spec, (*ctx.artifact.lineage, "distill")),
        DistillMetrics.model_validate(metrics),
    )
