"""Pruning steps on PyTorch checkpoints.

``prune.magnitude``: global unstructured L1 pruning. The smallest-magnitude weights of the chosen branches
(ranked together across layers) are set to zero. The result is still a dense model: the .onnx file is as
large and as fast as before, and only compresses better (zip). The step reports exactly that.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from mmedge.artifact import Artifact
from mmedge.distributed import world
from mmedge.errors import MmedgeError
from mmedge.models.spec import BRANCHES, check_branches
from mmedge.results import METRICS, MagnitudePruneMetrics, StructuredPruneMetrics
from mmedge.steps.registry import StepConfig, StepContext, StepResult, register_step


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
        return check_branches(v)


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


@register_step(MagnitudePruneConfig, MagnitudePruneMetrics)
def prune_magnitude_step(cfg: MagnitudePruneConfig, ctx: StepContext) -> StepResult:
    from mmedge.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ctx.artifact.path)
    metrics = magnitude_prune(ckpt.model, cfg)
    return _pruned_result(ckpt, metrics, "prune.magnitude", ctx, omit="pruned_tensors")


def _pruned_result(ckpt, metrics: dict, step: str, ctx, omit: str) -> StepResult:
    """Test accuracy with the modality ablation, then the pruned checkpoint (its extra records ``metrics``)."""
    from mmedge.data import load_dataset
    from mmedge.models.checkpoint import save_checkpoint
    from mmedge.train import evaluate_with_ablation

    metrics.update(evaluate_with_ablation(ckpt.model, load_dataset(ctx.recipe.data), ckpt.vocab))
    out = save_checkpoint(
        ckpt.model,
        ckpt.vocab,
        ckpt.labels,
        ctx.out_dir / "checkpoint",
        extra={**ckpt.extra, step: {k: v for k, v in metrics.items() if k != omit}},
    )
    spec = ckpt.model.spec().to_json()  # widths may have changed; the spec is read from the model as it is now
    return StepResult(
        Artifact(out, "torch-checkpoint", spec, (*ctx.artifact.lineage, step)), METRICS[step].model_validate(metrics)
    )


# --------------------------------------------------------------------------------------------------------------
# prune.structured: real channel, hidden-unit and head removal with torch-pruning's dependency graph
# --------------------------------------------------------------------------------------------------------------


def _check_ratio(value: float, what: str) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} {value} is outside [0, 1); 0.5 removes half of each layer's channels")
    return value


class StructuredPruneConfig(StepConfig):
    type: Literal["prune.structured"] = "prune.structured"
    ratio: float = Field(
        0.5,
        description="Share of channels removed from every prunable layer (conv channels, Linear/FFN width, LSTM "
        "hidden units, attention heads), in [0, 1). Layers are pruned locally, so widths stay uniform per layer.",
    )
    branch_ratios: dict[str, float] = Field(
        default_factory=dict,
        description="Per-modality override of `ratio`, e.g. {image: 0.5, text: 0.5, fusion: 0.25}; branches "
        "not named use `ratio`. The classifier's output layer and the transformer residual width are never pruned.",
    )
    drop_blocks: dict[str, int] = Field(
        default_factory=dict,
        description="Depth pruning for transformer families: residual blocks removed per branch, e.g. {image: 1, "
        "text: 1}, the ones whose removal costs the least validation accuracy, before any channel is removed. At "
        "batch 1 a small transformer's time goes to per-kernel overhead, which only fewer blocks reduce.",
    )
    block_choice: Literal["accuracy", "similarity"] = Field(
        "accuracy",
        description="Which block `drop_blocks` removes each round: 'accuracy', the one whose absence costs the least "
        "validation accuracy; 'similarity', the one whose absence changes least how the branch's encodings of the "
        "validation inputs relate to each other (their cosine-similarity matrix), which needs no labels and keeps "
        "a pretrained tower general where validation accuracy cannot tell blocks apart (a text tower asked a "
        "hundred distinct questions).",
    )
    vocab_size: int | None = Field(
        None,
        ge=1000,
        description="Vocabulary pruning of a WordPiece text tower (effnet-minilm): keep this many most frequent "
        "pieces, every one-character piece and every piece of the training and validation questions; rarer "
        "words are spelled from smaller pieces. all-MiniLM-L6-v2's 30,522-piece table is half its weights. "
        "None keeps the vocabulary.",
    )
    importance: Literal["magnitude", "taylor"] = Field(
        "taylor",
        description="How channels are ranked: L1 magnitude of their weights, or first-order Taylor |w * dL/dw| "
        "from training batches (Molchanov et al. 2019), which accounts for what the data needs.",
    )
    iterative_steps: int = Field(
        3,
        ge=1,
        description="Prune in this many equal steps, fine-tuning after each, rather than all at once.",
    )
    finetune_epochs: int = Field(
        1, ge=0, description="Training epochs after each pruning step (0: none, e.g. when `distill` follows)."
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate of the fine-tuning between steps.")
    finetune_towers: tuple[Literal["image", "text"], ...] = Field(
        (),
        description="Models whose pretrained towers train frozen (effnet-minilm): the towers whose every layer is "
        "fine-tuned between steps too, e.g. [image], as a pruned tower needs to win its accuracy back; the model "
        "is saved frozen as before. A text tower fine-tuned on a data set's few distinct questions may lose its "
        "hold on other wordings.",
    )
    augment: bool = Field(
        True,
        description="Random affine jitter on the fine-tuning's training images, as `train` does; off for models "
        "whose towers' outputs are cached per image (effnet-minilm), where jitter would force a pass per question.",
    )
    round_to: int = Field(
        4, ge=1, description="Keep channel counts multiples of this; CPU kernels prefer multiples of 4 or 8."
    )
    taylor_batches: int = Field(8, ge=1, description="Training batches whose gradients feed Taylor importance.")
    seed: int = Field(0, description="Seeds batches, fine-tuning and augmentation.")
    threads: int = Field(0, ge=0, description="torch threads; 0 uses every core.")

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        return _check_ratio(v, "prune ratio")

    @field_validator("branch_ratios")
    @classmethod
    def _branch_ratios(cls, v: dict[str, float]) -> dict[str, float]:
        for branch, r in check_branches(v).items():
            _check_ratio(r, f"prune ratio of branch '{branch}'")
        return v

    @field_validator("drop_blocks")
    @classmethod
    def _drop_blocks(cls, v: dict[str, int]) -> dict[str, int]:
        for branch, n in check_branches(v).items():
            if n < 0:
                raise ValueError(f"drop_blocks of branch '{branch}' is {n}; give a count >= 0")
        return v

    def ratio_of(self, branch: str) -> float:
        return self.branch_ratios.get(branch, self.ratio)


def _lstm_pruner():
    """torch-pruning handler for nn.LSTM hidden units (its built-in one indexes the gate matrices wrongly).

    A hidden unit j owns row j of each of the four gate blocks (i, f, g, o) in weight_ih / weight_hh /
    biases, and column j of weight_hh (the recurrence). Removing it keeps the LSTM exact for the other units.
    """
    import torch
    import torch_pruning as tp
    from torch import nn

    class LstmPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = nn.LSTM

        @staticmethod
        def _check(layer: nn.LSTM) -> None:
            if layer.num_layers != 1 or layer.bidirectional or layer.proj_size:
                raise MmedgeError(
                    "structured pruning handles single-layer, unidirectional LSTMs without projections; "
                    "exclude this branch with branch_ratios {text: 0}."
                )

        @staticmethod
        def _keep(n: int, idxs) -> torch.Tensor:
            drop = set(int(i) for i in idxs)
            return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)

        def _select(self, layer: nn.LSTM, name: str, keep: torch.Tensor, dim: int) -> None:
            old = getattr(layer, name)
            setattr(layer, name, nn.Parameter(old.data.index_select(dim, keep).contiguous(), old.requires_grad))

        def prune_out_channels(self, layer: nn.LSTM, idxs) -> nn.Module:
            self._check(layer)
            h = layer.hidden_size
            keep = self._keep(h, idxs)
            gates = torch.cat([keep + g * h for g in range(4)])  # rows of the i, f, g, o blocks
            self._select(layer, "weight_ih_l0", gates, 0)
            self._select(layer, "weight_hh_l0", gates, 0)
            self._select(layer, "weight_hh_l0", keep, 1)
            if layer.bias:
                self._select(layer, "bias_ih_l0", gates, 0)
                self._select(layer, "bias_hh_l0", gates, 0)
            layer.hidden_size = len(keep)
            return layer

        def prune_in_channels(self, layer: nn.LSTM, idxs) -> nn.Module:
            self._check(layer)
            keep = self._keep(layer.input_size, idxs)
            self._select(layer, "weight_ih_l0", keep, 1)
            layer.input_size = len(keep)
            return layer

        def get_out_channels(self, layer: nn.LSTM) -> int:
            return layer.hidden_size

        def get_in_channels(self, layer: nn.LSTM) -> int:
            return layer.input_size

    return LstmPruner()


def _importance(kind: str):
    """torch-pruning importance plus the LSTM's own weights, which its scorers do not read.

    A hidden unit's score adds the L1 norm of its gate rows and recurrent column (mean-normalized) to what
    the group's other layers (the consumers of the LSTM output) say about it.
    """
    import torch
    import torch_pruning as tp
    from torch import nn

    base_cls = tp.importance.GroupTaylorImportance if kind == "taylor" else tp.importance.GroupMagnitudeImportance

    class WithLstm(base_cls):
        def __call__(self, group):
            imp = super().__call__(group)
            for dep, idxs in group:
                layer = dep.target.module
                if not isinstance(layer, nn.LSTM) or dep.handler.__name__ != "prune_out_channels":
                    continue
                h = layer.hidden_size
                score = torch.zeros(h)
                for name in ("weight_ih_l0", "weight_hh_l0"):
                    w = getattr(layer, name).detach().abs()
                    if kind == "taylor" and getattr(layer, name).grad is not None:
                        w = (getattr(layer, name).detach() * getattr(layer, name).grad).abs()
                    score += w.view(4, h, -1).sum((0, 2))
                score += layer.weight_hh_l0.detach().abs().sum(0)
                score = score[torch.as_tensor([int(i) for i in idxs])] if len(idxs) != h else score
                score = score / score.mean().clamp(min=1e-12)
                imp = score if imp is None else (imp + score.to(imp)) / 2
            return imp

    return WithLstm()


def _branch_parameters(model) -> dict[str, int]:
    spec = model.spec()
    out: dict[str, int] = {}
    for name, param in model.named_parameters():
        branch = spec.branch_of(name.rsplit(".", 1)[0]) or spec.branch_of(name) or "other"
        out[branch] = out.get(branch, 0) + param.numel()
    return out


def model_size(model) -> dict:
    """The options that rebuild ``model`` and its parameter count per branch."""
    return {"options": model.current_options(), "parameters": _branch_parameters(model)}


def _example_inputs(model, data, vocab, n: int = 4):
    from mmedge.train import _tensors

    return _tensors(data.train, vocab, np.arange(n), prep=model.spec().image)


def structured_prune(
    model, data, vocab, cfg: StructuredPruneConfig, progress: str = "off", before: dict | None = None
) -> dict:
    """Remove channels, hidden units and heads from ``model`` in place; returns what changed and the
    validation accuracy after each step. ``before``: the options and per-branch parameter counts to report as the
    starting point, when the model was already changed (its vocabulary pruned)."""
    import torch
    import torch_pruning as tp
    from torch import nn

    from mmedge.runtime.evaluate import score
    from mmedge.train import TrainConfig, predict_split, train_model

    torch.manual_seed(cfg.seed)
    model.eval()
    spec = model.spec()
    before = before or model_size(model)
    example = _example_inputs(model, data, vocab)
    macs_before, _ = tp.utils.count_ops_and_params(model, example)
    dropped = drop_blocks(model, data, vocab, cfg.drop_blocks, cfg.block_choice) if cfg.drop_blocks else {}

    ratio_dict: dict = {}
    for branch, prefixes in spec.branches.items():
        for prefix in prefixes:
            module = _submodule(model, prefix)
            if module is not None:
                ratio_dict[module] = cfg.ratio_of(branch)
    attention = [m for m in model.modules() if hasattr(m, "num_heads") and hasattr(m, "q")]
    num_heads, head_ratios = {}, {}
    for name, m in model.named_modules():
        if m in attention:
            r = cfg.ratio_of(spec.branch_of(name) or "other")
            for proj in (m.q, m.k, m.v):
                num_heads[proj], head_ratios[proj] = m.num_heads, r
    with warnings.catch_warnings(), _all_trainable(model):  # traced: frozen layers too
        # position tables and the query token keep the residual width; nothing to do
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=_importance(cfg.importance),
            pruning_ratio=cfg.ratio,
            pruning_ratio_dict=ratio_dict,
            iterative_steps=cfg.iterative_steps,
            ignored_layers=model.prune_fixed_modules(),
            round_to=cfg.round_to,
            num_heads=num_heads,
            prune_num_heads=bool(num_heads),
            prune_head_dims=False,  # whole heads go; each remaining head keeps its width
            head_pruning_ratio_dict=head_ratios or None,
            customized_pruners={nn.LSTM: _lstm_pruner()},
            root_module_types=[nn.Conv2d, nn.Linear, nn.LSTM],
        )
    for proj, heads in num_heads.items():
        pruner.head_pruning_ratio_dict[proj] = _head_schedule(heads, head_ratios[proj], cfg.iterative_steps)
    history = []
    tune = TrainConfig(
        epochs=max(1, cfg.finetune_epochs),
        lr=cfg.lr,
        seed=cfg.seed,
        threads=cfg.threads,
        patience=99,
        augment=cfg.augment,
    )
    if cfg.finetune_towers and not hasattr(model, "set_trained"):
        raise MmedgeError(
            f"finetune_towers applies to models whose towers train frozen; {model.family} trains every layer "
            "already, so drop the option."
        )
    trained = dict(model.config.model_dump()) if cfg.finetune_towers else {}
    for step in range(cfg.iterative_steps):
        if cfg.importance == "taylor":
            _accumulate_gradients(model, data, vocab, cfg)
        with _all_trainable(model):
            pruner.step()
        model.zero_grad(set_to_none=True)
        for m in attention:  # whole heads were removed: keep the reshape in step with the projections
            m.num_heads = m.q.out_features // m.head_dim
        if cfg.finetune_epochs:
            if cfg.finetune_towers:
                model.set_trained(
                    image_blocks=99 if "image" in cfg.finetune_towers else trained["train_image_blocks"],
                    text_layers=99 if "text" in cfg.finetune_towers else trained["train_text_layers"],
                )
            model, _ = train_model(model, data, vocab, tune.model_copy(update={"seed": cfg.seed + step}))
            if cfg.finetune_towers:
                model.set_trained(trained["train_image_blocks"], trained["train_text_layers"])
        model.eval()
        val = score(predict_split(model, data.val, vocab), data.val).accuracy if world().main else 0.0
        history.append(
            {"step": step + 1, "parameters": sum(p.numel() for p in model.parameters()), "val_accuracy": val}
        )
        if progress == "lines":
            print(f"prune.structured step {step + 1}/{cfg.iterative_steps}: val {val:.1%}", file=sys.stderr, flush=True)
    macs_after, _ = tp.utils.count_ops_and_params(model, example)
    after = model_size(model)
    total_before, total_after = sum(before["parameters"].values()), sum(after["parameters"].values())
    return {
        "ratio": cfg.ratio,
        "branch_ratios": {b: cfg.ratio_of(b) for b in BRANCHES},
        "importance": cfg.importance,
        "parameters_before": total_before,
        "parameters_after": total_after,
        "parameter_ratio": total_after / total_before,
        "macs_before": int(macs_before),
        "macs_after": int(macs_after),
        "per_branch": {
            b: {"before": before["parameters"].get(b, 0), "after": after["parameters"].get(b, 0)}
            for b in sorted(set(before["parameters"]) | set(after["parameters"]))
        },
        "options_before": before["options"],
        "options_after": after["options"],
        "dropped_blocks": dropped,
        "history": history,
    }


def drop_blocks(model, data, vocab, counts: dict[str, int], choice: str = "accuracy") -> dict[str, list[dict]]:
    """Remove whole residual blocks, per branch, in place: each round skips every remaining block in turn and
    removes the one missed least, by validation accuracy or by the similarity structure of the branch's encodings
    (``choice``; see ``StructuredPruneConfig.block_choice``)."""
    from torch import nn

    from mmedge.runtime.evaluate import score
    from mmedge.train import predict_split

    groups = model.residual_blocks() if hasattr(model, "residual_blocks") else {}
    removed: dict[str, list[dict]] = {}
    for branch, n in counts.items():
        blocks = groups.get(branch)
        have = 0 if blocks is None else len(blocks)
        if n > have:
            raise MmedgeError(
                f"drop_blocks asks for {n} block(s) of the {branch} branch, which has {have} removable; lower it."
            )
        if n == 0:
            continue
        path = next(name for name, m in model.named_modules() if m is blocks)
        parent, _, attr = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if choice == "similarity":
            structure = _BranchStructure(model, branch, data.val, vocab)
        removed[branch] = []
        for _ in range(n):
            trials = []
            for i in range(len(blocks)):
                setattr(owner, attr, nn.ModuleList(b for j, b in enumerate(blocks) if j != i))
                if choice == "similarity":
                    trials.append((-structure.distance(model), -i))
                else:
                    trials.append((score(predict_split(model, data.val, vocab), data.val).accuracy, -i))
            best, worst = max(trials)  # the block whose absence hurts least (the earliest on a tie)
            blocks = nn.ModuleList(b for j, b in enumerate(blocks) if j != -worst)
            setattr(owner, attr, blocks)
            if choice == "similarity":
                removed[branch].append({"index": -worst, "similarity_distance": -best})
            else:
                removed[branch].append({"index": -worst, "val_accuracy_without": best})
    return removed


class _BranchStructure:
    """How a branch's encodings of the validation inputs relate to each other: the cosine-similarity matrix of the
    encodings of the distinct questions (text) or of up to 256 pictures (image), as the unpruned model gives it;
    ``distance`` is the RMS difference from it of the same matrix for the model as it is now."""

    def __init__(self, model, branch: str, split, vocab):
        import torch

        encode = getattr(model, f"encode_{branch}", None)
        if branch not in ("image", "text") or encode is None:
            raise MmedgeError(
                f"block_choice 'similarity' compares encodings of the {branch} branch, which this model does not "
                "expose (encode_image / encode_text); use block_choice 'accuracy'."
            )
        if branch == "text":
            ids, mask = vocab.encode(sorted(set(split.texts)))
            self.inputs = (torch.from_numpy(ids), torch.from_numpy(mask))
        else:
            rows = np.unique(split.image_index)[:256]
            self.inputs = (torch.from_numpy(split.pictures(rows, model.spec().image)),)
        self.encode = encode
        self.reference = self._similarity()

    def _similarity(self):
        import torch

        from mmedge.models.minilm import mean_pool

        with torch.no_grad():
            out = self.encode(*self.inputs)
        if isinstance(out, tuple):  # token states and their mask: the mean over real tokens
            out = mean_pool(*out)
        elif out.dim() > 2:  # tokens or a map: their mean
            out = out.flatten(2).mean(2) if out.dim() == 4 else out.mean(1)
        unit = torch.nn.functional.normalize(out.float(), dim=1)
        return unit @ unit.T

    def distance(self, model) -> float:
        model.eval()
        return float(((self._similarity() - self.reference) ** 2).mean().sqrt())


def _head_schedule(heads: int, ratio: float, steps: int) -> list[float]:
    """Per-step head ratios for torch-pruning, which applies each step's ratio to the heads left *now*
    (rounding up): the cumulative schedule it is given would remove too many heads over several steps."""
    total = min(heads - 1, int(heads * ratio + 1e-9))  # at least one head stays
    done, out = 0, [0.0]  # torch-pruning reads entry `current_step`, counted from 1
    for step in range(steps):
        target = round(total * (step + 1) / steps)
        remove, left = target - done, heads - done
        out.append(max(0.0, remove / left - 1e-6) if remove else 0.0)
        done = target
    return out


def _submodule(model, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None  # a parameter (position table, query token), not a module


def _accumulate_gradients(model, data, vocab, cfg: StructuredPruneConfig) -> None:
    """Gradients of the task loss over a few training batches, for Taylor importance."""
    import torch
    import torch.nn.functional as F

    from mmedge.train import _tensors

    rng = np.random.default_rng(cfg.seed)
    model.eval()  # BatchNorm statistics and dropout stay fixed; only gradients are wanted
    model.zero_grad(set_to_none=True)
    with _all_trainable(model):  # a frozen pretrained tower is pruned too: its channels need gradients to be ranked
        for _ in range(cfg.taylor_batches):
            rows = rng.choice(len(data.train), size=min(64, len(data.train)), replace=False)
            image, ids, mask = _tensors(data.train, vocab, rows, prep=model.spec().image)
            F.cross_entropy(model(image, ids, mask), torch.from_numpy(data.train.labels[rows])).backward()


@contextmanager
def _all_trainable(model):
    """Every parameter requires grad inside, as torch-pruning needs to trace a frozen tower's layers and Taylor
    importance needs their gradients; on leaving, the parameters frozen before (by name: pruning replaces the
    tensors) are frozen again, so fine-tuning trains what it trained before."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)


@register_step(StructuredPruneConfig, StructuredPruneMetrics)
def prune_structured_step(cfg: StructuredPruneConfig, ctx: StepContext) -> StepResult:
    from mmedge.data import load_dataset
    from mmedge.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ctx.artifact.path)
    data = load_dataset(ctx.recipe.data)
    before = model_size(ckpt.model)
    vocabulary = prune_vocabulary(ckpt, data, cfg.vocab_size) if cfg.vocab_size else None
    metrics = structured_prune(ckpt.model, data, ckpt.vocab, cfg, progress=ctx.progress, before=before)
    if not world().main:
        return None  # every rank pruned and fine-tuned alike; rank 0 evaluates and writes
    metrics = {**metrics, "vocabulary": vocabulary, **world().to_json()}
    return _pruned_result(ckpt, metrics, "prune.structured", ctx, omit="history")


def prune_vocabulary(ckpt, data, keep_first: int) -> dict:
    """Trim the checkpoint's WordPiece vocabulary and its model's word embeddings in place (``ckpt.vocab`` becomes
    the smaller tokenizer); returns the sizes before and after."""
    from mmedge.compress.vocab import trim_wordpiece

    if not hasattr(ckpt.model, "keep_tokens"):
        raise MmedgeError(
            f"vocab_size prunes the word embeddings of a WordPiece text tower; the {ckpt.family} family has none, "
            "so drop vocab_size."
        )
    before = len(ckpt.vocab)
    ckpt.vocab, old_ids = trim_wordpiece(ckpt.vocab, keep_first, [*data.train.texts, *data.val.texts])
    ckpt.model.keep_tokens(old_ids)
    return {"pieces_before": before, "pieces_after": len(old_ids), "keep_first": keep_first}
