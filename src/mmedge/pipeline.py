"""Run a Recipe: steps in order, each into its own folder, cached by a hash of its inputs and config.

    <workdir>/<recipe name>/<NN>-<type>-<key>/   one folder per step; result.json marks it finished
    <workdir>/<recipe name>/results.json          every step's metrics and timing, merged
    <workdir>/<recipe name>/.lock                 held while a run uses the folder (a second one waits)
    <workdir>/<recipe name>/.resume/<step folder>/ a long step's per-epoch state, until the step finishes

A step's key hashes the mmedge, onnxruntime, onnx and torch versions, the model and data sections, the previous
step's key and output (a content hash) and the step's own config, so editing one step re-runs it and everything
after it, and nothing before it. A step runs in a temporary folder that is renamed only when it succeeds: an
interrupted run leaves no step that looks finished, and a killed training or distillation continues from its last
finished epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from mmedge import __version__
from mmedge.artifact import Artifact
from mmedge.distributed import Coordinator, check_shared_folder, world
from mmedge.errors import RunLockedError
from mmedge.errors import note as _note
from mmedge.recipe import Recipe
from mmedge.runtime.inputs import chain_inputs
from mmedge.runtime.session import apply_process_defaults, replacing
from mmedge.steps.registry import StepConfig, StepContext, StepRecord, StepResult, get_step

RESUME = ".resume"  # per-epoch states of unfinished steps, one folder per step folder name
RESULTS_SCHEMA_VERSION = 2  # 2: decisions on validation (selection_split, gate), provenance


def fingerprint(path: Path) -> str:
    """sha256 over a file, or over every file of a folder (names and contents)."""
    from mmedge.bundle.manifest import sha256

    if path.is_file():
        return sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(sha256(f).encode())
    return h.hexdigest()


def source_fingerprints(recipe: Recipe) -> dict[str, str]:
    """Content hashes of what the recipe reads from disk besides its steps' own paths: a Hugging Face model folder
    and a user dataset (a manifest file, or a whole image/IDX folder). Changed in place, they re-run the chain.
    Computed once per run: a model folder can be large."""
    found = {}
    source = recipe.model.source or ""
    if source.startswith("hf:") and Path(source[3:]).exists():
        found["model"] = fingerprint(Path(source[3:]))
    if recipe.data.path is not None and Path(recipe.data.path).exists():
        found["data"] = fingerprint(Path(recipe.data.path))
    return found


def _key(recipe: Recipe, previous: str, step: StepConfig, sources: dict[str, str] | None = None) -> str:
    from mmedge.provenance import package_versions

    versions = package_versions()
    payload = {
        "mmedge": __version__,
        # another onnxruntime, onnx or torch exports, quantizes and times differently: never reuse across them
        "runtime": {name: versions[name] for name in ("onnxruntime", "onnxruntime-gpu", "onnx", "torch")},
        "model": recipe.model.model_dump(mode="json"),
        "data": recipe.data.model_dump(mode="json"),
        "targets": list(recipe.targets),
        "budgets": recipe.budgets.model_dump(mode="json"),
        "previous": previous,
        "step": step.model_dump(mode="json"),
    }
    if step.type == "bundle":
        payload["output"] = str(recipe.output_dir.resolve())
    source = getattr(step, "path", None)  # load / load.onnx: a changed file at the same path re-runs the step
    if isinstance(source, Path) and source.exists():
        payload["source"] = fingerprint(source)
    given = getattr(step, "inputs", None)  # load.onnx: the user's inputs, judged on
    if isinstance(given, Path) and given.exists():
        payload["given_inputs"] = fingerprint(given)
    if sources:
        payload["inputs"] = sources
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _relative(result: StepResult, tmp: Path) -> dict:
    """result.json with artifact paths inside the step folder stored relative to it."""
    data = result.to_json()
    path = Path(data["artifact"]["path"])
    if path.is_relative_to(tmp):
        data["artifact"]["path"] = str(path.relative_to(tmp))
        data["artifact"]["inside"] = True
    return data


def _load_cached(folder: Path, step: StepConfig) -> StepResult | None:
    """The finished step in ``folder``, or None when it must run (again): never finished, or its record unreadable
    (truncated, edited, written by another mmedge), or its output gone or changed since; the last two are said."""
    marker = folder / "result.json"
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
        if data["artifact"].pop("inside", False):
            data["artifact"]["path"] = str(folder / data["artifact"]["path"])
        result = StepResult.from_json(data, get_step(step.type).metrics_cls)
    except ValidationError:  # written by a different mmedge: its figures do not fit this one's schema
        _note(f"the cached {step.type} step in {folder} does not fit this mmedge's results; running it again.")
        return None
    except (ValueError, KeyError, TypeError, AttributeError):  # truncated or edited: not the JSON a step writes
        _note(f"the cached {step.type} step's record {marker} is unreadable (truncated or edited); running it again.")
        return None
    path = result.artifact.path
    # Gone, or changed since the step wrote it (by hand, or by another recipe writing the same output folder).
    if not path.exists():
        _note(f"the output of the cached {step.type} step, {path}, is gone; running the step again.")
        return None
    if data.get("fingerprint") != fingerprint(path):
        _note(f"the output of the cached {step.type} step, {path}, changed since the step wrote it; running it again.")
        return None
    return result


@contextlib.contextmanager
def run_lock(root: Path, wait: bool = True):
    """Hold the run folder ``root`` for this process. A second run of the same recipe in the same working folder
    waits for the first, saying whose run it waits for, or with ``wait=False`` refuses at once; runs of other
    recipes have other folders and proceed in parallel. The lock is the operating system's (``filelock``): a run
    that is killed releases it with its process."""
    from filelock import FileLock, Timeout

    lock, owner = FileLock(root / ".lock"), root / ".lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _lock_owner(owner)
        if not wait:
            raise RunLockedError(
                f"{root} is in use by another mmedge run ({holder}); wait for it to finish, or run again without "
                "--no-wait to wait for it."
            ) from None
        _note(f"waiting for the other mmedge run using {root} ({holder}) to finish.")
        lock.acquire()
    try:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        owner.write_text(json.dumps({"pid": os.getpid(), "started": started}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _lock_owner(path: Path) -> str:
    """Who holds the lock, as its owner file says ("pid N, started T"), or "pid unknown"."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def run_recipe(
    recipe: Recipe,
    force: bool = False,
    progress: str = "bar",
    on_step: Callable[[StepRecord], None] | None = None,
    allow_over_budget: bool = False,
    wait: bool = True,
) -> list[StepRecord]:
    """Run ``recipe``'s steps in order, each from its cache when finished before; ``wait``: when another run holds
    the recipe's run folder, wait for it (else refuse, ``RunLockedError``)."""
    root = recipe.workdir / recipe.name
    w = world()
    if not w.main:  # another rank: trains with rank 0, and otherwise follows its word
        return _follow(recipe, root, allow_over_budget)
    root.mkdir(parents=True, exist_ok=True)
    with run_lock(root, wait):
        coordinator = Coordinator() if w.active else None
        if coordinator:
            check_shared_folder(root)
        return _run_steps(recipe, root, force, progress, on_step, allow_over_budget, coordinator)


def _follow(recipe: Recipe, root: Path, allow_over_budget: bool) -> list[StepRecord]:
    """A rank other than 0: run each data-parallel step with rank 0, and take every step's record from it. Nothing
    is written here; a step run here that tried to write would find its folder missing."""
    coordinator = Coordinator()
    check_shared_folder(root)
    records: list[StepRecord] = []
    artifact: Artifact | None = None
    unused = Path(tempfile.gettempdir()) / f"mmedge-rank-{world().rank}-writes-nothing"
    while "end" not in (message := coordinator.receive()):
        cfg = recipe.steps[message["step"] - 1]
        if message["together"]:
            ctx = StepContext(recipe, artifact, unused, records, "off", allow_over_budget, Path(message["resume"]))
            get_step(cfg.type).run(cfg, ctx)
        done = coordinator.receive()["record"]
        result = StepResult.from_json(done, get_step(cfg.type).metrics_cls)
        records.append(
            StepRecord(done["index"], cfg, done["key"], Path(done["folder"]), result, done["seconds"], done["cached"])
        )
        artifact = result.artifact
    return records


def _run_steps(recipe, root, force, progress, on_step, allow_over_budget, coordinator=None) -> list[StepRecord]:
    """Run the steps (on rank 0 of a distributed run, telling the other ranks, ``coordinator``, each step: whether
    they train it together, and its record)."""
    apply_process_defaults()  # before any step lets a library open the process's first session
    for stale in root.glob(".[0-9][0-9]-*"):  # a step's hidden working folder, left by a run that was killed
        if stale.is_dir():  # the lock is held: no other run is using it
            shutil.rmtree(stale, ignore_errors=True)
    if force:  # every step runs again from its first epoch (before any rank looks for an epoch state)
        shutil.rmtree(root / RESUME, ignore_errors=True)
    records: list[StepRecord] = []
    artifact: Artifact | None = None
    previous = ""
    sources = source_fingerprints(recipe)
    for i, cfg in enumerate(recipe.steps, 1):
        key = _key(recipe, previous, cfg, sources)
        folder = root / f"{i:02d}-{cfg.type}-{key}"
        cached = None if force else _load_cached(folder, cfg)
        started = time.perf_counter()
        resume = root / RESUME / folder.name
        together = cached is None and get_step(cfg.type).decl.parallel
        if coordinator:
            coordinator.send({"step": i, "together": together, "resume": str(resume)})
        if cached is None:
            shutil.rmtree(folder, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
            tmp.chmod(0o755)
            try:
                ctx = StepContext(recipe, artifact, tmp, records, progress, allow_over_budget, resume)
                with chain_inputs(*_chain_inputs(records)), _said_to(coordinator, not together):
                    result = get_step(cfg.type).run(cfg, ctx)
                seconds = time.perf_counter() - started
                (tmp / "result.json").write_text(
                    json.dumps(
                        {
                            **_relative(result, tmp),
                            "seconds": seconds,
                            "fingerprint": fingerprint(result.artifact.path),
                        },
                        indent=1,
                        default=str,
                    )
                )
                tmp.rename(folder)
                shutil.rmtree(resume, ignore_errors=True)  # finished: its epochs are not needed again
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            result = _load_cached(folder, cfg) or result
        else:
            result = cached
            seconds = json.loads((folder / "result.json").read_text()).get("seconds", 0.0)
        record = StepRecord(i, cfg, key, folder, result, seconds, cached is not None)
        records.append(record)
        if coordinator:
            coordinator.send({"record": json.loads(json.dumps(record.to_json(), default=str))})
        if on_step:
            on_step(record)
        artifact = result.artifact
        # What follows depends on this step's output and figures, not only its config: a step that re-ran (its
        # folder was removed, or it is not deterministic, as timings are) invalidates everything after it.
        measured = hashlib.sha256(
            json.dumps(result.to_json()["metrics"], sort_keys=True, default=str).encode()
        ).hexdigest()
        previous = f"{key}:{fingerprint(result.artifact.path)}:{measured}"
    shutil.rmtree(root / RESUME, ignore_errors=True)  # every step finished: epoch states of older keys too
    with _said_to(coordinator, True):
        write_results(recipe, records, root / "results.json")
        from mmedge.report.render import write_report

        write_report(results_document(recipe, records), root, write_json=False)
    if coordinator:
        coordinator.send({"end": True})
    return records


@contextlib.contextmanager
def _said_to(coordinator: Coordinator | None, waiting: bool):
    """Rank 0's failure told to the other ranks while they wait for its word (``waiting``), so that they stop with
    it instead of waiting out their timeout; while they train with it, the launcher stops them."""
    try:
        yield
    except BaseException as exc:
        if coordinator and waiting:
            with contextlib.suppress(Exception):
                coordinator.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise


def _chain_inputs(records: list[StepRecord]) -> tuple[Path | None, str]:
    """(the .npz, what it is) of the inputs a chain from a foreign ONNX model is judged and timed on, or (None, "")."""
    first = records[0] if records else None
    inputs = getattr(first.result.metrics, "chain_inputs", None) if first is not None else None
    if inputs is None:
        return None, ""
    return first.folder / inputs.file, f"{inputs.source}, {inputs.samples} samples"


def results_document(recipe: Recipe, records: list[StepRecord]) -> dict:
    from mmedge.provenance import collect
    from mmedge.runtime.bench import machine_info

    return {
        "schema": "mmedge.results",
        "schema_version": RESULTS_SCHEMA_VERSION,
        "mmedge_version": __version__,
        "provenance": collect(),
        "recipe": json.loads(recipe.dump("json")),
        "machine": machine_info(with_provenance=False),
        "steps": [r.to_json() for r in records],
    }


def write_results(recipe: Recipe, records: list[StepRecord], path: Path) -> None:
    with replacing(path) as tmp:  # readers see the old results or the new, never half of them
        tmp.write_text(json.dumps(results_document(recipe, records), indent=1, default=str))


def summary_lines(records: list[StepRecord], recipe: Recipe) -> list[str]:
    """What ``mmedge run`` says at the end: the shipped model's test accuracy (with the modality ablation), that it
    is over the accuracy budget when ``allow_over_budget`` kept it, and the bundle folder."""
    lines = []
    val = next((r.result.metrics for r in reversed(records) if r.config.type == "validate"), None)
    if val is not None and val.test is not None:
        ablation = ", ".join(
            f"{label} {score.accuracy:.2%}"
            for score, label in ((val.image_blanked, "image blanked"), (val.text_emptied, "text emptied"))
            if score is not None
        )
        lines.append(f"test accuracy {val.test.accuracy:.2%}" + (f" ({ablation})" if ablation else ""))
        if val.within_budget is False:
            lines.append(
                f"over the accuracy budget: {val.gate.accuracy_drop_points:.2f} validation points below the "
                "reference, kept because of --allow-over-budget"
            )
    fidelity = next(
        (m.fidelity for r in reversed(records) if (m := r.result.metrics) and getattr(m, "fidelity", None)), None
    )
    if fidelity is not None:
        agreement = (
            f", argmax agreement {fidelity.argmax_agreement:.2%}" if fidelity.argmax_agreement is not None else ""
        )
        lines.append(
            f"fidelity to the source model on {fidelity.samples} {fidelity.inputs} inputs: cosine >= "
            f"{fidelity.min_cosine:.5f} per output, max abs diff {fidelity.max_abs_diff:.3g}{agreement}"
            + (
                " (synthetic inputs: pass --inputs FILE.npz to judge on real ones)"
                if fidelity.inputs == "synthetic"
                else ""
            )
        )
    if any(r.config.type == "bundle" for r in records):
        lines.append(f"bundle: {recipe.output_dir}")
    return lines
