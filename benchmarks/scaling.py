"""Training and distillation throughput at 1 and N processes (torchrun, DistributedDataParallel over gloo).

For each recipe (the default digits-vqa, and easy-vqa with its real pretrained towers) a worker trains the recipe's
model with the recipe's `train` settings, then distills a fresh model of the same family and options from it with
the recipe's `distill` settings, a few epochs each. It runs once as a single process and once under torchrun with
N processes, interleaved, `--repeats` times. Reported:

- samples/s: training questions per second over the epochs after the first (the first also builds the tower
  caches, timed apart as the first epoch's extra seconds);
- the communication share of an epoch on rank 0, from torch.profiler over one more epoch (its caches, where the
  loop builds them, left out): the time gloo spends in its collectives (DDP's gradient all-reduce, which overlaps
  backward, the BatchNorm statistics, which do not, and rank 0's word after validation) over the epoch's wall time.

    python benchmarks/scaling.py [--processes 2] [--repeats 3] [--recipes digits-vqa easy-vqa]
                                 -> benchmarks/results/scaling.{json,md}
    python benchmarks/scaling.py --whole-recipe [--processes 2]
                                 -> benchmarks/results/scaling-recipe.{json,md}

``--whole-recipe`` runs the default recipe from scratch with ``mmedge run`` in one process and with
``--nproc-per-node N``, each into its own folder, and compares what they ship: test accuracy, ``mmedge validate`` on
each bundle, the world size each training step records, and each step's wall time. The ranks other than 0 of the
N-process run carry Python audit hooks (``tests/distributed/hooks``) that log every write they make under the run's
folders; the results record how many there were.

mmedge trains on the CPU; a GPU machine runs the same CPU training (NCCL, which joins CUDA tensors, has nothing to
join), so this benchmark has no CUDA mode.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

EPOCHS = {"digits-vqa": 3, "easy-vqa": 3}
# The collectives of an epoch as gloo runs them (the caches' all_gather is timed with the caches, not the epoch).
COMM_EVENTS = ("gloo:all_reduce", "gloo:broadcast")


def _configs(recipe_name: str):
    from mmedge.recipe import load_recipe

    recipe = load_recipe(recipe_name)
    train = next(s for s in recipe.steps if s.type == "train")
    distill = next(s for s in recipe.steps if s.type == "distill")
    epochs = EPOCHS[recipe_name]
    return (
        recipe,
        train.model_copy(update={"epochs": epochs, "patience": 99, "max_minutes": None}),
        distill.model_copy(update={"epochs": epochs, "patience": 99, "max_minutes": None}),
    )


def _questions(data, cfg) -> int:
    from mmedge.data.digits_vqa import FAMILIES

    fresh = data.train.family_names == FAMILIES  # digits-vqa: new questions per image every epoch
    return len(data.train.images) * cfg.questions_per_image if fresh else len(data.train)


def _measure(train, model, data, vocab, cfg, loss_fn=None, extra=()) -> tuple[object, dict]:
    """Train ``cfg.epochs`` epochs, then profile one more on a copy of the model; the figures of rank 0."""
    import copy

    from torch.profiler import ProfilerActivity, profile

    from mmedge.distributed import world
    from mmedge.train_cache import CACHE_EVENT

    start = time.perf_counter()
    trained, history = train(model, data, vocab, cfg, None, loss_fn, extra)
    seconds = time.perf_counter() - start
    ends = [r["seconds"] for r in history]
    epochs = [b - a for a, b in itertools.pairwise(ends)]
    steady = statistics.median(epochs)
    # a trained teacher is kept as it is for the distillation; a student trains on (its hook holds its tensors)
    probe = copy.deepcopy(trained) if loss_fn is None else trained
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        began = time.perf_counter()
        train(probe, data, vocab, cfg.model_copy(update={"epochs": 1}), None, loss_fn, extra)
        wall = time.perf_counter() - began
    events = prof.key_averages()
    comm = sum(e.cpu_time_total for e in events if e.key.startswith(COMM_EVENTS)) / 1e6
    caches = sum(e.cpu_time_total for e in events if e.key == CACHE_EVENT) / 1e6
    wall -= caches  # the epoch alone: a cached loop builds its caches again in every call
    questions = _questions(data, cfg)
    return trained, {
        "world_size": world().size,
        "seconds": seconds,
        "epoch_seconds": epochs,
        "first_epoch_extra_seconds": ends[0] - steady,
        "questions_per_epoch": questions,
        "samples_per_s": questions / steady,
        "profiled_epoch_seconds": wall,
        "communication_seconds": comm,
        "communication_share": comm / wall,
    }


def worker(recipe_name: str, out: Path) -> None:
    """One run (one process, or each rank of a torchrun world): train, then distill; rank 0 writes ``out``."""
    import torch

    from mmedge import distributed
    from mmedge.compress.distill import distill_loss, teacher_caches
    from mmedge.models import build_model
    from mmedge.train import build_for_data, train_model

    distributed.join()
    try:
        recipe, train_cfg, distill_cfg = _configs(recipe_name)
        family = recipe.model.family_name
        data, vocab, model = build_for_data(family, recipe.model.options, recipe.data, train_cfg.seed)
        options = model.config.model_dump()
        teacher, train_figures = _measure(train_model, model, data, vocab, train_cfg)

        torch.manual_seed(distill_cfg.seed)
        student = build_model(family, options, len(vocab), len(data.classes))
        if hasattr(student, "prepare"):
            student.prepare(data.classes, vocab)
        cached = getattr(student, "late_fusion", False) and not distill_cfg.augment
        caches = teacher_caches(teacher, data, vocab) if cached else None
        loss_fn, extra = distill_loss(student, teacher, distill_cfg, None, caches)
        _, distill_figures = _measure(train_model, student, data, vocab, distill_cfg, loss_fn, extra)
        if distributed.world().main:
            out.write_text(json.dumps({"recipe": recipe_name, "train": train_figures, "distill": distill_figures}))
    finally:
        distributed.leave()


def _launch(recipe_name: str, processes: int, out: Path) -> dict:
    here = str(Path(__file__).resolve())
    if processes == 1:
        command = [sys.executable, here, "--worker", recipe_name, str(out)]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={processes}",
            here,
            "--worker",
            recipe_name,
            str(out),
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the {processes}-process run of {recipe_name} failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def summarize(runs: list[dict], processes: int) -> dict:
    """Medians over the repeats per recipe, phase and world size; the N-process / 1-process ratio of samples/s
    with the spread of the per-repeat ratios."""
    out: dict = {}
    for recipe in sorted({r["recipe"] for r in runs}):
        for phase in ("train", "distill"):
            row: dict = {}
            for n in (1, processes):
                picked = [r[phase] for r in runs if r["recipe"] == recipe and r["processes"] == n]
                row[n] = {
                    "samples_per_s": statistics.median(p["samples_per_s"] for p in picked),
                    "samples_per_s_all": [p["samples_per_s"] for p in picked],
                    "communication_share": statistics.median(p["communication_share"] for p in picked),
                    "first_epoch_extra_seconds": statistics.median(p["first_epoch_extra_seconds"] for p in picked),
                    "questions_per_epoch": picked[0]["questions_per_epoch"],
                }
            ones = [r[phase]["samples_per_s"] for r in runs if r["recipe"] == recipe and r["processes"] == 1]
            many = [r[phase]["samples_per_s"] for r in runs if r["recipe"] == recipe and r["processes"] == processes]
            ratios = [b / a for a, b in zip(ones, many, strict=True)]
            row["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
            out[f"{recipe}/{phase}"] = row
    return out


def markdown(data: dict) -> str:
    from _common import machine_sentence
    from mmedge.report.markdown import table

    n = data["processes"]
    rows = []
    for key, row in data["summary"].items():
        recipe, phase = key.split("/")
        one, many, ratio = row[1], row[n], row["ratio"]
        rows.append(
            [
                recipe,
                phase,
                f"{one['questions_per_epoch']:,}",
                f"{one['samples_per_s']:,.0f}",
                f"{many['samples_per_s']:,.0f}",
                f"{ratio['median']:.2f} ({ratio['min']:.2f}–{ratio['max']:.2f})",
                f"{many['communication_share']:.0%}",
                f"{one['first_epoch_extra_seconds']:.1f} / {many['first_epoch_extra_seconds']:.1f}",
            ]
        )
    cores = data["provenance"]["cpu"]["logical_cores"]
    return "\n".join(
        [
            "# Training throughput at 1 and several processes (torchrun, DDP over gloo)",
            "",
            machine_sentence(data["provenance"]),
            "",
            f"{data['repeats']} repeats, the 1-process and {n}-process runs interleaved; medians, and the spread of "
            f"the per-repeat ratios. Each process gets {cores} // processes torch threads.",
            "",
            table(
                [
                    "recipe",
                    "phase",
                    "questions / epoch",
                    "1 process, samples/s",
                    f"{n} processes, samples/s",
                    f"ratio {n} / 1 (spread)",
                    f"communication share ({n} processes)",
                    f"first epoch's extra s (1 / {n})",
                ],
                rows,
            ),
            "",
            "What this can and cannot show:",
            "",
            f"- This machine has {cores} logical cores. One process already spreads each step over them with torch's "
            f"threads; {n} processes split the same cores, so the ratio measures what data parallelism costs here "
            "(the collectives, the BatchNorm statistics summed each forward and backward, rank 0's validation while "
            "the other ranks wait), not what it gains. It gains where each rank brings its own cores: more cores "
            "than one process's threads use well, or more machines.",
            "- The communication share is gloo's time in its collectives over the epoch's wall time, on rank 0 (from "
            "torch.profiler). DDP's gradient all-reduce overlaps backward, so the share bounds the cost from above; "
            "the BatchNorm statistics (digits-vqa's image encoder, in training) wait for every rank at every layer.",
            "- The first epoch's extra seconds are mostly the tower caches of easy-vqa (built by the ranks together, "
            "each computing a share of the pictures) and the loading of data.",
            "- The distilled student is a fresh model of the recipe's family and options, not the pruned one the "
            "recipe distills into.",
            "",
        ]
    )


def whole_recipe(processes: int) -> dict:
    """The default recipe end to end at 1 and ``processes`` processes (fresh folders), with ``mmedge validate`` on
    each bundle, and the writes of the ranks other than 0 under the run's folders logged."""
    mmedge = str(Path(sys.executable).with_name("mmedge"))
    hooks = Path(__file__).resolve().parents[1] / "tests" / "distributed" / "hooks"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as logs:
        for n in (1, processes):
            name = f"digits-vqa-{n}p"
            command = [mmedge, "run", "--name", name, "--out", str(Path(tmp) / name)]
            command += ["--nproc-per-node", str(n)] if n > 1 else []
            writes = Path(logs) / f"{name}.log"
            path = os.pathsep.join(p for p in (str(hooks), os.environ.get("PYTHONPATH", "")) if p)
            env = {**os.environ, "PYTHONPATH": path, "MMEDGE_TEST_WRITES": str(writes), "MMEDGE_TEST_WATCH": tmp}
            started = time.perf_counter()
            done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                sys.exit(f"the {n}-process run failed:\n{done.stderr[-4000:]}")
            checked = subprocess.run([mmedge, "validate", str(Path(tmp) / name)], capture_output=True, text=True)
            results = json.loads((Path(tmp) / ".mmedge" / "runs" / name / "results.json").read_text())
            steps = {s["type"]: s for s in results["steps"]}
            runs[n] = {
                "seconds": seconds,
                "validate_exit_code": checked.returncode,
                "validate_output": checked.stdout[-2000:],
                "test_accuracy": steps["validate"]["metrics"]["test"]["accuracy"],
                "teacher_test_accuracy": steps["train"]["metrics"]["test"]["accuracy"],
                "world_sizes": {
                    t: s["metrics"]["world_size"] for t, s in steps.items() if "world_size" in s["metrics"]
                },
                "step_seconds": {t: s["seconds"] for t, s in steps.items()},
                "chosen": steps["quantize.auto"]["metrics"].get("chosen"),
                "other_rank_writes": writes.read_text().splitlines() if writes.exists() else [],
            }
            print(f"{n} process(es): test {runs[n]['test_accuracy']:.2%}, {seconds:.0f} s", file=sys.stderr)
    return runs


def recipe_markdown(data: dict) -> str:
    from _common import machine_sentence
    from mmedge.report.markdown import table

    runs, n = data["runs"], data["processes"]
    steps = list(runs["1"]["step_seconds"])
    gap = (runs[str(n)]["test_accuracy"] - runs["1"]["test_accuracy"]) * 100
    columns = ["processes", "teacher test", "shipped test", "chosen", "mmedge validate", "world size"]
    columns += ["writes by ranks other than 0", "wall s"]
    return "\n".join(
        [
            f"# The default recipe at 1 and {n} processes",
            "",
            machine_sentence(data["provenance"]),
            "",
            f"`mmedge run` from scratch, and `mmedge run --nproc-per-node {n}`, each into its own folder.",
            "",
            table(
                columns,
                [
                    [
                        k,
                        f"{r['teacher_test_accuracy']:.2%}",
                        f"{r['test_accuracy']:.2%}",
                        str(r["chosen"]),
                        "passed" if r["validate_exit_code"] == 0 else f"exit {r['validate_exit_code']}",
                        ", ".join(f"{t} {w}" for t, w in r["world_sizes"].items()),
                        str(len(r["other_rank_writes"])) if k != "1" else "",
                        f"{r['seconds']:.0f}",
                    ]
                    for k, r in runs.items()
                ],
            ),
            "",
            f"Shipped test accuracy, {n} processes minus 1: {gap:+.2f} points.",
            "",
            "Writes by ranks other than 0: what Python audit hooks in those ranks logged under the run's folders "
            "(the work folder, with the step folders, the epoch states and the results, and the bundle): opens for "
            "writing, mkdir, rename, remove.",
            *(f"- `{line}`" for line in runs[str(n)]["other_rank_writes"][:10]),
            "",
            table(
                ["step", *(f"{k} process(es), s" for k in runs)],
                [[s, *(f"{runs[k]['step_seconds'][s]:.1f}" for k in runs)] for s in steps],
            ),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipes", nargs="+", default=["digits-vqa", "easy-vqa"])
    parser.add_argument("--whole-recipe", action="store_true", help="the default recipe end to end at 1 and N")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return
    from _common import write_results
    from mmedge.provenance import collect

    provenance = collect()
    if args.whole_recipe:
        runs = {str(k): v for k, v in whole_recipe(args.processes).items()}
        data = {"provenance": provenance, "processes": args.processes, "runs": runs}
        write_results("scaling-recipe", data, recipe_markdown(data))
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for recipe in args.recipes:
                for n in (1, args.processes) if repeat % 2 == 0 else (args.processes, 1):
                    figures = _launch(recipe, n, Path(tmp) / f"{recipe}-{n}-{repeat}.json")
                    runs.append({**figures, "processes": n, "repeat": repeat})
                    print(
                        f"{recipe} x{n} #{repeat}: train {figures['train']['samples_per_s']:.0f}/s, "
                        f"distill {figures['distill']['samples_per_s']:.0f}/s",
                        file=sys.stderr,
                        flush=True,
                    )
    data = {
        "provenance": provenance,
        "processes": args.processes,
        "repeats": args.repeats,
        "epochs": {r: EPOCHS[r] for r in args.recipes},
        "summary": summarize(runs, args.processes),
        "runs": runs,
    }
    write_results("scaling", data, markdown(data))


if __name__ == "__main__":
    main()
