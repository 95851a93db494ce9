"""What every training loop shares at its epochs: the learning-rate schedule, and the end of an epoch (history,
early stopping on validation, the wall-clock cap, the best epoch's weights). Used by ``mmedge.train`` (whole forward
passes) and ``mmedge.train_cache`` (late-fusion models with cached tower prefixes)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable


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
