"""What every training loop shares at its epochs: the learning-rate schedule, and the end of an epoch (history,
early stopping on validation, the wall-clock cap, the best epoch's weights). Used by ``mmedge.train`` (whole forward
passes) and ``mmedge.train_cache`` (late-fusion models with cached tower prefixes), and the per-epoch checkpoint
a killed run resumes from."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path


def warmup_cosine(opt, steps_per_epoch: int, total: int):
    """Linear warm-up over one epoch (or a tenth of a short fine-tuning run), then cosine decay to zero."""
    import torch

    warmup = min(steps_per_epoch, max(1, total // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


class BestEpoch:
    """The end of every training epoch: its record in the history, early stopping on validation accuracy, the
    optional wall-clock cap, and the best epoch's weights, restored by ``finish``."""

    def __init__(self, model, cfg, on_epoch: Callable[[dict], None] | None = None):
        self.model, self.cfg, self.on_epoch = model, cfg, on_epoch
        self.best_acc, self.best_state, self.stale, self.history = -1.0, None, 0, []
        self.best_loss = math.inf
        self.started = time.perf_counter()

    def end_epoch(
        self, epoch: int, loss: float, train_accuracy: float, val_accuracy: float, val_loss: float | None = None
    ) -> bool:
        """Record epoch ``epoch`` (0-based); True when training should stop. ``val_loss``, where given, breaks ties
        of validation accuracy (lower is better): a distilled student that answers every validation question
        right still gets closer to its teacher."""
        cfg = self.cfg
        record = {
            "epoch": epoch + 1,
            "loss": loss,
            "train_accuracy": train_accuracy,
            "val_accuracy": val_accuracy,
            "seconds": time.perf_counter() - self.started,
        }
        if val_loss is not None:
            record["val_loss"] = val_loss
        self.history.append(record)
        if self.on_epoch:
            self.on_epoch(record)
        closer = val_loss is not None and val_accuracy == self.best_acc and val_loss < self.best_loss
        if val_accuracy > self.best_acc or closer:
            self.best_acc, self.stale = val_accuracy, 0
            self.best_loss = math.inf if val_loss is None else val_loss
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.stale += 1
        if self.stale >= cfg.patience:
            record["stopped"] = "early_stopping"
            return True
        if cfg.max_minutes is not None and record["seconds"] > cfg.max_minutes * 60 and epoch + 1 < cfg.epochs:
            record["stopped"] = "time_cap"
            print(
                f"training stopped by its wall-clock cap (max_minutes: {cfg.max_minutes:g}) after epoch {epoch + 1} "
                f"of {cfg.epochs}; the best epoch on validation is kept. Remove max_minutes to train every epoch.",
                file=sys.stderr,
                flush=True,
            )
            return True
        return False

    def finish(self) -> list[dict]:
        """Restore the best epoch's weights (eval mode) and return the history."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        return self.history


class EpochCheckpoint:
    """A training loop's whole state after its latest epoch, in ``folder/epoch.safetensors``, so that a run that
    was killed resumes at the next epoch instead of from zero, and computes what an uninterrupted run computes:
    the weights, the optimizer's moments, the schedule's position, the best epoch so far and the random
    generators (the loop's, torch's global one, which dropout draws from, and in a distributed run the one that
    draws the masks of the whole step) are restored bit for bit.

    One file, written beside its old version and renamed over it, so a kill mid-write leaves the previous epoch's
    state. The folder belongs to one step and one cache key (the pipeline names it after the step's folder and
    removes it when the step is finished); a state that does not load (damaged, or of another model) is said on
    stderr and training starts from zero. ``folder`` None checkpoints nothing."""

    FILE = "epoch.safetensors"

    def __init__(self, folder: Path | None):
        self.path = None if folder is None else Path(folder) / self.FILE

    def save(self, epoch: int, finished: bool, model, opt, sched, gen, keeper: BestEpoch, extra_params=()) -> None:
        """The state after epoch ``epoch`` (0-based); ``finished``: the loop stops after it. In a distributed run
        every rank calls this: the ranks' torch generators are gathered, and rank 0 writes."""
        if self.path is None:
            return
        import torch
        from safetensors.torch import save_file

        from mmedge.distributed import draws_state, rng_states, world
        from mmedge.runtime.session import replacing

        generators = rng_states(torch.get_rng_state())
        if not world().main:
            return

        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"extra.{i}": p.detach() for i, p in enumerate(extra_params)})
        if keeper.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in keeper.best_state.items()})
        optimizer = opt.state_dict()
        scalars: dict = {}
        for index, state in optimizer["state"].items():
            for name, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"opt.{index}.{name}"] = value
                else:
                    scalars[f"{index}.{name}"] = value
        tensors["rng.loop"] = gen.get_state()
        draws = draws_state()
        if draws is not None:
            tensors["rng.draws"] = draws
        tensors.update({f"rng.torch.{rank}": state for rank, state in enumerate(generators)})
        meta = {
            "epoch": epoch,
            "finished": finished,
            "opt_scalars": scalars,
            "param_groups": optimizer["param_groups"],
            "sched": sched.state_dict(),
            "keeper": {
                "best_acc": keeper.best_acc,
                "best_loss": keeper.best_loss if math.isfinite(keeper.best_loss) else None,
                "stale": keeper.stale,
                "history": keeper.history,
                "elapsed": time.perf_counter() - keeper.started,
                "has_best": keeper.best_state is not None,
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        shared = {k: v.detach().contiguous().clone() for k, v in tensors.items()}  # no storage shared between keys
        with replacing(self.path) as tmp:
            save_file(shared, tmp, metadata={"mmedge.epoch": json.dumps(meta)})

    def restore(self, model, opt, sched, gen, keeper: BestEpoch, extra_params=()) -> tuple[int, bool]:
        """Load the saved state into the loop's objects: (the first epoch still to run, whether the loop had
        finished). (0, False) when nothing was saved, or the state does not fit (then said on stderr). In a
        distributed run every rank loads it, and they must agree on where they resume (else none resumes)."""
        from mmedge.distributed import DistributedError, all_sum, world

        first, finished = self._restore(model, opt, sched, gen, keeper, extra_params)
        size = world().size
        if size > 1 and all_sum([first, float(finished)]) != [first * size, float(finished) * size]:
            raise DistributedError(
                f"the ranks found different epoch checkpoints in {self.path.parent}; remove that folder to train "
                "from epoch 1, and keep the working folder on a file system every rank shares."
            )
        return first, finished

    def _restore(self, model, opt, sched, gen, keeper: BestEpoch, extra_params=()) -> tuple[int, bool]:
        if self.path is None or not self.path.is_file():
            return 0, False
        try:
            first, finished = self._load(model, opt, sched, gen, keeper, extra_params)
        except Exception as exc:  # damaged, or of another model: training from zero is always correct
            print(
                f"note: the epoch checkpoint {self.path} does not load ({type(exc).__name__}); training starts from "
                "epoch 1.",
                file=sys.stderr,
                flush=True,
            )
            return 0, False
        print(
            f"note: resuming after epoch {first} of {keeper.cfg.epochs} from the epoch checkpoint {self.path}.",
            file=sys.stderr,
            flush=True,
        )
        return first, finished

    def _load(self, model, opt, sched, gen, keeper: BestEpoch, extra_params) -> tuple[int, bool]:
        import torch
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as f:
            meta = json.loads(f.metadata()["mmedge.epoch"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        part = lambda prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        model.load_state_dict(part("model."), strict=True)
        extra = part("extra.")
        if len(extra) != len(extra_params):
            raise ValueError("another number of extra parameters")
        with torch.no_grad():
            for i, p in enumerate(extra_params):
                p.copy_(extra[str(i)])
        state: dict = {}
        for key, value in part("opt.").items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        for key, value in meta["opt_scalars"].items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        sched.load_state_dict(meta["sched"])
        from mmedge.distributed import set_draws_state, world

        gen.set_state(tensors["rng.loop"])
        set_draws_state(tensors.get("rng.draws"))
        mine = tensors.get(f"rng.torch.{world().rank}")
        if mine is not None:  # a rank the saving run did not have keeps the generator its seed gave it
            torch.set_rng_state(mine)
        saved = meta["keeper"]
        keeper.best_acc, keeper.stale, keeper.history = saved["best_acc"], saved["stale"], saved["history"]
        keeper.best_loss = math.inf if saved["best_loss"] is None else saved["best_loss"]
        keeper.best_state = part("best.") if saved["has_best"] else None
        keeper.started = time.perf_counter() - saved["elapsed"]
        return meta["epoch"] + 1, meta["finished"]
