"""Latency, throughput, load time and memory of an ONNX model on one execution provider (no torch).

Timing on shared CPUs is noisy: warm up first, time many single calls, and report the median and tail
(p90/p99) rather than a mean alone.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from mmedge.errors import MmedgeError
from mmedge.runtime.session import check_feeds, open_session


def machine_info() -> dict:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }


def percentiles(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "std_ms": float(a.std()),
        "runs": len(a),
    }


def tile_batch(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Feeds with exactly ``batch`` rows, repeating the available samples as needed."""
    n = len(next(iter(feeds.values())))
    rows = np.arange(batch) % n
    return {k: np.ascontiguousarray(v[rows]) for k, v in feeds.items()}


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class Runner:
    """One timed variant: a session on one EP with one thread count, called on a fixed batch. On CUDA/TensorRT
    the inputs are bound on the device once (I/O binding), so a call times the model, not host copies."""

    def __init__(self, sess, ep: str, io_binding: bool | None = None):
        self.sess, self.ep = sess, ep
        self.io_binding = ep in ("cuda", "tensorrt") if io_binding is None else io_binding
        self.device = "cuda" if ep in ("cuda", "tensorrt") else "cpu"
        self._call = None

    def prepare(self, feed: dict[str, np.ndarray]) -> None:
        check_feeds(self.sess, feed)
        if not self.io_binding:
            self._call = lambda: self.sess.run(None, feed)
            return
        import onnxruntime as ort

        self.binding = binding = self.sess.io_binding()
        # Keep the device copies alive as long as the binding is used.
        self._values = [ort.OrtValue.ortvalue_from_numpy(v, self.device, 0) for v in feed.values()]
        for name, value in zip(feed, self._values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for out in self.sess.get_outputs():
            binding.bind_output(out.name, self.device, 0)
        self._call = lambda: self.sess.run_with_iobinding(binding)

    def __call__(self) -> None:
        self._call()


def _check_counts(threads, runs_or_rounds, warmup, batch_sizes, what="runs") -> None:
    if any(t < 0 for t in threads):
        raise MmedgeError(f"thread count {min(threads)} is below 0; pass --threads 1 or more (0: onnxruntime chooses).")
    if any(b < 1 for b in batch_sizes):
        raise MmedgeError(f"batch size {min(batch_sizes)} is below 1; pass --batch 1 or more.")
    if runs_or_rounds < 1 or warmup < 0:
        raise MmedgeError(f"{what} must be at least 1 and warm-up at least 0; fix the bench options.")


def load_session(path, ep: str, threads: int, allow_fallback: bool = False, loads: int = 3, config=None):
    """(session, median load ms, RSS growth MB): the first load pays file-cache misses, so the median of a few."""
    times, rss0 = [], _rss_mb()
    for _ in range(loads):
        t0 = time.perf_counter()
        sess = open_session(path, ep, threads, allow_fallback=allow_fallback, config=config)
        times.append((time.perf_counter() - t0) * 1e3)
    return sess, float(np.median(times)), max(_rss_mb() - rss0, 0.0)


def time_interleaved(
    runners: dict, feeds: dict, batch: int, rounds: int, calls: int, warmup: int, max_seconds: float | None = None
) -> dict:
    """Per runner, the latency of single calls at ``batch``, measured in alternating rounds (A B C, C B A, ...),
    so drift on a shared machine hits all alike. ``feeds`` maps runner key -> its inputs. Returns
    {key: percentiles + warm-up RSS growth}."""
    memory = {}
    for key, runner in runners.items():
        rss0 = _rss_mb()
        runner.prepare(tile_batch(feeds[key], batch))
        for _ in range(max(warmup, 1)):
            runner()
        memory[key] = max(_rss_mb() - rss0, 0.0)
    times: dict = {key: [] for key in runners}
    order = list(runners)
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    for r in range(rounds):
        for key in order if r % 2 == 0 else reversed(order):
            runner = runners[key]
            for _ in range(calls):
                t0 = time.perf_counter()
                runner()
                times[key].append((time.perf_counter() - t0) * 1e3)
        # a time budget ends the rounds early, but never before 3 rounds and 10 calls per variant
        if deadline is not None and r >= 2 and (r + 1) * calls >= 10 and time.perf_counter() > deadline:
            break
    out = {}
    for key in runners:
        stats = percentiles(times[key])
        stats["throughput_per_s"] = batch * 1e3 / stats["mean_ms"]
        stats["warmup_rss_growth_mb"] = memory[key]
        out[key] = stats
    return out


def bench_model(
    path: str | Path,
    feeds: dict[str, np.ndarray],
    ep: str = "cpu",
    threads: int = 0,
    batch_sizes: tuple[int, ...] = (1, 32),
    runs: int = 200,
    warmup: int = 20,
    max_seconds: float | None = None,
) -> dict:
    """Measure one model on one EP. ``feeds`` holds real samples (any number of rows); each batch size tiles them."""
    _check_counts((threads,), runs, warmup, batch_sizes)
    rss_before = _rss_mb()
    sess, load_ms, _ = load_session(path, ep, threads)
    rss_loaded = _rss_mb()
    check_feeds(sess, tile_batch(feeds, 1))
    result = {
        "model": str(path),
        "ep": ep,
        "providers": sess.get_providers(),
        "threads": threads or "default",
        "session_load_ms": load_ms,
        "batches": {},
    }
    runner = Runner(sess, ep)
    peak = rss_loaded
    for batch in batch_sizes:
        stats = time_interleaved({0: runner}, {0: feeds}, batch, runs, 1, warmup, max_seconds)[0]
        peak = max(peak, _rss_mb())
        result["batches"][str(batch)] = stats
    result["memory"] = {
        "rss_before_mb": rss_before,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result["size_bytes"] = Path(path).stat().st_size
    result["machine"] = machine_info()
    return result


def bench_interleaved(
    models: dict[str, str | Path],
    feeds: dict[str, np.ndarray],
    ep: str = "cpu",
    threads: int = 1,
    batch_sizes: tuple[int, ...] = (1,),
    rounds: int = 30,
    calls: int = 10,
    warmup: int = 20,
) -> dict[str, dict[str, dict]]:
    """Latency of several models measured in alternating rounds (A B C, C B A, ...), so that drift on a shared
    machine hits all alike; returns {name: {batch: percentiles}}. Compare variants by their medians."""
    _check_counts((threads,), rounds, warmup, batch_sizes, "rounds")
    runners = {name: Runner(open_session(path, ep, threads), ep) for name, path in models.items()}
    out: dict[str, dict[str, dict]] = {name: {} for name in models}
    for batch in batch_sizes:
        timed = time_interleaved(runners, dict.fromkeys(models, feeds), batch, rounds, calls, warmup)
        for name in models:
            out[name][str(batch)] = timed[name]
    return out


RESULTS_SCHEMA = "mmedge.bench-results"
RESULTS_VERSION = 1


def model_names(paths: list[Path]) -> list[str]:
    """Readable names for models: the file stem, or the bundle folder for a bundle's model.onnx."""
    names = []
    for p in paths:
        base = p.parent.name if p.stem == "model" and p.parent.name else p.stem
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def bench_matrix(
    models: dict[str, Path],
    feeds: dict[str, dict[str, np.ndarray]],
    eps: list[str],
    threads: list[int],
    batch_sizes: list[int],
    rounds: int = 20,
    calls: int = 10,
    warmup: int = 20,
    allow_missing: bool = False,
    allow_fallback: bool = False,
    io_binding: bool | None = None,
    max_seconds: float | None = None,
    sources: dict[str, str] | None = None,
) -> dict:
    """Every model on every EP, thread count and batch size, timed interleaved per batch size (all variants
    alternate in one run, so their ratios hold on a noisy machine). An EP this onnxruntime lacks, or one that
    cannot take a model, is an error — or, with ``allow_missing``, a row marked unavailable/failed, never a
    number. Returns the schema-versioned results document."""
    from datetime import datetime, timezone

    from mmedge import __version__
    from mmedge.errors import EpCannotRunError
    from mmedge.runtime.profile import node_placement
    from mmedge.runtime.providers import available, require, resolve

    if any(t < 1 for t in threads):
        raise MmedgeError(f"thread count {min(threads)} is below 1; pass --threads 1 or more.")
    _check_counts(threads, rounds, warmup, batch_sizes, "rounds")
    if calls < 1:
        raise MmedgeError("calls per round must be at least 1; fix --calls.")
    entries = [resolve(ep) for ep in eps]  # an unknown name is always an error (with the closest suggestion)
    have = available()
    doc: dict = {
        "schema": RESULTS_SCHEMA,
        "schema_version": RESULTS_VERSION,
        "kind": "bench",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mmedge_version": __version__,
        "machine": machine_info(),
        "settings": {
            "eps": [e.name for e in entries],
            "threads": list(threads),
            "batch_sizes": list(batch_sizes),
            "rounds": rounds,
            "calls_per_round": calls,
            "warmup": warmup,
            "allow_fallback": allow_fallback,
            "interleaved": True,
        },
        "models": {
            name: {"path": str(p), "size_bytes": p.stat().st_size, "inputs": (sources or {}).get(name)}
            for name, p in models.items()
        },
        "eps": {},
        "unavailable": [],
        "placement": {},
        "results": [],
    }
    runners, loads = {}, {}
    # A multi-threaded session's pool keeps spinning for a while after each call, on cores the next variant in
    # the interleaving needs; measured here (2 vCPUs) that lifted every variant's p99 from ~0.5 to ~4.5 ms.
    # So when several variants alternate and some use more than one thread, their pools do not spin.
    spin_off = len(models) * len(entries) * len(threads) > 1 and max(threads) > 1
    config = {"session.intra_op.allow_spinning": "0"} if spin_off else None
    doc["settings"]["intra_op_spinning"] = not spin_off
    # onnxruntime's own start-up memory lands on the first session made; pay it here, so that each variant's
    # RSS growth below is its own.
    for path in models.values():
        try:
            open_session(path, "cpu")
            break
        except EpCannotRunError:
            continue
    for ep in entries:
        if ep.name not in have:
            if not allow_missing:
                require(ep.name)  # raises: names what is installed and how to get this one
            doc["eps"][ep.name] = {"ort_name": ep.ort_name, "status": "unavailable", "reason": ep.how_to_get}
            reason = f"not in this onnxruntime; {ep.how_to_get}"
            doc["unavailable"] += [{"model": m, "ep": ep.name, "reason": reason} for m in models]
            continue
        doc["eps"][ep.name] = {"ort_name": ep.ort_name, "status": "ran"}
        for name, path in models.items():
            try:
                for t in threads:
                    sess, load_ms, load_mb = load_session(path, ep.name, t, allow_fallback, config=config)
                    check_feeds(sess, tile_batch(feeds[name], 1))
                    runners[(name, ep.name, t)] = Runner(sess, ep.name, io_binding)
                    loads[(name, ep.name, t)] = (load_ms, load_mb, sess.get_providers())
                doc["placement"].setdefault(name, {})[ep.name] = node_placement(
                    path, tile_batch(feeds[name], 1), ep.name, threads[0], allow_fallback
                )
            except EpCannotRunError as exc:
                if not allow_missing:
                    raise
                for t in threads:
                    runners.pop((name, ep.name, t), None)
                doc["unavailable"].append({"model": name, "ep": ep.name, "reason": str(exc)})
    if not runners:
        raise MmedgeError(
            "nothing could be measured: none of the requested execution providers is available here or can take "
            "the model(s); run `mmedge providers` to see what this installation has."
        )
    for batch in batch_sizes:
        timed = time_interleaved(runners, {k: feeds[k[0]] for k in runners}, batch, rounds, calls, warmup, max_seconds)
        for (name, ep, t), stats in timed.items():
            load_ms, load_mb, providers = loads[(name, ep, t)]
            doc["results"].append(
                {
                    "model": name,
                    "ep": ep,
                    "threads": t,
                    "batch": batch,
                    "providers": providers,
                    "io_binding": runners[(name, ep, t)].io_binding,
                    "session_load_ms": load_ms,
                    "session_rss_mb": load_mb,
                    **stats,
                }
            )
    _add_ratios(doc["results"], list(models), [e.name for e in entries])
    doc["memory"] = {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return doc


def _add_ratios(rows: list[dict], model_order: list[str], ep_order: list[str]) -> None:
    """p50 of each row against the first model (same EP, threads, batch) and the first EP (same model, ...)."""
    index = {(r["model"], r["ep"], r["threads"], r["batch"]): r for r in rows}
    for r in rows:
        first_model = next((m for m in model_order if (m, r["ep"], r["threads"], r["batch"]) in index), None)
        first_ep = next((e for e in ep_order if (r["model"], e, r["threads"], r["batch"]) in index), None)
        r["p50_vs_first_model"] = r["p50_ms"] / index[(first_model, r["ep"], r["threads"], r["batch"])]["p50_ms"]
        r["p50_vs_first_ep"] = r["p50_ms"] / index[(r["model"], first_ep, r["threads"], r["batch"])]["p50_ms"]
