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
    """Measure one model. ``feeds`` holds real samples (any number of rows); each batch size tiles them."""
    if threads < 0 or runs < 1 or warmup < 0 or any(b < 1 for b in batch_sizes):
        raise MmedgeError("threads must be >= 0 and runs, warm-up and batch sizes >= 1; fix the bench options.")
    rss_before = _rss_mb()
    load_ms = []
    for _ in range(3):  # the first load pays file-cache misses; report the median of three
        t0 = time.perf_counter()
        sess = open_session(path, ep, threads)
        load_ms.append((time.perf_counter() - t0) * 1e3)
    rss_loaded = _rss_mb()
    check_feeds(sess, tile_batch(feeds, 1))
    result = {
        "model": str(path),
        "ep": ep,
        "providers": sess.get_providers(),
        "threads": threads or "default",
        "session_load_ms": float(np.median(load_ms)),
        "batches": {},
    }
    peak = rss_loaded
    for batch in batch_sizes:
        feed = tile_batch(feeds, batch)
        for _ in range(warmup):
            sess.run(None, feed)
        times = []
        deadline = None if max_seconds is None else time.perf_counter() + max_seconds
        for i in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
            if i % 20 == 0:
                peak = max(peak, _rss_mb())
            if deadline is not None and time.perf_counter() > deadline and i >= 10:
                break
        stats = percentiles(times)
        stats["throughput_per_s"] = batch * 1e3 / stats["mean_ms"]
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
    if threads < 0 or rounds < 1 or calls < 1 or any(b < 1 for b in batch_sizes):
        raise MmedgeError("threads must be >= 0 and rounds, calls and batch sizes >= 1; fix the bench options.")
    sessions = {name: open_session(path, ep, threads) for name, path in models.items()}
    out: dict[str, dict[str, dict]] = {name: {} for name in models}
    for batch in batch_sizes:
        feed = tile_batch(feeds, batch)
        for sess in sessions.values():
            check_feeds(sess, feed)
            for _ in range(warmup):
                sess.run(None, feed)
        times: dict[str, list[float]] = {name: [] for name in models}
        names = list(models)
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                sess = sessions[name]
                for _ in range(calls):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    times[name].append((time.perf_counter() - t0) * 1e3)
        for name in models:
            out[name][str(batch)] = percentiles(times[name])
    return out
