"""The same fp32 ONNX model quantized by peer tools, side by side with the model mmedge shipped.

Peers: onnxruntime.quantization (static QDQ per-channel, dynamic), Optimum's ORTQuantizer (dynamic, static; the
AutoQuantizationConfig preset for this CPU), Olive (OnnxStaticQuantization, OnnxDynamicQuantization), NNCF
(nncf.quantize, default and transformer model type) and onnx-neural-compressor (static, dynamic). Each tool runs in
a virtualenv of its own, built from its pinned requirements file in benchmarks/peers/ with the project's
constraints (torch pinned to the offline CPU build), by a small script of its own (benchmarks/peers/quantize_*.py).
Every tool calibrates on the same rows: mmedge's calibration draw for the model (CalibrationConfig defaults: 256
seeded training questions, stratified by answer), saved once as an .npz. A tool that cannot be installed, or fails
on the model, gets its one-line error in the table. mmedge's own quantize.static and quantize.dynamic, alone and after
optimize, run on the same model in the project's environment, and each is timed against onnxruntime's plain recipe of
its scheme.

Back in the project's environment every model is scored with mmedge's ONNX evaluation on the test split (and the
paraphrase split where the data set has one), sized, and timed: CPU execution provider, 1 thread, batch 1 and 32,
all models in the same alternating rounds (mmedge's ``compare_latency``); medians, and ratios to the fp32 teacher
taken round by round.

    python benchmarks/peers.py --teacher TEACHER.onnx --shipped SHIPPED.onnx --data easy-vqa --out-name peers-easy-vqa
        -> benchmarks/results/peers-easy-vqa.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common
from mmedge.report.markdown import pct, table
from mmedge.runtime.bench import MIN_ROUNDS_FOR_A_DIFFERENCE

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PEERS = HERE / "peers"
CONSTRAINTS = REPO / "constraints.txt"  # torch==2.13.0: the CPU build on the machine; unpinned pulls a CUDA build
BATCHES = (1, 32)
# Calls per round and warm-up calls per batch size: a batch-32 call of the easy-vqa model takes 0.1-0.4 s on one
# thread (a batch-1 call ~5-30 ms), so fewer calls per round at batch 32 keep a dozen models within minutes; each
# round still gives every model one median, from which the per-round ratios are taken.
CALLS = {1: 10, 32: 5}
WARMUP = {1: 10, 32: 3}
# A round of a few sub-millisecond calls (the digits-vqa model: ~0.06 ms at batch 1) is decided by whichever call an
# interrupt hits: compare_latency raises the calls per round until the fastest model's share lasts this long.
MIN_ROUND_MS = 20.0
MAX_DROP_POINTS = 1.0  # the best peer row keeps at most this test accuracy drop against the teacher
ERROR_CHARS = 200
# Packages whose versions each tool's results record (besides the ones its requirements file names)
COMMON_PACKAGES = ("onnxruntime", "onnx", "numpy", "torch", "transformers")
DATA = {"easy-vqa": {"name": "easy-vqa", "seed": 0}, "digits-vqa": {"name": "digits-vqa", "source": "mnist", "seed": 0}}


@dataclasses.dataclass(frozen=True)
class Tool:
    label: str  # how the table names the tool
    variants: tuple[str, ...]  # --variant values its script takes

    def requirements(self, key: str) -> Path:
        return PEERS / f"{key}.txt"

    def script(self, key: str) -> Path:
        return PEERS / f"quantize_{key}.py"


TOOLS = {
    "ort": Tool("onnxruntime.quantization", ("static-qdq-per-channel", "dynamic")),
    "optimum": Tool("Optimum ORTQuantizer", ("dynamic", "static")),
    "olive": Tool("Olive", ("static", "dynamic")),
    "nncf": Tool("NNCF", ("static", "static-transformer")),
    "inc": Tool("onnx-neural-compressor", ("static", "dynamic")),
}

_TRACEBACK = "Traceback (most recent call last):"
# the line that ends a traceback: "ValueError: ...", "onnxruntime.capi.onnxruntime_pybind11_state.Fail: ..."
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Fail|Failure)\b")


def clip(text: str, limit: int = ERROR_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line_error(output: str, limit: int = ERROR_CHARS) -> str:
    """The line that says why a tool failed, from its combined stdout/stderr: the exception line of the last
    traceback, else pip's last ``ERROR:`` line, else the last line printed; whitespace collapsed, clipped."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    last_tb = max((i for i, line in enumerate(lines) if line.startswith(_TRACEBACK)), default=None)
    if last_tb is not None:
        for line in lines[last_tb + 1 :]:
            if not line.startswith(" ") and _EXCEPTION.match(line):
                return clip(line, limit)
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return clip(errors[-1], limit)
    return clip(lines[-1], limit) if lines else "failed without printing anything"


def _env() -> dict[str, str]:
    """The environment of a tool's subprocesses: nothing of the project's virtualenv leaks in, one OpenMP thread,
    no Hub or telemetry traffic."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", OLIVE_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    return env


def _run(cmd: list[str], log: Path, timeout: float, cwd: Path | None = None) -> tuple[bool, str]:
    """(succeeded, one-line error) of a command whose output goes to ``log``."""
    with log.open("w") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:.0f} s ({' '.join(Path(c).name for c in cmd[:3])})"
    if proc.returncode == 0:
        return True, ""
    return False, one_line_error(log.read_text(errors="replace"))


def _stamp(key: str) -> str:
    """What a tool's virtualenv was built from: its requirements, the constraints and the interpreter."""
    text = TOOLS[key].requirements(key).read_text() + CONSTRAINTS.read_text() + sys.version
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_venv(key: str, venvs: Path, logs: Path, timeout: float) -> tuple[Path | None, str, float]:
    """(python of the tool's virtualenv or None, error, seconds spent): reused while its requirements, the
    constraints and the interpreter are unchanged, else built afresh."""
    venv = venvs / key
    python, stamp = venv / "bin" / "python", venv / ".peers-stamp"
    if python.is_file() and stamp.is_file() and stamp.read_text() == _stamp(key):
        return python, "", 0.0
    t0 = time.perf_counter()
    ok, err = _run([sys.executable, "-m", "venv", "--clear", str(venv)], logs / f"venv-{key}.log", timeout)
    if ok:
        requirements = TOOLS[key].requirements(key)
        cmd = [str(python), "-m", "pip", "install", "-q", "-r", str(requirements), "-c", str(CONSTRAINTS)]
        ok, err = _run(cmd, logs / f"pip-{key}.log", timeout)
    if not ok:
        return None, f"install failed: {err}", time.perf_counter() - t0
    stamp.write_text(_stamp(key))
    return python, "", time.perf_counter() - t0


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_versions(python: Path, key: str) -> dict[str, str]:
    """The versions pip freeze reports in a tool's virtualenv for the packages its requirements file names and the
    common ONNX/torch stack."""
    named = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", TOOLS[key].requirements(key).read_text(), re.M)
    wanted = {_canonical(n) for n in (*named, *COMMON_PACKAGES)}
    out = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, env=_env(), timeout=300)
    versions = {}
    for line in out.stdout.splitlines():
        name, _, version = line.partition("==")
        if version and _canonical(name) in wanted:
            versions[_canonical(name)] = version
    return versions


def quantize(python: Path, key: str, variant: str, model: Path, npz: Path, work: Path, timeout: float) -> dict:
    """Run one tool variant on the fp32 model; {"path", "settings", "quantize_s"} or {"error"}."""
    folder = work / f"{key}-{variant}"  # a folder per output, so that external data files stay with their model
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "model.onnx"
    cmd = [str(python), str(TOOLS[key].script(key)), "--variant", variant, "--model", str(model)]
    cmd += ["--calibration", str(npz), "--out", str(out)]
    t0 = time.perf_counter()
    log = work / "logs" / f"{key}-{variant}.log"
    ok, err = _run(cmd, log, timeout, cwd=PEERS)
    spent = time.perf_counter() - t0
    if not ok:
        return {"error": err, "quantize_s": spent, "log": str(log)}
    settings_file = Path(f"{out}.json")
    settings = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    return {"path": out, "settings": settings, "quantize_s": spent, "log": str(log)}


# mmedge's own passes on the same fp32 model, each with its defaults, in the project's environment: the rows that
# show whether mmedge's quantizers are at least as fast as the plain peer recipe on the same graph.
MMEDGE_PASSES = ("quantize.static", "quantize.dynamic", "optimize + quantize.static", "optimize + quantize.dynamic")


def mmedge_pass(variant: str, model: Path, data_cfg, work: Path) -> dict:
    """Run one of MMEDGE_PASSES on the fp32 model; {"path", "settings", "quantize_s"} or {"error"}. The static
    pass calibrates on mmedge's calibration draw, the rows every peer tool was given."""
    from mmedge.compress.optimize import OptimizeConfig, optimize_model
    from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model
    from mmedge.compress.quantize.static import StaticQuantConfig, quantize_static_model

    folder = work / f"mmedge-{variant.replace(' + ', '-')}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "model.onnx"
    t0 = time.perf_counter()
    try:
        src = model
        if variant.startswith("optimize"):
            src = folder / "optimized.onnx"
            optimize_model(model, src, OptimizeConfig())
        if variant.endswith("quantize.static"):
            cfg = StaticQuantConfig()
            quantize_static_model(src, out, cfg, data_cfg)
        else:
            cfg = DynamicQuantConfig()
            quantize_dynamic_model(src, out, cfg, data_cfg)
    except Exception as exc:  # a pass failing on the model is a row's error, as a peer's is
        return {"error": clip(f"{type(exc).__name__}: {exc}"), "quantize_s": time.perf_counter() - t0}
    settings = cfg.model_dump(mode="json", exclude={"tolerance"})
    return {"path": out, "settings": settings, "quantize_s": time.perf_counter() - t0}


def model_bytes(path: Path) -> int:
    """Bytes on disk of an ONNX model: its file and the external data files it refers to."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            files.update(e.value for e in tensor.external_data if e.key == "location")
    return path.stat().st_size + sum((path.parent / f).stat().st_size for f in files)


def data_config(teacher: Path, name: str):
    """The data set the teacher was trained on, as its metadata records it (so the splits are the ones it was
    trained and tested on); a model without that metadata gets the named built-in set with seed 0."""
    from mmedge.data import DataConfig
    from mmedge.runtime.session import metadata_json, open_session

    recorded = metadata_json(open_session(teacher, "cpu"), "mmedge.data")
    if recorded is None:
        return DataConfig(**DATA[name])
    if recorded.get("name") != name:
        trained = recorded.get("name")
        sys.exit(f"{teacher} was trained on '{trained}', not '{name}'; pass --data {trained}.")
    return DataConfig(**recorded)


def score_models(paths: dict[str, Path], teacher: Path, splits: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """({name: {split: accuracy}}, {name: one-line error}) with mmedge's ONNX evaluation. A model is fed as its own
    metadata says (tokenizer, image preprocessing) when it has mmedge's: mmedge's shipped model may have pruned its
    vocabulary. One without (a peer tool may drop the metadata, never the inputs) is fed as the teacher is."""
    from mmedge.runtime.evaluate import ModelInputs, predict, score
    from mmedge.runtime.session import metadata_json, open_session

    inputs = ModelInputs.of(open_session(teacher, "cpu"))
    accuracy, errors = {}, {}
    for name, path in paths.items():
        try:
            sess = open_session(path, "cpu")
            own = (
                ModelInputs.of(sess)
                if metadata_json(sess, "mmedge.tokenizer")
                else dataclasses.replace(inputs, names=tuple(i.name for i in sess.get_inputs()))
            )
            accuracy[name] = {s: score(predict(sess, split, own), split).accuracy for s, split in splits.items()}
        except Exception as exc:  # one model failing to load or run is a row's error, not the end of the run
            errors[name] = clip(f"{type(exc).__name__}: {exc}")
        print(f"scored {name}: {accuracy.get(name) or errors[name]}", flush=True)
    return accuracy, errors


# Each of mmedge's passes against the plain onnxruntime recipe of the same scheme, on the same model.
PLAIN_RECIPE = {
    "mmedge quantize.static": "ort static-qdq-per-channel",
    "mmedge quantize.dynamic": "ort dynamic",
    "mmedge optimize + quantize.static": "ort static-qdq-per-channel",
    "mmedge optimize + quantize.dynamic": "ort dynamic",
}


def own_vs_plain(comparisons: dict) -> list[dict]:
    """Per batch size, each mmedge pass's per-round time ratio to the plain onnxruntime recipe of its scheme
    (p10, p50, p90) and the verdict: faster or slower where the p10-p90 interval excludes 1.0, else as fast."""
    out = []
    for own, plain in PLAIN_RECIPE.items():
        for batch, c in comparisons.items():
            if own not in c.round_ms or plain not in c.round_ms:
                continue
            lo, mid, hi = c.ratio_interval(own, plain)
            verdict = "as fast" if c.equally_fast(own, plain) else ("faster" if hi < 1.0 else "slower")
            out.append({"mmedge": own, "plain": plain, "batch": int(batch), "ratio": [lo, mid, hi], "verdict": verdict})
    return out


def mark_best(rows: list[dict], b1) -> str | None:
    """The best peer row: of the peer rows that ran and keep at most MAX_DROP_POINTS of test accuracy drop, the
    fastest at batch 1; among those as fast within the run-to-run spread (``b1.equally_fast``), the smallest file."""
    ok = [r for r in rows if r["peer"] and not r["error"] and r["drop_points"] <= MAX_DROP_POINTS and r.get("p50_ms")]
    if not ok:
        return None
    fastest = min(ok, key=lambda r: r["ratio"]["1"][1])
    tied = [r for r in ok if b1.equally_fast(r["name"], fastest["name"])]
    best = min(tied, key=lambda r: r["size_bytes"])
    best["best"] = True
    return best["name"]


def _fig(x: float) -> str:
    """Three significant digits: 107, 27.9, 9.18, 0.0612 (MB and ms span from a 0.2 MB to a 100 MB model)."""
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}" if x else "0"


def _ratio(r: dict, batch: str) -> str:
    lo, mid, hi = r["ratio"][batch]
    return f"{mid:.2f}× ({lo:.2f}–{hi:.2f})"


def table_rows(rows: list[dict], paraphrase: bool) -> list[list[str]]:
    """One Markdown row per model (columns as HEADER); the best peer row's tool in bold, missing figures as '–'."""
    out = []
    for r in rows:
        timed = bool(r.get("p50_ms"))
        ran = r.get("test_accuracy") is not None
        out.append(
            [
                f"**{r['tool']}**" if r.get("best") else r["tool"],
                r["variant"],
                pct(r.get("test_accuracy")),
                pct(r.get("paraphrase_accuracy")) if paraphrase else "–",
                f"{r['drop_points']:.2f}" if ran else "–",
                _fig(r["size_bytes"] / 1e6) if r.get("size_bytes") else "–",
                f"{r['size_ratio']:.2f}×" if r.get("size_ratio") else "–",
                _fig(r["p50_ms"]["1"]) if timed else "–",
                _ratio(r, "1") if timed else "–",
                _fig(r["p50_ms"]["32"]) if timed else "–",
                _ratio(r, "32") if timed else "–",
                r["error"] or "",
            ]
        )
    return out


HEADER = [
    "tool",
    "variant",
    "test accuracy",
    "paraphrase accuracy",
    "drop vs teacher (pts)",
    "size MB",
    "size ratio",
    "p50 ms b1",
    "ratio b1",
    "p50 ms b32",
    "ratio b32",
    "error",
]


def markdown(data: dict, rows: list[dict], paraphrase: bool) -> str:
    best, calls = data["best_peer"], data["calls_per_round"]
    lines = [
        f"# Peer quantizers — {data['data']['name']}",
        "",
        f"The fp32 teacher `{data['teacher']}` quantized by each peer tool with its own documented settings, beside "
        "the model mmedge shipped and mmedge's own passes with their defaults applied to the same teacher "
        f"({', '.join(MMEDGE_PASSES)}). Every tool calibrated on the same "
        f"{data['calibration']['rows']} rows ({data['calibration']['source']}). Accuracy: mmedge's ONNX evaluation "
        f"on the test split ({data['samples']['test']:,} questions)"
        + (f" and the paraphrase split ({data['samples']['paraphrase']:,})" if paraphrase else "")
        + ". Latency: CPU execution provider, 1 thread, every model's session with the same config ("
        + ", ".join(f"`{k}={v}`" for k, v in data["session_config"].items())
        + ", mmedge's default), all models in the same alternating rounds "
        f"({data['rounds']} rounds; {calls['1']} calls per round at batch 1, {calls['32']} at batch 32); p50 over all "
        "calls, and the ratio to the teacher taken round by round: median (p10–p90).",
        "",
    ]
    if data.get("limit"):
        lines += [
            f"Accuracy is scored on {data['limit']:,} test questions drawn at random (seed 0) and on the same "
            "questions reworded, so that twelve models fit one run; every model is scored on the same rows.",
            "",
        ]
    lines += [
        table(HEADER, table_rows(rows, paraphrase)),
        "",
        (
            f"**Bold**: the best peer row — of the peer rows within {MAX_DROP_POINTS:g} point of the teacher's test "
            "accuracy, the fastest at batch 1, and among those as fast within the run-to-run spread, the smallest."
            if best
            else f"No peer row kept within {MAX_DROP_POINTS:g} point of the teacher's test accuracy."
        )
        + (
            f" With fewer than {MIN_ROUNDS_FOR_A_DIFFERENCE} timing rounds no latency difference counts, so the "
            "smallest of those rows is marked."
            if data["rounds"] < MIN_ROUNDS_FOR_A_DIFFERENCE
            else ""
        ),
        "",
        own_sentence(data["own_vs_plain"]),
        "",
        "Tool versions: "
        + "; ".join(
            f"{t['label']} ({', '.join(f'{k} {v}' for k, v in t['packages'].items()) or 'not installed'})"
            for t in data["tools"].values()
        )
        + ".",
        "",
        _common.machine_sentence(data["provenance"]),
        "",
    ]
    return "\n".join(lines)


def own_sentence(own: list[dict]) -> str:
    """mmedge's passes against the plain onnxruntime recipe on the same model, as the timing rounds measured it."""
    if not own:
        return "mmedge's passes were not timed beside onnxruntime's plain recipe (one of the two failed)."
    parts = [
        f"{o['mmedge'].removeprefix('mmedge ')} / onnxruntime {o['plain'].removeprefix('ort ')} at batch {o['batch']}: "
        f"{o['ratio'][1]:.2f}× ({o['ratio'][0]:.2f}–{o['ratio'][2]:.2f}), {o['verdict']}"
        for o in own
    ]
    return (
        "mmedge's passes against onnxruntime's plain recipe of the same scheme on the same teacher (per-round time "
        "ratio, median (p10–p90); faster or slower only where the interval excludes 1): " + "; ".join(parts) + "."
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", type=Path, help="the fp32 ONNX model every tool quantizes")
    p.add_argument("--shipped", type=Path, help="the model mmedge shipped from the same teacher (a row of its own)")
    p.add_argument(
        "--run",
        type=Path,
        help="a `mmedge run` folder (.mmedge/runs/NAME): --teacher defaults to the fp32 ONNX of the run's first "
        "model (the export step's reference.onnx when the chain pruned or distilled it, else the export step's "
        "model), --shipped to its quantize step's model, as its results.json records them",
    )
    p.add_argument("--data", choices=sorted(DATA), required=True, help="the data set the teacher was trained on")
    p.add_argument("--out-name", required=True, help="results file name: benchmarks/results/<out-name>.{json,md}")
    p.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS), help="peer tools to run")
    p.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per batch size")
    p.add_argument(
        "--limit", type=int, help="score N test questions drawn at random (seed 0), and their paraphrases, not all"
    )
    p.add_argument("--venvs", type=Path, default=PEERS / ".venvs", help="where each tool's virtualenv is kept")
    p.add_argument("--work", type=Path, help="work folder (quantized models, logs; kept); default: a fresh temp folder")
    p.add_argument("--results-dir", type=Path, default=_common.RESULTS, help="where the results files go")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one install or one quantization")
    args = p.parse_args(argv)
    if args.run is not None:
        run = _common.run_models(args.run)
        args.teacher = args.teacher or run.get("export")
        args.shipped = args.shipped or run.get("quantize")
    if args.teacher is None:
        p.error("pass --teacher (the fp32 .onnx) or --run (a `mmedge run` folder with an export step)")
    return args


def main(argv=None) -> None:
    from mmedge.compress.quantize.calibration import CalibrationConfig, calibration_feeds
    from mmedge.data import load_dataset
    from mmedge.provenance import collect
    from mmedge.runtime.bench import compare_latency, machine_info
    from mmedge.runtime.evaluate import ModelInputs, feeds_for
    from mmedge.runtime.options import DEFAULT_SESSION_CONFIG
    from mmedge.runtime.session import apply_process_defaults, open_session

    args = parse_args(argv)
    apply_process_defaults()  # every model is timed with mmedge's session config, whoever opens the first session
    if not args.teacher.is_file():
        sys.exit(f"teacher model {args.teacher} does not exist; pass the fp32 .onnx a `mmedge run` exported.")
    if args.shipped is not None and not args.shipped.is_file():
        sys.exit(f"shipped model {args.shipped} does not exist; pass the .onnx the quantize step of that run wrote.")
    provenance = collect()  # the code as it was when the run started
    work = args.work or Path(tempfile.mkdtemp(prefix="mmedge-peers-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    args.venvs.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)

    # The tools get a copy of the teacher: a library call never touches the caller's file.
    teacher = work / "fp32" / "model.onnx"
    teacher.parent.mkdir(exist_ok=True)
    shutil.copyfile(args.teacher, teacher)
    cfg = data_config(teacher, args.data)
    dataset = load_dataset(cfg)
    calibration = CalibrationConfig()
    feeds = calibration_feeds(teacher, calibration, cfg)
    npz = work / "calibration.npz"
    np.savez(npz, **feeds)
    n_calib = len(next(iter(feeds.values())))

    tools: dict[str, dict] = {}
    peers: list[dict] = []
    for key in args.tools:
        tool = TOOLS[key]
        python, err, setup_s = ensure_venv(key, args.venvs, work / "logs", args.timeout)
        tools[key] = {"label": tool.label, "venv": str(args.venvs / key), "setup_s": setup_s, "error": err}
        tools[key]["packages"] = package_versions(python, key) if python else {}
        print(f"{key}: {'venv ready' if python else err} ({setup_s:.0f} s)", flush=True)
        for variant in tool.variants:
            got = {"error": err} if python is None else quantize(python, key, variant, teacher, npz, work, args.timeout)
            peers.append({"key": key, "tool": tool.label, "variant": variant, **got})
            print(f"  {variant}: {got.get('error') or got['path']} ({got.get('quantize_s', 0):.0f} s)", flush=True)

    rows = [{"name": "teacher", "tool": "teacher", "variant": "fp32", "peer": False, "path": teacher, "error": ""}]
    if args.shipped is not None:
        rows.append({"name": "mmedge", "tool": "mmedge", "variant": "shipped", "peer": False, "path": args.shipped})
    for variant in MMEDGE_PASSES:
        got = mmedge_pass(variant, teacher, cfg, work)
        rows.append({"name": f"mmedge {variant}", "tool": "mmedge", "variant": variant, "peer": False, **got})
        print(f"mmedge {variant}: {got.get('error') or got['path']} ({got['quantize_s']:.0f} s)", flush=True)
    for p in peers:
        rows.append({"name": f"{p['key']} {p['variant']}", "peer": True, **p})
    for r in rows:
        r["error"] = r.get("error") or ""

    splits = {"test": dataset.test}
    if getattr(dataset, "paraphrase", None) is not None:
        splits["paraphrase"] = dataset.paraphrase
    if args.limit:  # the same seeded questions of each split for every model
        rng = np.random.default_rng(0)
        rows_of = rng.permutation(len(dataset.test))[: args.limit]  # paraphrase rows are the test rows reworded
        splits = {k: s.subset(np.sort(rows_of[rows_of < len(s)])) for k, s in splits.items()}
    ran = {r["name"]: Path(r["path"]) for r in rows if not r["error"]}
    accuracy, errors = score_models(ran, teacher, splits)
    for r in rows:
        r["error"] = r["error"] or errors.get(r["name"], "")
        if r["name"] in accuracy:
            r["test_accuracy"] = accuracy[r["name"]]["test"]
            r["paraphrase_accuracy"] = accuracy[r["name"]].get("paraphrase")
            r["size_bytes"] = model_bytes(Path(r["path"]))
    base = rows[0]
    if base["error"]:
        sys.exit(f"the teacher itself could not be scored: {base['error']}")
    for r in rows:
        if r.get("test_accuracy") is not None:
            r["drop_points"] = round((base["test_accuracy"] - r["test_accuracy"]) * 100, 3)
            r["size_ratio"] = r["size_bytes"] / base["size_bytes"]

    # Timing: real test questions (the first 64, tiled to the batch), every model that scored, one run.
    timed = {r["name"]: Path(r["path"]) for r in rows if not r["error"]}
    # Tokenized as the shipped model tokenizes: its ids are in range for every model, also when it pruned its
    # vocabulary (the teacher's would not be for it); timing needs valid shapes and ids, not the same words.
    sample = feeds_for(dataset.test, ModelInputs.of(open_session(args.shipped or teacher, "cpu")), np.arange(64))
    comparisons = {}
    for b in BATCHES:
        print(f"timing batch {b}: {len(timed)} models, {args.rounds} rounds × at least {CALLS[b]} calls", flush=True)
        comparisons[str(b)] = compare_latency(
            timed, sample, "cpu", 1, b, args.rounds, CALLS[b], WARMUP[b], min_round_ms=MIN_ROUND_MS
        )
    for r in rows:
        if r["name"] in timed:
            r["p50_ms"] = {b: c.candidates[r["name"]].p50_ms for b, c in comparisons.items()}
            r["ratio"] = {b: list(c.ratio_interval(r["name"], "teacher")) for b, c in comparisons.items()}
    best = mark_best(rows, comparisons["1"])
    own = own_vs_plain(comparisons)

    data = {
        "provenance": provenance,
        "machine": machine_info(with_provenance=False),
        "teacher": str(args.teacher),
        "shipped": str(args.shipped) if args.shipped else None,
        "data": cfg.model_dump(mode="json"),
        "samples": {k: len(s) for k, s in splits.items()},
        "limit": args.limit,
        "calibration": {
            "rows": n_calib,
            "source": f"mmedge's calibration draw: up to {calibration.samples} seeded training questions, stratified "
            "by answer",
            "config": calibration.model_dump(mode="json"),
        },
        "rounds": args.rounds,
        "calls_per_round": {b: c.calls_per_round for b, c in comparisons.items()},
        "session_config": DEFAULT_SESSION_CONFIG,
        "best_peer": best,
        "own_vs_plain": own,
        "tools": tools,
        "rows": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items() if k not in ("key",)} for r in rows],
        "comparisons": {b: c.to_json() for b, c in comparisons.items()},
    }
    _common.RESULTS = args.results_dir
    _common.write_results(args.out_name, data, markdown(data, rows, "paraphrase" in splits))


if __name__ == "__main__":
    main()
