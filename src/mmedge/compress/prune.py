"""Pruning steps on PyTorch checkpoints.

``prune.magnitude``: global unstructured L1 pruning. The smallest-magnitude weights of the chosen branches
(ranked together across layers) are set to zero. The result is still a dense model: the .onnx file is as
large and as fast as before, and only compresses better (zip). The step reports exactly that.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mmedge.artifact import Artifact, StepResult
from mmedge.models.spec import BRANCHES
from mmedge.recipe import StepConfig, register_step


class MagnitudePruneConfig(StepConfig):
    type: Literal["prune.magnitude"] = "prune.magnitude"
    sparsity: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Share of the selected weights set to zero, ranked "
        "globally by |w| across the selected layers, in [0, 1).",
    )
    branches: tuple[str, ...] = Field(
        BRANCHES,
        min_length=1,
        description="Modality branches to prune (image, text, fusion, head); the rest keep every weight.",
    )

    @field_validator("branches")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in v if b not in BRANCHES]
        if unknown:
            raise ValueError(f"unknown branch {unknown[0]!r}; branches are {', '.join(BRANCHES)}")
        return v


def prunable_weights(model, branches: tuple[str, ...]) -> list[tuple[str, object, str]]:
    """(parameter name, module, attribute) for every weight matrix/kernel (dim >= 2) in the given branches."""
    spec = model.spec()
    out = []
    for mod_name, module in model.named_modules():
        branch = spec.branch_of(mod_name)
        if branch not in branches:
            continue
        for attr, param in module.named_parameters(recurse=False):
            if param.dim() >= 2 and "weight" in attr:
                out.append((f"{mod_name}.{attr}", module, attr))
    return out


def magnitude_prune(model, cfg: MagnitudePruneConfig) -> dict:
    """Prune ``model`` in place (permanently); returns the sparsity reached, overall and per branch."""
    import torch
    from torch.nn.utils import prune

    targets = prunable_weights(model, cfg.branches)
    if cfg.sparsity > 0 and targets:
        prune.global_unstructured(
            [(m, a) for _, m, a in targets], pruning_method=prune.L1Unstructured, amount=cfg.sparsity
        )
        for _, module, attr in targets:
            prune.remove(module, attr)
    spec = model.spec()
    per_branch: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        branch = spec.branch_of(name.rsplit(".", 1)[0]) or spec.branch_of(name) or "other"
        stats = per_branch.setdefault(branch, {"weights": 0, "zeros": 0})
        stats["weights"] += param.numel()
        stats["zeros"] += int((param == 0).sum())
    selected = [getattr(m, a) for _, m, a in targets]
    zeros = sum(int((p == 0).sum()) for p in selected)
    total = sum(p.numel() for p in selected)
    with torch.no_grad():
        all_params = sum(p.numel() for p in model.parameters())
        all_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return {
        "target_sparsity": cfg.sparsity,
        "sparsity_reached": zeros / total if total else 0.0,
        "model_sparsity": all_zeros / all_params,
        "pruned_tensors": [n for n, _, _ in targets],
        "per_branch": {b: {**s, "sparsity": s["zeros"] / s["weights"]} for b, s in per_branch.items()},
        "note": "unstructured sparsity: the dense ONNX file keeps its size and speed; only its zip shrinks",
    }


@register_step(MagnitudePruneConfig, consumes="torch-checkpoint", produces="torch-checkpoint")
def prune_magnitude_step(cfg: MagnitudePruneConfig, ctx) -> StepResult:
    from mmedge.data import load_dataset
    from mmedge.models.checkpoint import load_checkpoint, save_checkpoint
    from mmedge.train import evaluate_with_ablation

    ckpt = load_checkpoint(ctx.artifact.path)
    metrics = magnitude_prune(ckpt.model, cfg)
    data = load_dataset(ctx.recipe.data)
    metrics.update(evaluate_with_ablation(ckpt.model, data.test, ckpt.vocab))
    out = save_checkpoint(
        ckpt.model,
        ckpt.vocab,
        ckpt.labels,
        ctx.out_dir / "checkpoint",
        extra={**ckpt.extra, "prune.magnitude": {k: v for k, v in metrics.items() if k != "pruned_tensors"}},
    )
    return StepResult(
        Artifact(out, "torch-checkpoint", ctx.artifact.spec, (*ctx.artifact.lineage, "prune.magnitude")), metrics
    )
