"""Reliability battery: `mmedge run` killed at random moments, two fresh runs compared bit for bit, damaged state,
concurrent runs, full disks, fuzzed inputs and memory as the data grows. For each fault class: cases tried, cases
survived, data lost and the slowest refusal. Writes benchmarks/results/reliability.{json,md}.

    python benchmarks/reliability.py                         # the default recipe: 24 kills and every section
    python benchmarks/reliability.py --recipe R.yaml --kills 3 --sections kills --out-name NAME

A kill is SIGKILL (or, for a few, SIGINT, as Ctrl-C sends) to the run's process group, at a random moment inside a
chosen step: each step of the recipe gets at least one, the long ones more. After each kill every visible artifact
is checked (each finished step folder's record and output fingerprint, results.json, the bundle's checksums, the
epoch checkpoints), then the run is started again in the same folder: it must reuse every finished step, and its
bundle must equal an uninterrupted run's, byte for byte in every model file and in every manifest field except the
timings (and the cache keys in step folder names, which hash the steps' measured timings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

BIN = Path(sys.executable).parent
STEP_LINE = re.compile(r"^(\d+)\. (\S+) — (cached|[\d.]+ s) — ", re.M)
# manifest fields that are timings, or derived from them: they differ between any two runs
TIMING = re.compile(
    r"(^\.created$|_ms\b|_ms\[|latency|\.calls\b|calls_per_round|ratio_p\d|throughput|peak_rss|equally_fast|"
    r"choice\.rule$|\.files\.(plots/|report\.md))"
)
KEY = re.compile(r"(\d\d-[a-z.]+)-[0-9a-f]{16}")  # a step folder's cache key
SECTIONS = ("kills", "determinism", "damage", "concurrency", "memory", "disk", "fuzz")


# -- running mmedge -----------------------------------------------------------------------------------------------


def launch(recipe: str, cwd: Path, log: Path, *extra: str) -> subprocess.Popen:
    """`mmedge run RECIPE` in ``cwd``, stdout and stderr into ``log``, in its own process group (so that a kill
    reaches the export worker too, as a terminal's would)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(BIN / "mmedge"), "run", recipe, *extra],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            preexec_fn=_interruptible,
        )


def _interruptible() -> None:
    """SIGINT as a terminal delivers it: a shell starts background jobs with SIGINT ignored, which their children
    inherit, and Python leaves an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def steps_done(text: str) -> list[tuple[int, str, bool]]:
    """(index, type, cached) of every step the run reported finished."""
    return [(int(m[1]), m[2], m[3] == "cached") for m in STEP_LINE.finditer(text)]


def run_to_end(recipe: str, cwd: Path, log: Path) -> dict:
    started = time.monotonic()
    proc = launch(recipe, cwd, log)
    rc = proc.wait()
    text = log.read_text(errors="replace")
    if rc != 0:
        raise RuntimeError(f"`mmedge run {recipe}` in {cwd} failed (exit {rc}):\n{text[-3000:]}")
    return {"rc": rc, "seconds": time.monotonic() - started, "text": text}


def run_root(cwd: Path, name: str) -> Path:
    return cwd / ".mmedge" / "runs" / name


def finished_indices(cwd: Path, name: str) -> set[int]:
    return {int(f.name[:2]) for f in run_root(cwd, name).glob("[0-9][0-9]-*") if (f / "result.json").is_file()}


# -- what a reader may see -----------------------------------------------------------------------------------------


def audit(cwd: Path, name: str) -> list[str]:
    """Every visible artifact is whole: each finished step folder's record parses and its output has the recorded
    fingerprint; results.json parses; the bundle's files match its manifest; each epoch checkpoint loads."""
    from safetensors import safe_open

    from mmedge.bundle.manifest import load_bundle
    from mmedge.errors import MmedgeError
    from mmedge.pipeline import fingerprint

    problems, root = [], run_root(cwd, name)
    for folder in sorted(root.glob("[0-9][0-9]-*")):
        try:
            data = json.loads((folder / "result.json").read_text())
            path = Path(data["artifact"]["path"])
            path = folder / path if data["artifact"].get("inside") else (path if path.is_absolute() else cwd / path)
            if fingerprint(path) != data["fingerprint"]:
                problems.append(f"{folder.name}: its output differs from its record")
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{folder.name}: {type(exc).__name__} {exc}")
    if (root / "results.json").exists():
        try:
            json.loads((root / "results.json").read_text())
        except ValueError as exc:
            problems.append(f"results.json: {exc}")
    bundle = cwd / "bundles" / name
    if bundle.exists():
        try:
            load_bundle(bundle, verify=True)
        except MmedgeError as exc:
            problems.append(f"bundle: {exc}")
    for state in root.glob(".resume/*/epoch.safetensors"):
        try:
            with safe_open(state, framework="pt") as f:
                json.loads(f.metadata()["mmedge.epoch"])
        except Exception as exc:  # any failure to read is the finding
            problems.append(f"{state}: {type(exc).__name__}")
    return problems


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json_paths(a, b, path: str = ""):
    """The paths at which two JSON values differ, step-folder cache keys in strings aside."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            yield from _json_paths(a.get(k), b.get(k), f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from _json_paths(x, y, f"{path}[{i}]")
    elif isinstance(a, str) and isinstance(b, str):
        if KEY.sub(r"\1-KEY", a) != KEY.sub(r"\1-KEY", b):
            yield path
    elif a != b:
        yield path


def bundle_differences(a: Path, b: Path) -> list[str]:
    """What differs between two bundles besides timings: model and data files by sha256 (report.md and the plots
    show timings), and manifest.json field by field. An .ort file whose bytes differ only in the order onnxruntime
    serialized it (``ort_reordered``) is not a difference."""
    files = lambda root: {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    reordered = set(ort_reordered(a, b))
    out = []
    for f in sorted(files(a) | files(b)):
        if f in ("manifest.json", "mobile.json", "report.md") or f.startswith("plots/") or f in reordered:
            continue
        if not ((a / f).is_file() and (b / f).is_file()) or _sha(a / f) != _sha(b / f):
            out.append(f)
    # the sizes and checksums of those .ort files, wherever the manifest and mobile.json record them
    serialized = re.compile("|".join(rf"\.{re.escape(f)}\.(bytes|sha256)$" for f in reordered) or "$^")
    for f in ("manifest.json", "mobile.json"):
        if (a / f).is_file() != (b / f).is_file():
            out.append(f)
        elif (a / f).is_file():
            ja, jb = (json.loads((x / f).read_text()) for x in (a, b))
            out += [f"{f}{p}" for p in _json_paths(ja, jb) if not TIMING.search(p) and not serialized.search(p)]
    return out


def ort_reordered(a: Path, b: Path) -> list[str]:
    """The .ort files of two bundles whose bytes differ but which hold the same model: onnxruntime writes the ORT
    format in an order that follows its hash tables over heap addresses, so one model converted in two processes
    gives two byte sequences, at times of different lengths (the same with address randomization off and identical
    paths). Bit-identical outputs on the bundle's sample inputs, one row at a time, count as the same model."""
    out = []
    for f in sorted(p.relative_to(a).as_posix() for p in a.glob("*.ort")):
        if (b / f).is_file() and _sha(a / f) != _sha(b / f) and _same_outputs(a / f, b / f, a / "samples/inputs.npz"):
            out.append(f)
    return out


def _same_outputs(x: Path, y: Path, samples: Path) -> bool:
    import onnxruntime as ort

    if not samples.is_file():
        return False
    sx, sy = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (x, y))
    with np.load(samples) as arrays:
        inputs = {i.name: (arrays[i.name], i.shape) for i in sx.get_inputs()}
    rows = len(next(iter(inputs.values()))[0])
    for r in range(rows):
        feeds = {name: _fit(value[r : r + 1], shape) for name, (value, shape) in inputs.items()}
        if not all(np.array_equal(p, q) for p, q in zip(sx.run(None, feeds), sy.run(None, feeds), strict=True)):
            return False
    return True


def _fit(value: np.ndarray, shape) -> np.ndarray:
    """``value`` cut or zero-padded to a fixed-shape model's dims (its text length)."""
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and axis < value.ndim and value.shape[axis] != dim:
            if value.shape[axis] > dim:
                value = np.take(value, range(dim), axis=axis)
            else:
                pad = [(0, 0)] * value.ndim
                pad[axis] = (0, dim - value.shape[axis])
                value = np.pad(value, pad)
    return value


# -- kills -------------------------------------------------------------------------------------------------------


def plan_kills(durations: list[float], kills: int, sigints: int, chains: int, rng) -> list[list[dict]]:
    """``kills`` moments: one in every step, the rest spread over the steps by their duration; ``sigints`` of
    them are SIGINT. Dealt into ``chains`` runs from scratch, each in step order."""
    n = len(durations)
    steps = list(range(1, n + 1))
    if kills > n:
        weights = np.asarray(durations) / sum(durations)
        steps += list(rng.choice(np.arange(1, n + 1), size=kills - n, p=weights))
    else:
        steps = sorted(rng.choice(steps, size=kills, replace=False))
    targets = [{"step": int(s), "fraction": float(rng.uniform(0.05, 0.95)), "signal": "SIGKILL"} for s in steps]
    for i in rng.choice(len(targets), size=min(sigints, len(targets)), replace=False):
        targets[int(i)]["signal"] = "SIGINT"
    targets.sort(key=lambda t: (t["step"], t["fraction"]))
    dealt = [targets[i::chains] for i in range(chains)]
    return [sorted(c, key=lambda t: (t["step"], t["fraction"])) for c in dealt if c]


def kill_once(recipe: str, name: str, cwd: Path, log: Path, target: dict, durations: list[float], startup: float):
    """Start the run, wait until the target step starts, then its share of the step's reference duration, and send
    the signal to the process group. Returns the attempt's record."""
    before = finished_indices(cwd, name)
    proc, t0 = launch(recipe, cwd, log), time.monotonic()
    step = target["step"]
    started = None
    while proc.poll() is None and started is None:
        if step == 1:
            started = t0 + startup
        elif any(i >= step - 1 for i, _, _ in steps_done(log.read_text(errors="replace"))):
            started = time.monotonic()
        else:
            time.sleep(0.02)
    if started is not None:
        deadline = started + target["fraction"] * durations[step - 1]
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    sent, at, done_at_kill = False, None, None
    if proc.poll() is None:
        done_at_kill = max((i for i, _, _ in steps_done(log.read_text(errors="replace"))), default=0)
        os.killpg(proc.pid, getattr(signal, target["signal"]))
        sent, at = True, time.monotonic() - t0
    rc = proc.wait()
    for _ in range(100):  # the group's other processes (the export worker) go with it
        try:
            os.killpg(proc.pid, 0)
            time.sleep(0.05)
        except ProcessLookupError:
            break
    text = log.read_text(errors="replace")
    done = steps_done(text)
    cached = sorted(i for i, _, c in done if c)
    record = {
        **target,
        "sent": sent,
        "exit_code": rc,
        "at_seconds": None if at is None else round(at, 2),
        "exit_seconds": round(time.monotonic() - t0, 2),
        "step_running": (max((i for i, _, _ in done), default=0) + 1) if sent else None,
        "steps_done_at_kill": done_at_kill,
        "finished_before": sorted(before),
        "reused": cached,
        "reused_every_finished_step": set(before) <= set(cached) or not sent,
        "resumed_epoch": bool(re.search(r"resuming after epoch", text)),
        "problems": audit(cwd, name),
    }
    if target["signal"] == "SIGINT" and sent and done_at_kill < len(durations):
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        record["sigint_one_line"] = (
            rc == 130 and "Traceback" not in text and bool(lines) and lines[-1].startswith("interrupted;")
        )
    return record


def kills_section(recipe: str, name: str, tmp: Path, reference: dict, chains: list[list[dict]]) -> dict:
    """Each chain of kill targets (``plan_kills``) from scratch in its own folder, then a run to the end there."""
    durations, startup = reference["durations"], reference["startup"]
    attempts, finals = [], []
    for c, targets in enumerate(chains):
        cwd = tmp / f"chain-{c}"
        cwd.mkdir()
        for k, target in enumerate(targets):
            if target["step"] in finished_indices(cwd, name):
                continue  # the step finished in an earlier attempt of this chain
            record = kill_once(recipe, name, cwd, tmp / f"chain-{c}-{k}.log", target, durations, startup)
            record["chain"] = c
            attempts.append(record)
            print(
                f"chain {c} kill {k + 1}/{len(targets)}: {target['signal']} at {record['at_seconds']} s in step "
                f"{record['step_running']} -> exit {record['exit_code']}, problems {len(record['problems'])}",
                flush=True,
            )
        before = finished_indices(cwd, name)
        final = run_to_end(recipe, cwd, tmp / f"chain-{c}-final.log")
        cached = {i for i, _, c_ in steps_done(final["text"]) if c_}
        finals.append(
            {
                "chain": c,
                "seconds": round(final["seconds"], 1),
                "reused_every_finished_step": before <= cached,
                "differences": bundle_differences(reference["bundle"], cwd / "bundles" / name),
            }
        )
        shutil.rmtree(cwd / ".mmedge" / "runs" / name / ".resume", ignore_errors=True)
    return summarize_kills(attempts, finals, len(durations))


def summarize_kills(attempts: list[dict], finals: list[dict], steps: int) -> dict:
    """The kill section's figures from its raw records. A signal that reached a run which had already finished
    every step (it arrived while the process was exiting) is not a kill inside a step: it is listed, not counted."""
    for a in attempts:
        done = a.get("steps_done_at_kill", (a["step_running"] or 1) - 1)
        a["landed"] = bool(a["sent"]) and done < steps
    sent = [a for a in attempts if a["landed"]]
    return {
        "attempts": attempts,
        "finals": finals,
        "signals_after_the_run_finished": sum(a["sent"] and not a["landed"] for a in attempts),
        "kills": len(sent),
        "sigkills": sum(a["signal"] == "SIGKILL" for a in sent),
        "sigints": sum(a["signal"] == "SIGINT" for a in sent),
        "steps_hit": sorted({a["step_running"] for a in sent}),
        "partial_artifacts_seen": sum(len(a["problems"]) for a in attempts),
        "reruns_reused_every_finished_step": all(a["reused_every_finished_step"] for a in attempts)
        and all(f["reused_every_finished_step"] for f in finals),
        "bundles_identical": all(not f["differences"] for f in finals),
        "sigint_one_line_exit_130": all(a.get("sigint_one_line", True) for a in sent),
        "resumed_from_an_epoch": sum(a["resumed_epoch"] for a in attempts),
    }


# -- determinism -------------------------------------------------------------------------------------------------


def step_outputs(cwd: Path, name: str) -> dict[str, str]:
    """sha256 of each step's model file: model.safetensors of a checkpoint, the ONNX file, the bundle's model."""
    out = {}
    for step in json.loads((run_root(cwd, name) / "results.json").read_text())["steps"]:
        folder = Path(step["folder"])
        folder = folder if folder.is_absolute() else cwd / folder
        path = Path(step["artifact"]["path"])
        path = path if path.is_absolute() else cwd / path
        model = path / "model.safetensors" if path.is_dir() and step["type"] != "bundle" else path
        model = path / "model.onnx" if step["type"] == "bundle" else model
        if model.is_file():
            out[f"{step['index']}. {step['type']}"] = _sha(model)
    return out


def determinism_section(recipe: str, name: str, tmp: Path, reference: dict) -> dict:
    twin = tmp / "twin"
    twin.mkdir()
    run_to_end(recipe, twin, tmp / "twin.log")
    a, b = reference["outputs"], step_outputs(twin, name)
    return {
        "steps": {k: a[k] == b.get(k) for k in a},
        "ort_reordered": ort_reordered(reference["bundle"], twin / "bundles" / name),
        "model_onnx_identical": _sha(reference["bundle"] / "model.onnx")
        == _sha(twin / "bundles" / name / "model.onnx"),
        "bundle_differences": bundle_differences(reference["bundle"], twin / "bundles" / name),
    }


# -- damaged state -----------------------------------------------------------------------------------------------


def damage_section(recipe: str, name: str, tmp: Path, reference: dict) -> dict:
    """Damage a copy of the finished run and run again (or read it): each case must be named and healed, or
    refused in one sentence, and the healed bundle must equal the reference's."""
    cases = []

    def copy() -> Path:
        cwd = Path(tempfile.mkdtemp(dir=tmp, prefix="damage-"))
        shutil.copytree(reference["cwd"] / ".mmedge", cwd / ".mmedge", symlinks=True)
        shutil.copytree(reference["bundle"], cwd / "bundles" / name)
        return cwd

    def healed(label: str, damage) -> None:
        cwd = copy()
        root = run_root(cwd, name)
        damage(root)
        started = time.monotonic()
        log = tmp / f"damage-{len(cases)}.log"
        rc = launch(recipe, cwd, log).wait()
        text = log.read_text(errors="replace")
        said = re.search(r"running (it|the step) again", text) is not None
        differences = bundle_differences(reference["bundle"], cwd / "bundles" / name) if rc == 0 else []
        ok = rc == 0 and said and "Traceback" not in text and not differences
        cases.append(
            {
                "case": label,
                "kind": "healed",
                "survived": ok,
                "seconds": round(time.monotonic() - started, 2),
                "exit_code": rc,
                "said": said,
                "differences": differences,
            }
        )
        shutil.rmtree(cwd, ignore_errors=True)

    def last(root: Path, kind: str) -> Path:
        return sorted(root.glob(f"[0-9][0-9]-{kind}-*"))[-1]

    healed("truncated result.json of the quantize step", lambda r: _truncate(last(r, "quantize.*") / "result.json"))
    healed("edited result.json of the validate step", lambda r: _edit(last(r, "validate") / "result.json"))
    healed("changed output of the quantize step", lambda r: _append(next(last(r, "quantize.*").glob("*.onnx"))))
    healed("removed output of the export step", lambda r: _remove_onnx(last(r, "export")))

    def refused(label: str, argv: list[str], damage) -> None:
        cwd = copy()
        target = damage(cwd)
        started = time.monotonic()
        done = subprocess.run(
            [str(BIN / "mmedge"), *[str(a).replace("TARGET", str(target)) for a in argv]],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        ok = done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr
        cases.append(
            {"case": label, "kind": "refused", "survived": ok, "seconds": round(seconds, 2), "message": lines[-1:]}
        )
        shutil.rmtree(cwd, ignore_errors=True)

    bundle = Path("bundles") / name
    refused(
        "bundle model whose sha256 no longer matches (mmedge validate)",
        ["validate", "TARGET"],
        lambda cwd: (_append(cwd / bundle / "model.onnx"), cwd / bundle)[1],
    )
    refused(
        "truncated checkpoint (mmedge export)",
        ["export", "TARGET", "--out", "x.onnx"],
        lambda cwd: _truncate_checkpoint(run_root(cwd, name)),
    )
    refused(
        "results file of an unknown schema version (mmedge report)",
        ["report", "TARGET"],
        lambda cwd: _future_results(run_root(cwd, name)),
    )
    return {"cases": cases}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _edit(path: Path) -> None:
    path.write_text(path.read_text().replace('"artifact"', '"artefact"', 1))


def _append(path: Path) -> None:
    with path.open("ab") as f:
        f.write(b"\0")


def _remove_onnx(folder: Path) -> None:
    for f in folder.glob("*.onnx"):
        f.unlink()


def _truncate_checkpoint(root: Path) -> Path:
    folder = sorted(root.glob("[0-9][0-9]-*/checkpoint"))[-1]  # the last PyTorch checkpoint of the chain
    _truncate(folder / "model.safetensors")
    return folder


def _future_results(root: Path) -> Path:
    data = json.loads((root / "results.json").read_text())
    data["schema_version"] = 99
    (root / "results.json").write_text(json.dumps(data))
    return root / "results.json"


# -- concurrency -------------------------------------------------------------------------------------------------


def concurrency_section(recipe: str, name: str, tmp: Path, reference: dict) -> dict:
    """A second run of the same recipe in the same folder while the first holds it: with --no-wait it refuses at
    once naming the first's pid; without, it waits (said, with the pid) and then finishes from the cache."""
    cwd = tmp / "concurrent"
    shutil.copytree(reference["cwd"] / ".mmedge", cwd / ".mmedge", symlinks=True)
    first = launch(recipe, cwd, tmp / "first.log", "--force")
    deadline = time.monotonic() + 60
    owner = run_root(cwd, name) / ".lock.owner"
    while not owner.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    refused = subprocess.run([str(BIN / "mmedge"), "run", recipe, "--no-wait"], cwd=cwd, capture_output=True, text=True)
    refusal_seconds = time.monotonic() - started
    waiter = launch(recipe, cwd, tmp / "second.log")
    time.sleep(3)
    waiting_said = f"pid {first.pid}" in (tmp / "second.log").read_text(errors="replace")
    os.killpg(first.pid, signal.SIGKILL)  # the holder dies: the lock goes with it
    first.wait()
    second_rc = waiter.wait()
    second = (tmp / "second.log").read_text(errors="replace")
    cases = [
        {
            "case": "second run with --no-wait while the first holds the folder",
            "survived": refused.returncode == 2 and f"pid {first.pid}" in refused.stderr,
            "seconds": round(refusal_seconds, 2),
            "message": refused.stderr.strip().splitlines()[-1:],
        },
        {
            "case": "second run waits for the first (killed), then finishes",
            "survived": waiting_said and second_rc == 0 and not audit(cwd, name),
            "seconds": None,
            "tail": second.strip().splitlines()[-1:],
        },
    ]
    return {"cases": cases}


# -- memory ------------------------------------------------------------------------------------------------------


def memory_probe(kind: str, rows: int, model: Path) -> dict:
    """In a child process: the peak RSS of calibrating on, or evaluating, ``rows`` training questions, against the
    RSS once the data and model are loaded."""
    from mmedge.compress.quantize.calibration import CalibrationConfig, calibrate, calibration_feeds
    from mmedge.compress.quantize.plan import STATIC_OP_TYPES
    from mmedge.data import load_dataset
    from mmedge.runtime.evaluate import ModelInputs, model_data_config, predict
    from mmedge.runtime.session import open_session

    sess = open_session(model)
    data_cfg = model_data_config(sess)
    split = load_dataset(data_cfg).train
    if kind == "calibration":
        feeds = calibration_feeds(model, CalibrationConfig(samples=rows), data_cfg)
        inputs_mb = sum(v.nbytes for v in feeds.values()) / 2**20
        base = _reset_peak()
        with tempfile.TemporaryDirectory() as tmp:
            calibrate(model, feeds, CalibrationConfig(samples=rows), STATIC_OP_TYPES, Path(tmp) / "ranges.json")
    else:
        part = split.subset(np.arange(min(rows, len(split))))
        inputs_mb = None
        base = _reset_peak()
        predict(sess, part, ModelInputs.of(sess))
    peak = _status_mb("VmHWM")
    return {"kind": kind, "rows": rows, "inputs_mb": inputs_mb, "rss_loaded_mb": base, "peak_rss_mb": peak}


def _reset_peak() -> float:
    """The RSS now, with the peak (VmHWM) reset to it (Linux: 5 into clear_refs), so that the peak read afterwards is
    the peak of what follows, not of loading the data set and libraries."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_section(reference: dict, tmp: Path) -> dict:
    model = reference["export_onnx"]
    rows = {"calibration": [256, 1024, 4096], "evaluation": [937, 3748, 15000]}
    out = []
    for kind, sizes in rows.items():
        for n in sizes:
            result = tmp / f"mem-{kind}-{n}.json"
            subprocess.run(
                [sys.executable, __file__, "--probe", kind, str(n), str(model), "--probe-out", str(result)], check=True
            )
            out.append(json.loads(result.read_text()))
    return {"model": str(model), "probes": out}


# -- full disk ---------------------------------------------------------------------------------------------------


def _file_size_limit(limit: int):
    """A child's files may not grow past ``limit`` bytes; passing it is an error (EFBIG), as a full disk's ENOSPC,
    not the signal that would kill the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def disk_section(recipe: str, name: str, tmp: Path, reference: dict) -> dict:
    """The run's export, or its bundle step, runs again on a disk that fills up (a file-size limit) at a few
    sizes: one sentence and exit 2, the previous bundle and results.json byte for byte as they were, nothing partial
    visible; then, with room again, the run finishes with the uninterrupted run's bundle."""
    cases = []
    for step in ("export", "bundle"):
        for limit in (16_000, 64_000, 256_000):
            cwd = Path(tempfile.mkdtemp(dir=tmp, prefix=f"disk-{step}-"))
            shutil.copytree(reference["cwd"] / ".mmedge", cwd / ".mmedge", symlinks=True)
            shutil.copytree(reference["bundle"], cwd / "bundles" / name)
            root = run_root(cwd, name)
            for folder in root.glob(f"[0-9][0-9]-{step}-*"):
                shutil.rmtree(folder)
            bundle, results = _files(cwd / "bundles" / name), _sha(root / "results.json")
            started = time.monotonic()
            done = subprocess.run(
                [str(BIN / "mmedge"), "run", recipe],
                cwd=cwd,
                capture_output=True,
                text=True,
                env={**os.environ, "COLUMNS": "400"},
                preexec_fn=_file_size_limit(limit),
            )
            seconds = time.monotonic() - started
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith(("error:", "internal error:"))]
            kept = _files(cwd / "bundles" / name) == bundle and _sha(root / "results.json") == results
            partial = audit(cwd, name) + [f.name for f in root.glob(f"[0-9][0-9]-{step}-*")]
            refused = done.returncode == 2 and len(errors) == 1 and errors[0] == lines[-1] and kept and not partial
            # under a limit above every file the step writes, the run simply finishes: then its bundle must be whole
            finished = done.returncode == 0 and not bundle_differences(reference["bundle"], cwd / "bundles" / name)
            case = {
                "case": f"full disk ({limit // 1000} kB file-size limit) while the {step} step writes",
                "outcome": "refused" if done.returncode else "finished",
                "survived": refused or finished,
                "seconds": round(seconds, 2),
                "message": errors[-1:],
                "previous_kept": kept,
                "partial": partial,
            }
            if limit == 16_000:  # room again: the run heals
                healed = subprocess.run([str(BIN / "mmedge"), "run", recipe], cwd=cwd, capture_output=True, text=True)
                case["healed"] = healed.returncode == 0 and not bundle_differences(
                    reference["bundle"], cwd / "bundles" / name
                )
                case["survived"] = case["survived"] and case["healed"]
            cases.append(case)
            print(f"{case['case']}: survived {case['survived']} ({seconds:.1f} s)", flush=True)
            shutil.rmtree(cwd, ignore_errors=True)
    return {"cases": cases}


# -- fuzzing: the suite's hypothesis module, run long and read back -------------------------------------------------


def pytest_section(test_file: str, env: dict, tmp: Path, label: str) -> dict:
    report = tmp / f"{label}.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
        env={**os.environ, **env, "MMEDGE_FUZZ_REPORT": str(report)},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    tail = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    out = {"exit_code": done.returncode, "seconds": round(time.monotonic() - started, 1), "summary": tail}
    if report.is_file():
        out["report"] = json.loads(report.read_text())
    return out


# -- the run -----------------------------------------------------------------------------------------------------


def reference_run(recipe: str, name: str, tmp: Path) -> dict:
    cwd = tmp / "reference"
    cwd.mkdir()
    started = time.monotonic()
    done = run_to_end(recipe, cwd, tmp / "reference.log")
    results = json.loads((run_root(cwd, name) / "results.json").read_text())
    durations = [s["seconds"] for s in results["steps"]]
    export = next((Path(s["artifact"]["path"]) for s in results["steps"] if s["type"] == "export"), None)
    return {
        "cwd": cwd,
        "seconds": done["seconds"],
        "durations": durations,
        "startup": max(0.5, time.monotonic() - started - sum(durations) - 1.0),
        "bundle": cwd / "bundles" / name,
        "outputs": step_outputs(cwd, name),
        "export_onnx": None if export is None else (export if export.is_absolute() else cwd / export),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="digits-vqa", help="recipe file or built-in name (default: the default recipe)")
    p.add_argument("--kills", type=int, default=24, help="kill moments, SIGINTs included")
    p.add_argument("--sigints", type=int, default=4, help="how many of the kills are SIGINT")
    p.add_argument("--chains", type=int, default=3, help="runs from scratch the kills are dealt into")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    p.add_argument("--fuzz-examples", type=int, default=1000, help="hypothesis cases per fuzzed parser")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-name", default="reliability")
    p.add_argument("--results-dir", type=Path, default=_common.RESULTS)
    p.add_argument("--keep", type=Path, help="keep the run folders here")
    p.add_argument(
        "--resummarize", type=Path, metavar="JSON", help="recompute a results file's figures from its raw records"
    )
    p.add_argument("--probe", nargs=3, metavar=("KIND", "ROWS", "MODEL"), help=argparse.SUPPRESS)
    p.add_argument("--probe-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        kind, rows, model = args.probe
        args.probe_out.write_text(json.dumps(memory_probe(kind, int(rows), Path(model))))
        return
    if args.resummarize:
        data = json.loads(args.resummarize.read_text())
        kills = data["sections"].get("kills")
        if kills:
            steps = len(data["reference"]["durations"])
            section_seconds = kills.get("section_seconds")
            data["sections"]["kills"] = {
                **summarize_kills(kills["attempts"], kills["finals"], steps),
                "section_seconds": section_seconds,
            }
        _common.RESULTS = args.resummarize.parent
        _common.write_results(args.resummarize.stem, data, markdown(data))
        return
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    from mmedge.provenance import collect
    from mmedge.recipe import load_recipe

    name = load_recipe(args.recipe).name
    provenance = collect()
    rng = np.random.default_rng(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="mmedge-reliability-", dir=args.keep))
    data: dict = {"provenance": provenance, "recipe": args.recipe, "seed": args.seed, "sections": {}}
    try:
        needs_run = {"kills", "determinism", "damage", "concurrency", "memory", "disk"} & set(sections)
        reference = reference_run(args.recipe, name, tmp) if needs_run else None
        if reference:
            data["reference"] = {k: reference[k] for k in ("seconds", "durations", "startup", "outputs")}
            print(f"reference run: {reference['seconds']:.0f} s", flush=True)
        runners = {
            "kills": lambda: kills_section(
                args.recipe,
                name,
                tmp,
                reference,
                plan_kills(reference["durations"], args.kills, args.sigints, args.chains, rng),
            ),
            "determinism": lambda: determinism_section(args.recipe, name, tmp, reference),
            "damage": lambda: damage_section(args.recipe, name, tmp, reference),
            "concurrency": lambda: concurrency_section(args.recipe, name, tmp, reference),
            "memory": lambda: memory_section(reference, tmp),
            "disk": lambda: disk_section(args.recipe, name, tmp, reference),
            "fuzz": lambda: pytest_section(
                "tests/test_fuzz.py", {"MMEDGE_FUZZ_EXAMPLES": str(args.fuzz_examples)}, tmp, "fuzz"
            ),
        }
        for section in sections:
            started = time.monotonic()
            print(f"section {section} ...", flush=True)
            data["sections"][section] = {**runners[section](), "section_seconds": round(time.monotonic() - started, 1)}
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    _common.RESULTS = args.results_dir
    _common.write_results(args.out_name, data, markdown(data))


def _refused(case: dict) -> bool:
    """A case that ended in a refusal (not healed by a re-run, not finished because the fault never struck)."""
    return case.get("kind") != "healed" and case.get("outcome") != "finished"


def markdown(data: dict) -> str:
    from mmedge.report.markdown import table

    s = data["sections"]
    rows = []
    if "kills" in s:
        k = s["kills"]
        lost = k["partial_artifacts_seen"] + sum(len(f["differences"]) for f in k["finals"])
        rows.append(
            [
                "killed runs (SIGKILL / SIGINT)",
                f"{k['kills']} ({k['sigkills']} / {k['sigints']}) in steps {', '.join(map(str, k['steps_hit']))}",
                sum(not a["problems"] and a.get("sigint_one_line", True) for a in k["attempts"] if a["landed"]),
                lost,
                "–",
            ]
        )
    for section, label in (("damage", "damaged state"), ("concurrency", "concurrent runs"), ("disk", "full disk")):
        if section in s:
            cases = s[section]["cases"]
            times = [c["seconds"] for c in cases if c.get("seconds") is not None and _refused(c)]
            rows.append(
                [label, len(cases), sum(c["survived"] for c in cases), 0, f"{max(times):.2f} s" if times else "–"]
            )
    parsers = s.get("fuzz", {}).get("report", {}).get("parsers", {})
    if parsers:
        tried = sum(v["cases"] for v in parsers.values())
        bad = sum(v["failed"] + v["over_deadline"] for v in parsers.values())
        slowest = max((v.get("slowest_refusal_s") or 0 for v in parsers.values()), default=0)
        rows.append(["fuzzed inputs", tried, tried - bad, 0, f"{slowest:.2f} s"])
    lines = [
        f"# Reliability battery ({data['recipe']})",
        "",
        table(["fault class", "cases tried", "survived", "data lost", "slowest refusal"], rows),
        "",
    ]
    if "kills" in s:
        k = s["kills"]
        lines += [
            f"Kills: every visible artifact was checked after each kill ({k['partial_artifacts_seen']} partial "
            f"artifacts seen); every re-run reused every finished step: {k['reruns_reused_every_finished_step']}; "
            f"{k['resumed_from_an_epoch']} re-runs resumed training or distillation from an epoch checkpoint; "
            f"SIGINT exited 130 with one line every time: {k['sigint_one_line_exit_130']}; each chain's final bundle "
            f"equals the uninterrupted run's (model files byte for byte, manifest except timings): "
            f"{k['bundles_identical']}. Signals that arrived after the run had finished every step (not counted): "
            f"{k.get('signals_after_the_run_finished', 0)}.",
            "",
        ]
    if "determinism" in s:
        d = s["determinism"]
        same = [k for k, v in d["steps"].items() if v]
        differ = [k for k, v in d["steps"].items() if not v]
        lines += [
            "Determinism, two fresh runs on this machine: model.onnx of the bundle "
            + ("byte-identical" if d["model_onnx_identical"] else "**differs**")
            + f"; step outputs identical: {', '.join(same) or 'none'}"
            + (f"; differing: {', '.join(differ)}" if differ else "")
            + f"; other bundle differences: {', '.join(d['bundle_differences']) or 'none'}.",
            "",
        ]
    if parsers:
        lines += [
            f"Fuzzing: `tests/test_fuzz.py` with {s['fuzz']['report'].get('max_examples')} examples per parser "
            f"(exit code {s['fuzz']['exit_code']}); a case over its {s['fuzz']['report'].get('deadline_s')} s "
            "deadline counts as a hang.",
            "",
            table(
                ["parser test", "cases", "accepted", "refused in a sentence", "failed", "hangs", "slowest s"],
                [
                    [
                        k,
                        v["cases"],
                        v["accepted"],
                        v["refused"],
                        v["failed"],
                        v["over_deadline"],
                        f"{v['slowest_s']:.3f}",
                    ]
                    for k, v in parsers.items()
                ],
            ),
            "",
        ]
    if "memory" in s:
        probes = s["memory"]["probes"]
        lines += [
            table(
                ["what", "rows", "inputs MB", "RSS loaded MB", "peak RSS MB", "peak − loaded MB"],
                [
                    [
                        m["kind"],
                        m["rows"],
                        "–" if m["inputs_mb"] is None else f"{m['inputs_mb']:.1f}",
                        f"{m['rss_loaded_mb']:.0f}",
                        f"{m['peak_rss_mb']:.0f}",
                        f"{m['peak_rss_mb'] - m['rss_loaded_mb']:.0f}",
                    ]
                    for m in probes
                ],
            ),
            "",
        ]
    lines += [_common.machine_sentence(data["provenance"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
