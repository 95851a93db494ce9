"""What flushing denormal floats to zero buys at inference: the same models timed in processes that flush them
(mmedge's sessions: ``session.set_denormal_as_zero``) and in processes that keep them (onnxruntime's default).

A padding mask adds a large negative score (-1e4 in mmedge's MiniLM) before each attention Softmax; onnxruntime's
float exp turns every padded position into a denormal, which x86 cores handle in microcode. onnxruntime applies the
setting to the calling thread once per process, at its first session, so each setting gets processes of its own:
``--pairs`` pairs of child processes, the order within a pair alternating, each timing every model in the same
alternating rounds (CPU execution provider, 1 thread, batch 1 and 32, real test questions). Each child also checks
that its setting took effect (softmax of [0, -88]: exp(-88) is a denormal) and times a masked Softmax alone, shaped
as MiniLM's at batch 32 (12 heads, 24 tokens, 10 of them real). Reported: per model and batch, the median p50 of each
setting and the per-pair ratio flushed / kept (median, min and max over the pairs).

    python benchmarks/denormals.py --run .mmedge/runs/easy-vqa --data easy-vqa --out-name denormals-easy-vqa
        -> benchmarks/results/denormals-easy-vqa.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

import _common
from mmedge.report.markdown import table

MODES = ("flushed", "kept")
BATCHES = (1, 32)
CALLS = {1: 10, 32: 3}
SOFTMAX_SHAPE = (32, 12, 24, 24)  # MiniLM at batch 32: heads, query and key tokens
REAL_TOKENS = 10
MASK_VALUE = -1e4


def _softmax_session(shape):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mmedge.runtime.options import session_options

    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def child(mode: str, models: dict[str, Path], data: str, rounds: int, out: Path) -> None:
    """One process of one setting: set it with the process's first session, check it, time everything."""
    import onnxruntime as ort

    from mmedge.runtime.bench import compare_latency
    from mmedge.runtime.evaluate import ModelInputs, feeds_for
    from mmedge.runtime.providers import relu_model
    from mmedge.runtime.session import apply_process_defaults, open_session
    from peers import data_config

    if mode == "flushed":
        apply_process_defaults()
    else:  # a first session without the entry: the calling thread keeps denormals for the whole process
        ort.InferenceSession(relu_model(), ort.SessionOptions(), providers=["CPUExecutionProvider"])
    probe = _softmax_session((1, 2)).run(None, {"x": np.array([[0.0, -88.0]], np.float32)})[0]
    scores = np.random.default_rng(0).standard_normal(SOFTMAX_SHAPE).astype(np.float32)
    scores[..., REAL_TOKENS:] += MASK_VALUE
    softmax = _softmax_session(SOFTMAX_SHAPE)
    times = []
    for _ in range(40):
        started = time.perf_counter()
        softmax.run(None, {"x": scores})
        times.append((time.perf_counter() - started) * 1000)
    from mmedge.data import load_dataset

    first = next(iter(models.values()))
    dataset = load_dataset(data_config(first, data))
    # tokenized as the shipped model tokenizes: where it pruned its vocabulary, its ids are in range for every model
    tokenizer = models.get("shipped", first)
    sample = feeds_for(dataset.test, ModelInputs.of(open_session(tokenizer, "cpu")), np.arange(64))
    latency = {}
    for b in BATCHES:
        c = compare_latency(models, sample, "cpu", 1, b, rounds, CALLS[b], 3, min_round_ms=20.0)
        latency[str(b)] = {name: c.candidates[name].p50_ms for name in models}
    result = {
        "mode": mode,
        "flushes": float(probe[0, 1]) == 0.0,
        "softmax_ms": statistics.median(times[10:]),
        "latency_ms": latency,
    }
    out.write_text(json.dumps(result))


def summarize(children: list[dict]) -> dict:
    """Per model and batch: each setting's median p50 over its processes, and the ratio flushed / kept of each pair
    (children come in pairs, one of each setting). The masked Softmax likewise."""
    pairs = [
        ({c["mode"]: c for c in children[i : i + 2]}["flushed"], {c["mode"]: c for c in children[i : i + 2]}["kept"])
        for i in range(0, len(children), 2)
    ]

    def figures(get) -> dict:
        ratios = [get(f) / get(k) for f, k in pairs]
        return {
            "flushed_ms": statistics.median(get(f) for f, _ in pairs),
            "kept_ms": statistics.median(get(k) for _, k in pairs),
            "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        }

    models = list(children[0]["latency_ms"]["1"])
    return {
        "softmax": figures(lambda c: c["softmax_ms"]),
        "models": {
            name: {b: figures(lambda c, b=b, name=name: c["latency_ms"][b][name]) for b in children[0]["latency_ms"]}
            for name in models
        },
        "settings_took_effect": all(c["flushes"] == (c["mode"] == "flushed") for c in children),
    }


def markdown(data: dict) -> str:
    s = data["summary"]

    def row(label: str, f: dict) -> list[str]:
        r = f["ratio"]
        ratio = f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"
        return [label, f"{f['kept_ms']:.3g}", f"{f['flushed_ms']:.3g}", ratio]

    rows = [row(f"masked Softmax {'×'.join(map(str, SOFTMAX_SHAPE))}", s["softmax"])]
    for name, per_batch in s["models"].items():
        rows += [row(f"{name}, batch {b}", f) for b, f in per_batch.items()]
    return "\n".join(
        [
            f"# Denormals flushed to zero vs kept ({data['data']})",
            "",
            f"Models: {', '.join(f'{k} (`{v}`)' for k, v in data['models'].items())}. {data['pairs']} pairs of "
            "processes, one per setting, the order alternating; in each, every model timed in the same "
            f"{data['rounds']} alternating rounds (CPU EP, 1 thread, real test questions). Ratio: flushed / kept, "
            "per pair (median, min–max over the pairs); below 1 means flushing is faster.",
            "",
            table(["what", "kept p50 ms", "flushed p50 ms", "flushed / kept"], rows),
            "",
            "Each process checked its setting (softmax of [0, -88] gives exp(-88), a denormal, or 0 when flushed): "
            + ("all took effect." if s["settings_took_effect"] else "**not all took effect; the figures are void.**"),
            "",
            _common.machine_sentence(data["provenance"]),
            "",
        ]
    )


def main(argv=None) -> None:
    from peers import DATA

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a `mmedge run` folder: its first model's fp32 ONNX, its shipped model")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="another model to time")
    p.add_argument("--data", choices=sorted(DATA), required=True, help="the data set the models were trained on")
    p.add_argument("--out-name", help="results file name: benchmarks/results/<out-name>.{json,md}")
    p.add_argument("--pairs", type=int, default=3, help="pairs of processes (one per setting)")
    p.add_argument("--rounds", type=int, default=15, help="alternating timing rounds per batch size in each process")
    p.add_argument("--results-dir", type=Path, default=_common.RESULTS, help="where the results files go")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    models = {}
    if args.run is not None:
        found = _common.run_models(args.run)
        models.update({"teacher fp32": found.get("export"), "shipped": found.get("quantize")})
    for item in args.model:
        name, _, path = item.partition("=")
        models[name] = Path(path)
    models = {k: Path(v) for k, v in models.items() if v is not None}
    missing = [f"{k} ({v})" for k, v in models.items() if not v.is_file()]
    if not models or missing:
        p.error(f"no model file at {', '.join(missing)}" if missing else "pass --run or --model NAME=PATH")
    if args.child:
        child(args.child, models, args.data, args.rounds, args.child_out)
        return
    if not args.out_name:
        p.error("pass --out-name")
    from mmedge.provenance import collect

    provenance = collect()
    children = []
    with tempfile.TemporaryDirectory(prefix="mmedge-denormals-") as tmp:
        for i in range(args.pairs):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                out = Path(tmp) / f"{i}-{mode}.json"
                cmd = [sys.executable, __file__, "--data", args.data, "--rounds", str(args.rounds), "--child", mode]
                cmd += ["--child-out", str(out)] + [a for k, v in models.items() for a in ("--model", f"{k}={v}")]
                print(f"pair {i + 1}/{args.pairs}: {mode}", flush=True)
                subprocess.run(cmd, check=True)
                children.append(json.loads(out.read_text()))
    data = {
        "provenance": provenance,
        "data": args.data,
        "models": {k: str(v) for k, v in models.items()},
        "pairs": args.pairs,
        "rounds": args.rounds,
        "calls_per_round": CALLS,
        "softmax": {"shape": SOFTMAX_SHAPE, "real_tokens": REAL_TOKENS, "mask_value": MASK_VALUE},
        "children": children,
        "summary": summarize(children),
    }
    _common.RESULTS = args.results_dir
    _common.write_results(args.out_name, data, markdown(data))


if __name__ == "__main__":
    main()
