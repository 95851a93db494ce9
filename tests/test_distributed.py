"""Data-parallel training on torchrun (gloo, 2 processes on the CPU) computes what one process computes.

- ``tests/distributed/cases.py`` trains and distills in both training loops in a world of one and a world of two;
  the weights and every epoch's figures must agree within the tolerances below (float summation order apart, the
  same computation: the global batch, its augmentation, dropout and modality dropout draws, BatchNorm statistics
  over it).
- ``mmedge run --nproc-per-node 2`` of a tiny recipe: one bundle that validates, ``world_size`` 2 in the results,
  and no write by rank 1 under the run folder or the bundle (audited, ``tests/distributed/hooks``).
- A rank that fails stops the run with one sentence naming it; with ``--max-restarts`` the restarted ranks resume
  training from the last epoch checkpoint and end with the uninterrupted run's weights, bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmedge import distributed
from mmedge.distributed import DistributedError, World

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "tests" / "distributed" / "hooks"
MMEDGE = Path(sys.executable).with_name("mmedge")

# Relative difference of all weights together (L2 norm of the difference over the norm), world of two against one.
# Measured on an Intel Xeon (AVX-512, 2 cores), dropout and modality dropout on: whole-train 7.5e-5, whole-distill
# 2.2e-5, cached-train 1.7e-7, cached-distill 2.3e-9. One process at 1 thread against 2 threads (summation order
# alone) differs by 5.0e-4, 3.4e-4, 1.1e-7 and 3.2e-9; with each rank drawing its own dropout masks, the world of
# two differed by 3.5e-2, 1.8e-2, 2.0e-3 and 3.7e-4.
WEIGHT_TOLERANCE = {"whole-train": 3e-3, "whole-distill": 3e-3, "cached-train": 1e-5, "cached-distill": 1e-5}
LOSS_TOLERANCE = 1e-5  # relative, each epoch's training loss

RECIPE = """\
version: 1
name: tiny
workdir: {work}
output: {out}
model:
  family: cnn-lstm
  options: {{conv_channels: [8, 16], embed_dim: 16, hidden_size: 24, fusion_dim: 32}}
data: {{test_images: 200, val_images: 100}}
budgets: {{max_accuracy_drop: 100}}
steps:
  - {{type: train, epochs: 3, batch_size: 256}}
{rest}"""
REST = """\
  - {type: prune.structured, ratio: 0.25, finetune_epochs: 1}
  - {type: distill, epochs: 1, batch_size: 256}
  - {type: export, batch_sizes: [1, 3], text_lengths: [5, 12]}
  - {type: validate}
  - {type: bundle, samples: 4}
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MMEDGE_LAUNCHED")}
    env["PYTHONPATH"] = os.pathsep.join([str(HOOKS), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _run(args: list, timeout: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=timeout
    )


def _recipe(tmp: Path, name: str, rest: str = REST) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(RECIPE.format(work=tmp / name / "work", out=tmp / name / "bundle", rest=rest))
    return path


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next(path.glob("*.safetensors")))


@pytest.fixture
def world_of(monkeypatch):
    """Pretend to be ``rank`` of ``size`` (no process group: for the arithmetic of shares and checks)."""

    def enter(rank: int, size: int) -> None:
        monkeypatch.setattr(distributed, "_world", World(rank=rank, size=size, backend="gloo"))

    return enter


def test_the_ranks_shares_cover_each_step_once_and_weight_it_as_one_batch(world_of):
    for size in (1, 2, 3, 4):
        for total in (size, 7, 64, 65):
            parts = []
            for rank in range(size):
                world_of(rank, size)
                parts.append(distributed.shard(total))
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(total))
            assert all(p.stop > p.start for p in parts)
            # DDP averages the ranks' gradients: the weights make that the gradient of the whole batch's mean
            assert sum(p.scale for p in parts) == pytest.approx(size)
    world_of(1, 4)
    assert distributed.shard(3) is None  # an epoch's last step with fewer rows than ranks is left out


def test_the_ranks_dropout_masks_put_together_are_the_masks_of_one_process(world_of):
    import torch
    from torch import nn

    total, seed, width = 11, 5, 6
    x = torch.rand(total + 1, width) + 0.5  # the step's rows, then a row every rank holds (the blank frame)
    torch.manual_seed(seed)
    alone = nn.Dropout(0.3).train()(x)  # one process, seeded as a run's training is
    for size in (2, 3):
        got, blank = [], []
        for rank in range(size):
            world_of(rank, size)
            layer = nn.Dropout(0.3).train()
            with distributed.global_batch(layer, seed):
                part = distributed.shard(total)
                with distributed.step_rows(part, held_by_all=1):
                    out = layer(torch.cat([part.take(x), x[total:]]))
                    # not laid out by the step's rows: this rank's own draw from torch's global generator
                    assert layer(torch.ones(2, width)).shape == (2, width)
                    keep = distributed.keep_mask((part.stop - part.start + 1, 1, 1, 1), 0.5, torch.float32)
                assert type(layer) is not nn.Dropout
            assert type(layer) is nn.Dropout
            assert keep.shape == (part.stop - part.start + 1, 1, 1, 1)
            got.append(out[:-1])
            blank.append(out[-1])
        assert torch.equal(torch.cat(got), alone[:total])
        assert all(torch.equal(b, alone[total]) for b in blank)


def test_a_global_batch_that_does_not_divide_among_the_ranks_is_refused(world_of):
    world_of(0, 3)
    with pytest.raises(DistributedError, match="batch_size 64 .16 images per step. does not divide among 3 ranks"):
        distributed.per_rank(64, images_per_step=16)
    assert distributed.per_rank(48, images_per_step=12) == 16
    with pytest.raises(DistributedError, match="batch_size 100 .100 questions per step. does not divide"):
        distributed.per_rank(100)


def test_nccl_is_refused_as_mmedge_trains_on_the_cpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="--dist-backend gloo"):
        distributed.join("nccl")
    assert not distributed.world().active


@pytest.mark.slow
def test_two_ranks_train_and_distill_what_one_process_does(tmp_path):
    import torch
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    single = _run([sys.executable, "-m", "tests.distributed.cases", one])
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    double = _run([*launch, "-m", "tests.distributed.cases", two])
    assert double.returncode == 0, double.stderr[-3000:]
    for case, tolerance in WEIGHT_TOLERANCE.items():
        a, b = load_file(one / f"{case}.safetensors"), load_file(two / f"{case}.safetensors")
        assert a.keys() == b.keys()
        keys = [k for k in a if a[k].is_floating_point()]
        diff = sum((a[k].double() - b[k].double()).pow(2).sum() for k in keys).sqrt()
        norm = sum(a[k].double().pow(2).sum() for k in keys).sqrt()
        assert float(diff / norm) < tolerance, (case, float(diff / norm))
        assert float(diff) > 0 or case.startswith("cached")  # two processes, really: not the same bytes by accident
        h1, h2 = (json.loads((d / f"{case}.json").read_text()) for d in (one, two))
        assert (h1["world"]["world_size"], h2["world"]["world_size"]) == (1, 2)
        assert len(h1["history"]) == len(h2["history"])
        for e1, e2 in zip(h1["history"], h2["history"], strict=True):
            assert abs(e1["loss"] - e2["loss"]) <= LOSS_TOLERANCE * abs(e1["loss"]), (case, e1, e2)
            assert e1["train_accuracy"] == pytest.approx(e2["train_accuracy"], abs=2e-3), (case, e1, e2)
    assert not torch.equal(load_file(one / "whole-train.safetensors")["head.weight"], torch.zeros(1))


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    """``mmedge run --nproc-per-node 2`` of the tiny recipe, rank 1's writes audited."""
    tmp = tmp_path_factory.mktemp("ddp")
    recipe = _recipe(tmp, "run")
    writes = tmp / "rank-writes.log"
    watch = os.pathsep.join([str(tmp / "run" / "work"), str(tmp / "run" / "bundle")])
    started = time.perf_counter()
    done = _run(
        [MMEDGE, "run", recipe, "--nproc-per-node", "2"], MMEDGE_TEST_WRITES=str(writes), MMEDGE_TEST_WATCH=watch
    )
    return tmp, done, writes, time.perf_counter() - started


@pytest.mark.slow
def test_a_recipe_run_on_two_ranks_ships_one_validated_bundle_written_by_rank_0_alone(distributed_run):
    tmp, done, writes, _ = distributed_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bundle:" in done.stdout and done.stdout.count("1. train") == 1  # one rank speaks
    results = json.loads((tmp / "run" / "work" / "tiny" / "results.json").read_text())
    sizes = {s["type"]: s["metrics"].get("world_size") for s in results["steps"]}
    assert sizes["train"] == sizes["prune.structured"] == sizes["distill"] == 2
    assert not writes.exists(), writes.read_text()
    checked = _run([MMEDGE, "validate", tmp / "run" / "bundle"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not list((tmp / "run" / "work" / "tiny").glob(".resume*"))


def test_the_write_audit_sees_a_rank_that_writes(tmp_path):
    """The audit hook the test above relies on records a write by a rank other than 0."""
    watched = tmp_path / "watched"
    watched.mkdir()
    log = tmp_path / "log"
    code = f"open({str(watched / 'x')!r}, 'w').write('1')"
    done = _run([sys.executable, "-c", code], RANK="1", MMEDGE_TEST_WRITES=str(log), MMEDGE_TEST_WATCH=str(watched))
    assert done.returncode == 0, done.stderr
    assert "open" in log.read_text()


@pytest.mark.slow
def test_a_failing_rank_stops_every_rank_with_one_sentence(tmp_path):
    recipe = _recipe(tmp_path, "fail", rest="")
    started = time.perf_counter()
    done = _run([MMEDGE, "run", recipe, "--nproc-per-node", "2"], timeout=120, MMEDGE_TEST_FAULT="1:1")
    assert done.returncode != 0
    assert time.perf_counter() - started < 90  # no rank waits out a timeout
    said = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(said) == 1, done.stderr[-3000:]
    assert "rank 1" in said[0] and "injected fault at the end of epoch 2" in said[0], said
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_an_elastic_restart_resumes_from_the_last_epoch_and_ends_as_the_uninterrupted_run(tmp_path, distributed_run):
    reference = distributed_run[0] / "run" / "work" / "tiny"
    recipe = _recipe(tmp_path, "restart", rest="")  # the train step alone: its key is the reference run's
    done = _run([MMEDGE, "run", recipe, "--nproc-per-node", "2", "--max-restarts", "1"], MMEDGE_TEST_FAULT="1:1:once")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming after epoch 1 of 3" in done.stderr
    import torch

    work = tmp_path / "restart" / "work" / "tiny"
    mine = _weights(next(work.glob("01-train-*")) / "checkpoint")
    theirs = _weights(next(reference.glob("01-train-*")) / "checkpoint")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
