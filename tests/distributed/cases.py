"""The training cases that tests/test_distributed.py runs in one process and in two (torchrun, gloo) and compares.

    python -m tests.distributed.cases OUT                                       # a world of one
    python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.distributed.cases OUT

Rank 0 writes OUT/<case>.safetensors (the trained weights) and OUT/<case>.json (its history and world). The cases
cover both training loops (whole forward passes, and late fusion on cached tower outputs), each trained and
distilled, with dropout, augmentation, modality dropout, BatchNorm in training and a feature loss through a
projection.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from mmedge import distributed

TINY = {"conv_channels": [8, 16], "embed_dim": 16, "hidden_size": 24, "fusion_dim": 32, "dropout": 0.1}


def _save(out: Path, name: str, model, history, extra=()) -> None:
    if not distributed.world().main:
        return
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tensors.update({f"extra.{i}": p.detach().contiguous().clone() for i, p in enumerate(extra)})
    save_file(tensors, out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps({"history": history, "world": distributed.world().to_json()}))


def whole(out: Path) -> None:
    """cnn-lstm (BatchNorm in its image encoder, trained on the global batch's statistics, dropout in its fusion):
    trained with augmentation and modality dropout (every rank's batch carries the blank frame, counted once);
    then a narrower student distilled from a seeded teacher (the same in every world, so that the comparison is of
    distillation alone) with augmentation and the feature loss."""
    from mmedge.compress.distill import DistillConfig, distill_loss
    from mmedge.data import DataConfig
    from mmedge.models import build_model
    from mmedge.train import TrainConfig, build_for_data, train_model

    data, vocab, teacher = build_for_data("cnn-lstm", TINY, DataConfig(test_images=200, val_images=100), 0)
    cfg = TrainConfig(epochs=1, batch_size=256, seed=0, augment=True, modality_dropout=0.2, patience=9)
    trained, history = train_model(teacher, data, vocab, cfg)
    _save(out, "whole-train", trained, history)

    torch.manual_seed(2)
    teacher = build_model("cnn-lstm", TINY, len(vocab), len(data.classes))
    torch.manual_seed(1)
    student = build_model("cnn-lstm", {**TINY, "hidden_size": 16}, len(vocab), len(data.classes))
    dcfg = DistillConfig(epochs=1, batch_size=256, seed=0, augment=True, feature_weight=1.0, patience=9)
    loss_fn, extra = distill_loss(student, teacher, dcfg)
    student, history = train_model(student, data, vocab, dcfg, None, loss_fn, extra)
    _save(out, "whole-distill", student, history, extra)


def cached(out: Path) -> None:
    """effnet-minilm at a small size (random towers, one text layer training): trained on cached tower outputs with
    modality dropout, then distilled into a narrower fusion with the feature loss, the teacher's caches built by
    the ranks together."""
    from dataclasses import replace

    from mmedge.compress.distill import DistillConfig, distill_loss, teacher_caches
    from mmedge.data import DataConfig, load_dataset
    from mmedge.models import build_model, family_config
    from mmedge.models.minilm import minilm_tokenizer
    from mmedge.train import TrainConfig, train_model

    data = load_dataset(DataConfig(name="easy-vqa"))
    rng = np.random.default_rng(0)

    def cut(split, n):
        return split.subset(np.sort(rng.choice(len(split), n, replace=False)))

    data = replace(data, train=cut(data.train, 600), val=cut(data.val, 200), test=cut(data.test, 200))
    vocab = minilm_tokenizer(24)

    def small(**options):
        config = family_config("effnet-minilm", {"pretrained": False, "image_size": 32, "dropout": 0.2, **options})
        torch.manual_seed(0)
        return build_model("effnet-minilm", config, vocab_size=30522, num_classes=13)

    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, augment=False, modality_dropout=0.2, patience=9)
    teacher, history = train_model(small(train_text_layers=1), data, vocab, cfg)
    _save(out, "cached-train", teacher, history)

    student = small(fusion_hidden=32)
    dcfg = DistillConfig(
        epochs=2, batch_size=64, lr=3e-3, augment=False, modality_dropout=0.4, feature_weight=1.0, patience=9
    )
    loss_fn, extra = distill_loss(student, teacher, dcfg, None, teacher_caches(teacher, data, vocab))
    student, history = train_model(student, data, vocab, dcfg, None, loss_fn, extra)
    _save(out, "cached-distill", student, history, extra)


CASES = {"whole": whole, "cached": cached}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    distributed.join()
    try:
        for name in sys.argv[2:] or CASES:
            CASES[name](out)
        distributed.leave(finished=True)
    finally:
        distributed.leave()
