"""Data-parallel training on PyTorch's distributed engine: ``torchrun`` and DistributedDataParallel.

Every rank runs the whole ``mmedge run``. The steps that train (``train``, the fine-tuning of ``prune.structured``,
``distill``, and the tower caches they build) run on every rank: each epoch's order is drawn from the recipe's seed
on every rank alike, each optimizer step takes the recipe's *global* batch and each rank computes its own slice of
it (``Shard``), DistributedDataParallel averages the gradients, and the epoch's loss and accuracy are summed over
the ranks. Rank 0 validates and its figures decide early stopping on every rank. Every other step runs on rank 0
alone while the others wait for its word (``Coordinator``); only rank 0 writes the run folder, the results and the
bundle. A single process (no ``WORLD_SIZE`` in the environment) is a world of one, and the code paths are the same.

mmedge trains on the CPU, so the backend is ``gloo``; ``nccl`` joins CUDA tensors only and is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

from mmedge.errors import MmedgeError

DEFAULT_TIMEOUT_MINUTES = 30.0  # a collective or a wait for rank 0 that takes longer stops the run
BACKENDS = ("gloo",)


class DistributedError(MmedgeError):
    """A distributed run that cannot go on: a rank that failed or timed out, a batch that does not divide."""


class PeerFailedError(DistributedError):
    """Another rank stopped the run; that rank says why, so this one leaves without a message of its own."""

    exit_code = 1


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_MINUTES * 60

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def threads(self, asked: int = 0) -> int:
        """torch threads for one rank: ``asked``, or this machine's cores shared among its ranks."""
        return asked or max(1, (os.cpu_count() or 1) // self.local_size)

    def to_json(self) -> dict:
        return {"world_size": self.size, "dist_backend": self.backend}


_world = World()


def world() -> World:
    return _world


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def launched_rank() -> int | None:
    """This process's rank as its launcher set it (also after the process group is left), or None."""
    return int(os.environ.get("RANK", "0") or 0) if launched() else None


# What gloo says when the process at the other end of a connection is gone: that rank failed, and says why itself.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket closed")


def peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that broke because another rank's process ended."""
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in PEER_GONE)


def join(backend: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> World:
    """Join the process group that torchrun's environment describes (RANK, WORLD_SIZE, MASTER_ADDR, ...); for one
    process, nothing to join."""
    global _world
    if not launched():
        return _world
    if backend == "auto":
        backend = "gloo"
    if backend not in BACKENDS:
        raise DistributedError(
            f"the distributed backend {backend!r} does not fit: mmedge trains on the CPU, which only gloo joins; pass "
            "--dist-backend gloo (or auto)."
        )
    import torch.distributed as dist

    timeout = timedelta(minutes=timeout_minutes)
    dist.init_process_group(
        backend,
        store=_store(timeout),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timeout,
    )
    _world = World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
        backend=backend,
        timeout_s=timeout.total_seconds(),
    )
    return _world


def _store(timeout: timedelta):
    """The key-value store the ranks meet in, under a prefix of its own for each of torchrun's restarts. torchrun's
    agent keeps one store for every attempt of a run (``TORCHELASTIC_USE_AGENT_STORE``), so without the prefix a
    restarted rank can read the address a rank of the failed attempt left there, and connect to a process that is
    gone. Outside torchrun's agent, rank 0 hosts the store."""
    import torch.distributed as dist

    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=not agent and os.environ["RANK"] == "0",
        timeout=timeout,
        multi_tenant=not agent,
    )
    return dist.PrefixStore(f"mmedge/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def leave(finished: bool = False) -> None:
    """Leave the process group (at the end of a run). ``finished``: every rank ended the run and leaves; they meet
    at a barrier first. The DistributedDataParallel wrappers of the training steps, which hold the group, are
    collected before it is destroyed: left to the interpreter's exit, their teardown after the group's aborted a
    rank's process in about one run of four."""
    global _world
    if _world.active:
        import gc

        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                dist.barrier()
            gc.collect()
            dist.destroy_process_group()
    _world = World()


def per_rank(global_batch: int, what: str = "batch_size", images_per_step: int | None = None) -> int:
    """The batch each rank computes of the recipe's global ``global_batch``; refused when it does not divide."""
    w = _world
    if w.size == 1:
        return global_batch
    unit = images_per_step if images_per_step is not None else global_batch
    kind = "images per step" if images_per_step is not None else "questions per step"
    if unit % w.size:
        raise DistributedError(
            f"{what} {global_batch} ({unit} {kind}) does not divide among {w.size} ranks; set {what} to a multiple "
            f"of {w.size if images_per_step is None else f'{w.size} x questions_per_image'}, or run with a number "
            "of processes that divides it."
        )
    return global_batch // w.size


@dataclass(frozen=True)
class Shard:
    """This rank's slice ``[start, stop)`` of a step's ``total`` rows (images or questions), and the factor that
    makes the gradient DistributedDataParallel averages over the ranks equal to that of the mean loss over the
    whole global batch: a rank's mean loss times ``rows * ranks / total``."""

    start: int
    stop: int
    total: int

    @property
    def scale(self) -> float:
        return (self.stop - self.start) * _world.size / self.total

    def take(self, values):
        return values[self.start : self.stop]


def shard(total: int) -> Shard | None:
    """This rank's contiguous part of ``total`` rows (sizes differ by one at most; the whole in a world of one), or
    None on every rank when the rows are fewer than the ranks: an epoch's last, partial step that small is left out,
    as a rank cannot train on nothing."""
    w = _world
    if total < w.size:
        return None
    return Shard(total * w.rank // w.size, total * (w.rank + 1) // w.size, total)


def data_parallel(model, extra_params=()):
    """A callable ``run(compute, *args)`` that computes one training step's forward pass, ``compute(*args)``, through
    DistributedDataParallel over ``model`` and ``extra_params`` (so that their gradients are averaged over the
    ranks in backward); in a world of one it calls ``compute`` directly. DDP copies rank 0's weights to every rank
    when it is built, and rank 0's buffers (BatchNorm statistics) at every step."""
    if not _world.active:
        return lambda compute, *args: compute(*args)
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.extra = torch.nn.ParameterList(list(extra_params))

        def forward(self, compute, *args):
            return compute(*args)

    return DistributedDataParallel(Step())


@dataclass(frozen=True)
class Rows:
    """The rows of the whole step's batch that a forward pass on this rank holds: ``index`` (local row -> row of
    the ``total`` rows one process would hold), and ``counted`` (local rows whose BatchNorm statistics this rank
    adds; a row every rank holds, such as the blank frame of modality dropout, is counted by rank 0 alone)."""

    total: int
    index: object  # torch.Tensor (local,) int64
    counted: object = None  # torch.Tensor (local,) bool, or None for every row


_rows: Rows | None = None  # what the forward pass running now holds (``step_rows``)
_draws = None  # torch.Generator for masks over the whole step, in the same state on every rank (``global_batch``)


@contextlib.contextmanager
def step_rows(part: Shard, held_by_all: int = 0):
    """Inside, forward passes hold ``part`` of the step's rows, followed by ``held_by_all`` rows that every rank
    holds and one process holds once, after the ``part.total`` others (the blank frame). Nothing in a world of
    one."""
    global _rows
    if not _world.active:
        yield
        return
    import torch

    index = torch.cat([torch.arange(part.start, part.stop), part.total + torch.arange(held_by_all)])
    counted = torch.cat([torch.ones(part.stop - part.start, dtype=torch.bool), torch.full((held_by_all,), _world.main)])
    before, _rows = _rows, Rows(part.total + held_by_all, index, counted if held_by_all else None)
    try:
        yield
    finally:
        _rows = before


def _held_rows(shape, contiguous: bool = True) -> Rows | None:
    """The step's rows when a tensor of ``shape`` is laid out by them (first dimension, outermost in memory)."""
    rows = _rows
    if rows is None or _draws is None or not shape or shape[0] != len(rows.index) or not contiguous:
        return None
    return rows


def keep_mask(shape, keep: float, dtype):
    """A mask of ``shape`` whose entries are 1 with probability ``keep`` (dropout's, drop-path's). Where its first
    dimension holds this rank's rows of the step, the mask is drawn for the whole step from a generator in the same
    state on every rank, and this rank's rows are taken: every row gets the mask one process would give it, drawn
    as that process draws it. Otherwise (a world of one, or a tensor not laid out by the step's rows) it is drawn
    from torch's global generator, which each rank of several seeds apart from the others."""
    import torch

    rows = _held_rows(shape)
    if rows is None:
        return torch.empty(shape, dtype=dtype).bernoulli_(keep)
    whole = torch.empty((rows.total, *shape[1:]), dtype=dtype).bernoulli_(keep, generator=_draws)
    return whole[rows.index]


def draws_state():
    """The state of the whole-step mask generator (the same on every rank), or None outside ``global_batch``."""
    return None if _draws is None else _draws.get_state()


def set_draws_state(state) -> None:
    if _draws is not None and state is not None:
        _draws.set_state(state)


@contextlib.contextmanager
def global_batch(model, seed: int):
    """Inside, ``model`` trains on every rank as one process computing the whole global batch would:

    - its BatchNorm layers that train normalize with the statistics of the whole batch (summed over the ranks, and
      differentiated through that sum); each rank's own share would give other statistics, and other weights.
      PyTorch's SyncBatchNorm takes CUDA tensors only, so this is its CPU counterpart for gloo;
    - its dropout layers (``nn.Dropout``) draw their masks for the whole step from a generator seeded with ``seed``,
      as one process seeded with ``seed`` draws them from torch's global generator, and each rank takes its rows
      (``keep_mask``, ``step_rows``).

    Nothing changes in a world of one."""
    global _draws
    if not _world.active:
        yield
        return
    import torch

    if not _SYNCED:
        _build_synced()
    swapped = []
    for module in model.modules():
        if type(module) in _SYNCED:
            swapped.append((module, type(module)))
            module.__class__ = _SYNCED[type(module)]
    before, _draws = _draws, torch.Generator().manual_seed(seed)
    try:
        yield
    finally:
        _draws = before
        for module, cls in swapped:
            module.__class__ = cls


_SYNCED: dict = {}


def _build_synced() -> None:
    """The BatchNorm classes that sum their batch statistics over the ranks (``global_batch_norm``)."""
    import torch
    import torch.distributed as dist
    from torch import nn

    class RankSum(torch.autograd.Function):
        """A sum over the ranks whose gradient is the sum of the ranks' gradients (every rank's loss depends on
        every rank's share)."""

        @staticmethod
        def forward(ctx, x):
            x = x.clone()
            dist.all_reduce(x)
            return x

        @staticmethod
        def backward(ctx, grad):
            grad = grad.clone()
            dist.all_reduce(grad)
            return grad

    def normalize(self, x):
        if not self.training or not self.track_running_stats:
            return super(type(self), self).forward(x)
        dims = [0, *range(2, x.dim())]
        rows = _held_rows(x.shape, x.is_contiguous())
        counted = x.double()
        if rows is not None and rows.counted is not None:  # a row every rank holds counts once
            counted = counted * rows.counted.view(-1, *([1] * (x.dim() - 1))).double()
        per_row = x.numel() / x.shape[0] / x.shape[1]
        n_rows = len(x) if rows is None or rows.counted is None else int(rows.counted.sum())
        count = torch.tensor([n_rows * per_row], dtype=torch.float64)
        local = torch.cat([counted.sum(dims), (counted * x.double()).sum(dims), count])
        total = RankSum.apply(local)
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        shape = (1, c, *([1] * (x.dim() - 2)))
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype) + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            self.num_batches_tracked += 1
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            unbiased = var * n / (n - 1).clamp_min(1)
            self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
            self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y

    def dropout(self, x):
        if not self.training or not 0 < self.p < 1 or _held_rows(x.shape, x.is_contiguous()) is None:
            return super(type(self), self).forward(x)
        mask = keep_mask(x.shape, 1 - self.p, x.dtype)
        mask.div_(1 - self.p)  # as torch's dropout on the CPU: the mask scaled, then multiplied
        return x.mul_(mask) if self.inplace else x * mask

    for base in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        _SYNCED[base] = type(f"Global{base.__name__}", (base,), {"forward": normalize})
    _SYNCED[nn.Dropout] = type("GlobalDropout", (nn.Dropout,), {"forward": dropout})


def broadcast_state(model) -> None:
    """Rank 0's weights and buffers on every rank. The ranks' weights agree after training, but each rank's
    BatchNorm statistics are its own batches' until the next forward pass; what follows (pruning decisions,
    validation) must see one model."""
    if not _world.active:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)


def all_sum(values: list[float]) -> list[float]:
    """``values`` summed over the ranks (float64)."""
    if not _world.active:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def from_main(values: list[float]) -> list[float]:
    """Rank 0's ``values`` on every rank (each rank passes a list of the same length)."""
    if not _world.active:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.broadcast(t, 0)
    return t.tolist()


def gather_rows(compute, n: int, chunk: int):
    """``compute(start, stop)`` for the chunks of ``n`` rows, each chunk computed on one rank (round robin) and the
    results joined in row order on every rank: a tensor of ``n`` rows. Each chunk's rows are known on every rank,
    so the ranks exchange padded tensors of one shape."""
    import torch

    starts = list(range(0, n, chunk))
    if not _world.active:
        return torch.cat([compute(s, min(s + chunk, n)) for s in starts])
    import torch.distributed as dist

    w = _world
    mine = starts[w.rank :: w.size]
    parts = [compute(s, min(s + chunk, n)) for s in mine]
    if not parts:  # fewer chunks than ranks: one row computed to learn the shape, then dropped
        probe = compute(0, 1)
        local = probe[:0]
    else:
        local = torch.cat(parts)
    rows_of = [sum(min(s + chunk, n) - s for s in starts[r :: w.size]) for r in range(w.size)]
    width = max(rows_of)
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(w.size)]
    dist.all_gather(gathered, padded.contiguous())
    pieces = {}
    for r in range(w.size):
        at = 0
        for s in starts[r :: w.size]:
            size = min(s + chunk, n) - s
            pieces[s] = gathered[r][at : at + size]
            at += size
    return torch.cat([pieces[s] for s in starts])


def rng_states(state):
    """Every rank's torch random-generator state (uint8 tensors of one length), on every rank."""
    if not _world.active:
        return [state]
    import torch
    import torch.distributed as dist

    out = [torch.empty_like(state) for _ in range(_world.size)]
    dist.all_gather(out, state.contiguous())
    return out


class Coordinator:
    """Rank 0's word to the other ranks between steps: JSON messages broadcast as bytes (no pickle). The other ranks
    wait for each with the run's timeout; a message that says rank 0 failed stops them without a second message."""

    def __init__(self):
        self.w = _world

    def send(self, message: dict) -> None:
        self._exchange(message)

    def receive(self) -> dict:
        message = self._exchange(None)
        if "failed" in message:
            raise PeerFailedError(f"rank 0 stopped the run: {message['failed']}")
        return message

    def _exchange(self, message: dict | None) -> dict:
        import torch
        import torch.distributed as dist

        if self.w.main:
            data = json.dumps(message).encode()
            size = torch.tensor([len(data)], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        self._wait(dist.broadcast(size, 0, async_op=True))
        payload = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if self.w.main
            else torch.empty(int(size), dtype=torch.uint8)
        )
        self._wait(dist.broadcast(payload, 0, async_op=True))
        return message if self.w.main else json.loads(bytes(payload.numpy()).decode())

    def _wait(self, work) -> None:
        try:
            work.wait(timeout=timedelta(seconds=self.w.timeout_s))
        except RuntimeError as exc:
            raise DistributedError(
                f"rank {self.w.rank} waited {self.w.timeout_s / 60:g} minutes for rank 0 without word ({exc}); a rank "
                "stopped or hangs. Raise --dist-timeout when one of rank 0's steps takes longer."
            ) from None


def check_shared_folder(root) -> None:
    """Every rank must see the run folder rank 0 writes (its steps' outputs are the next step's inputs): rank 0
    writes a token there, and each other rank reads it back."""
    if not _world.active:
        return
    from pathlib import Path

    token_file = Path(root) / ".ranks"
    coord = Coordinator()
    if _world.main:
        token = os.urandom(8).hex()
        token_file.write_text(token)
        coord.send({"token": token})
        ok = True
    else:
        token = coord.receive()["token"]
        try:
            ok = token_file.read_text() == token
        except OSError:
            ok = False
    blind = all_sum([0.0 if ok else 1.0])[0]
    if not ok:
        raise DistributedError(
            f"rank {_world.rank} on {socket.gethostname()} does not see the run folder {root} that rank 0 writes; "
            "put the working folder (the recipe's workdir) on a file system every node shares."
        )
    if blind:
        raise PeerFailedError(f"{int(blind)} rank(s) do not see the run folder {root}")


def error_file_message(message: str) -> None:
    """Leave ``message`` where torchrun reads a failed worker's reason (TORCHELASTIC_ERROR_FILE), in place of a
    traceback."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    import time

    data = {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as f:
            json.dump(data, f)
    except OSError:
        pass


def quiet_other_ranks() -> None:
    """Ranks other than 0 print nothing (rank 0 speaks for the run); their own failure is still said, on the
    original stderr."""
    if _world.active and not _world.main:
        devnull = open(os.devnull, "w")  # noqa: SIM115 (held for the process's life)
        sys.stdout = devnull
        sys.stderr = devnull
