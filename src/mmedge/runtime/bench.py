"""Latency, throughput, load time and memory of ONNX models on one execution provider (no torch).

Timing on shared CPUs is noisy: warm up first, time many single calls, and report the median and tail
(p90/p99) rather than a mean alone. Models are compared by one harness (``compare_latency``): candidates
alternate in rounds, and each round's time of one candidate is divided by another's from the same round, so
drift on a shared machine cancels; a difference counts only when the p10-p90 interval of that per-round ratio
excludes 1.0.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import resource
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from mmedge.errors import MmedgeError
from mmedge.provenance import collect
from mmedge.runtime.session import check_feeds, open_session

K = TypeVar("K", bound=Hashable)


def machine_info(with_provenance: bool = True) -> dict:
    """The machine a figure was measured on: CPU model, cores, OS, Python and onnxruntime (the keys reports read),
    the CPU's instruction-set flags and a one-phrase summary of them, and (``with_provenance``) the full
    provenance: mmedge version, git commit, package versions. A document that records the provenance at its top
    level passes False so it is not stored twice."""
    import onnxruntime as ort

    prov = collect()
    cpu = prov["cpu"]
    info = {
        "cpu": cpu["model"],
        "cpu_summary": cpu["summary"],
        "cpu_flags": cpu["flags"],
        "logical_cores": cpu["logical_cores"],
        "physical_cores": cpu["physical_cores"],
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }
    if with_provenance:
        info["provenance"] = prov
    return info


def percentiles(samples_ms: Sequence[float]) -> dict:
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


# ---------------------------------------------------------------- the comparison harness

# Below this many rounds the p10-p90 interval of a ratio rests on too few points to exclude 1.0 honestly, so no
# difference is claimed (every candidate counts as equally fast).
MIN_ROUNDS_FOR_A_DIFFERENCE = 5
RULE = (
    "two candidates are equally fast unless the p10-p90 interval of their per-round latency ratio excludes 1.0 "
    f"(and never with fewer than {MIN_ROUNDS_FOR_A_DIFFERENCE} rounds)"
)


@dataclass(frozen=True)
class CandidateTiming:
    """One candidate of a comparison: latency over all its timed calls, and its per-round ratio to the fastest
    candidate (p10/p50/p90 over rounds; 1.0 for the fastest itself)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    ratio_p10: float
    ratio_p50: float
    ratio_p90: float
    calls: int
    providers: tuple[str, ...] = ()  # what onnxruntime ran it on, read back from the session

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "providers": list(self.providers)}


@dataclass(frozen=True)
class LatencyComparison:
    """Candidates timed in the same alternating rounds. ``round_ms`` holds each candidate's median call per round:
    the ratios are built from it, one round at a time."""

    ep: str
    threads: int
    batch_size: int
    rounds: int
    calls_per_round: int
    candidates: dict[str, CandidateTiming]
    fastest: str
    round_ms: dict[str, tuple[float, ...]] = field(repr=False, default_factory=dict)

    def ratio_interval(self, a: str, b: str) -> tuple[float, float, float]:
        """p10, p50 and p90 over rounds of time(a) / time(b) within the same round (above 1: a is slower)."""
        for name in (a, b):
            if name not in self.round_ms:
                raise MmedgeError(f"'{name}' is not a candidate of this comparison ({', '.join(self.round_ms)}).")
        ratios = np.asarray(self.round_ms[a]) / np.asarray(self.round_ms[b])
        p10, p50, p90 = np.percentile(ratios, [10, 50, 90])
        return float(p10), float(p50), float(p90)

    def median_interval(self, a: str, b: str, confidence: float = 0.9) -> tuple[float, float]:
        """A ``confidence`` interval of the median per-round ratio time(a) / time(b), free of any assumption on
        the rounds' distribution (two order statistics of the ratios, by the binomial law of how many fall below the
        median). Where the p10-p90 interval says how much single rounds scatter, this says how well the run pins the
        typical ratio: a few disturbed rounds widen the first but barely move this one, so a decision taken on it
        comes out the same from one run to the next."""
        ratios = np.sort(np.asarray(self.round_ms[a]) / np.asarray(self.round_ms[b]))
        n = len(ratios)
        below, k = 0.0, 0  # k: how many order statistics each tail may leave out at this confidence
        while k < n // 2:
            below += math.comb(n, k) / 2**n
            if below > (1 - confidence) / 2:
                break
            k += 1
        return float(ratios[max(k - 1, 0)]), float(ratios[n - max(k, 1)])

    def equally_fast(self, a: str, b: str) -> bool:
        """True unless the p10-p90 interval of the per-round ratio of a to b excludes 1.0 (see RULE)."""
        if self.rounds < MIN_ROUNDS_FOR_A_DIFFERENCE:
            return True
        lo, _, hi = self.ratio_interval(a, b)
        return lo <= 1.0 <= hi

    def tied_with_fastest(self) -> list[str]:
        """The candidates (the fastest among them) that are equally fast as the fastest, in candidate order."""
        return [name for name in self.candidates if self.equally_fast(name, self.fastest)]

    def describe(self) -> str:
        """One line: the fastest candidate, then each other one's per-round ratio to it with its p10-p90 interval,
        e.g. "cpu, 1 thread, batch 1, 20 rounds x 10 calls: fastest fp32; int8 1.08x slower (p10-p90 1.03-1.12)"."""
        threads = "default threads" if self.threads == 0 else f"{self.threads} thread{'s' * (self.threads != 1)}"
        parts = []
        for name, c in self.candidates.items():
            if name == self.fastest:
                continue
            verdict = "equally fast" if self.equally_fast(name, self.fastest) else "slower"
            parts.append(f"{name} {c.ratio_p50:.2f}x, {verdict} (p10-p90 {c.ratio_p10:.2f}-{c.ratio_p90:.2f})")
        head = (
            f"{self.ep}, {threads}, batch {self.batch_size}, {self.rounds} rounds x {self.calls_per_round} calls: "
            f"fastest {self.fastest}"
        )
        return "; ".join([head, *parts])

    def to_json(self) -> dict:
        return {
            "ep": self.ep,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "calls_per_round": self.calls_per_round,
            "fastest": self.fastest,
            "rule": RULE,
            "candidates": {
                name: {**c.to_json(), "equally_fast_as_fastest": self.equally_fast(name, self.fastest)}
                for name, c in self.candidates.items()
            },
            "round_ms": {name: list(v) for name, v in self.round_ms.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> LatencyComparison:
        fields = ("p50_ms", "p90_ms", "p99_ms", "ratio_p10", "ratio_p50", "ratio_p90", "calls")
        return cls(
            ep=data["ep"],
            threads=data["threads"],
            batch_size=data["batch_size"],
            rounds=data["rounds"],
            calls_per_round=data["calls_per_round"],
            candidates={
                name: CandidateTiming(**{k: c[k] for k in fields}, providers=tuple(c.get("providers", ())))
                for name, c in data["candidates"].items()
            },
            fastest=data["fastest"],
            round_ms={name: tuple(v) for name, v in data["round_ms"].items()},
        )


def time_rounds(
    calls: Mapping[K, Callable[[], object]],
    rounds: int,
    calls_per_round: int,
    warmup: int = 0,
    *,
    clock: Callable[[], float] = time.perf_counter,
    max_seconds: float | None = None,
) -> dict[K, list[list[float]]]:
    """Time each callable in alternating rounds: every round runs every candidate ``calls_per_round`` times, the
    order rotated by one each round (A B C, B C A, C A B, ...), so no candidate always follows the same one or
    always runs first. Returns {key: [[ms per call] per round]}. ``clock`` (seconds) is injectable for tests.
    ``max_seconds`` ends the rounds early, but never before 3 rounds and 10 calls per candidate."""
    if rounds < 1 or calls_per_round < 1 or warmup < 0:
        raise MmedgeError(
            "rounds and calls per round must be at least 1 and warm-up at least 0; fix the timing options."
        )
    order = list(calls)
    for key in order:
        for _ in range(warmup):
            calls[key]()
    times: dict[K, list[list[float]]] = {key: [] for key in order}
    deadline = None if max_seconds is None else clock() + max_seconds
    for r in range(rounds):
        shift = r % len(order)
        for key in order[shift:] + order[:shift]:
            fn, spent = calls[key], []
            for _ in range(calls_per_round):
                t0 = clock()
                fn()
                spent.append((clock() - t0) * 1e3)
            times[key].append(spent)
        if deadline is not None and r >= 2 and (r + 1) * calls_per_round >= 10 and clock() > deadline:
            break
    return times


def summarize(
    samples: Mapping[str, Sequence[Sequence[float]]],
    *,
    ep: str,
    threads: int,
    batch_size: int,
    providers: Mapping[str, Sequence[str]] | None = None,
) -> LatencyComparison:
    """The comparison of candidates timed in the same rounds (``samples``: {name: [[ms per call] per round]}, as
    ``time_rounds`` returns). A candidate's time in a round is the median of its calls in that round; the fastest
    is the one with the lowest median round time; every ratio is taken round by round."""
    if not samples:
        raise MmedgeError("nothing to compare: pass at least one candidate model.")
    counts = {len(rounds) for rounds in samples.values()}
    if len(counts) != 1 or 0 in counts:
        raise MmedgeError("every candidate needs a time for each round; time them together with time_rounds.")
    round_ms = {name: tuple(float(np.median(r)) for r in rounds) for name, rounds in samples.items()}
    fastest = min(round_ms, key=lambda name: float(np.median(round_ms[name])))
    candidates = {}
    for name, rounds in samples.items():
        every = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds])
        ratios = np.asarray(round_ms[name]) / np.asarray(round_ms[fastest])
        p10, p50, p90 = (float(v) for v in np.percentile(ratios, [10, 50, 90]))
        candidates[name] = CandidateTiming(
            p50_ms=float(np.percentile(every, 50)),
            p90_ms=float(np.percentile(every, 90)),
            p99_ms=float(np.percentile(every, 99)),
            ratio_p10=p10,
            ratio_p50=p50,
            ratio_p90=p90,
            calls=len(every),
            providers=tuple((providers or {}).get(name, ())),
        )
    rounds_run = counts.pop()
    per_round = max(len(r) for rounds in samples.values() for r in rounds)
    return LatencyComparison(ep, threads, batch_size, rounds_run, per_round, candidates, fastest, round_ms)


def compare_callables(
    calls: Mapping[str, Callable[[], object]],
    *,
    ep: str,
    threads: int,
    batch_size: int,
    rounds: int = 20,
    calls_per_round: int = 10,
    warmup: int = 5,
    clock: Callable[[], float] = time.perf_counter,
    max_seconds: float | None = None,
) -> LatencyComparison:
    """Compare any callables (e.g. a PyTorch model against its ONNX export) with the same rounds and statistics as
    ``compare_latency``; ``ep``, ``threads`` and ``batch_size`` label what the callables run."""
    times = time_rounds(calls, rounds, calls_per_round, warmup, clock=clock, max_seconds=max_seconds)
    return summarize(times, ep=ep, threads=threads, batch_size=batch_size)


def tile_batch(feeds: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
    """Feeds with exactly ``batch`` rows, repeating the available samples as needed."""
    n = len(next(iter(feeds.values())))
    rows = np.arange(batch) % n
    return {k: np.ascontiguousarray(v[rows]) for k, v in feeds.items()}


def _process_peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KiB on Linux


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


def _prepare(runners: Mapping[K, Runner], feeds: Mapping[K, dict], batch: int, warmup: int) -> dict[K, float]:
    """Bind each runner to ``batch`` rows of its inputs and warm it up; returns each one's RSS growth in MB during
    warm-up (the buffers onnxruntime allocates on the first calls)."""
    memory = {}
    for key, runner in runners.items():
        rss0 = _rss_mb()
        runner.prepare(tile_batch(feeds[key], batch))
        for _ in range(max(warmup, 1)):
            runner()
        memory[key] = max(_rss_mb() - rss0, 0.0)
    return memory


def _stats(rounds: Sequence[Sequence[float]], batch: int, rss_growth_mb: float) -> dict:
    stats = percentiles([t for r in rounds for t in r])
    stats["throughput_per_s"] = batch * 1e3 / stats["mean_ms"]
    stats["warmup_rss_growth_mb"] = rss_growth_mb
    return stats


def _spinning_config(candidates: int, threads: int) -> dict[str, str] | None:
    # A multi-threaded session's pool keeps spinning for a while after each call, on cores the next candidate in
    # the rounds needs; measured here (2 vCPUs) that lifted every variant's p99 from ~0.5 to ~4.5 ms. So when
    # several candidates alternate and they may use more than one thread (0: onnxruntime's default), pools do not
    # spin.
    if candidates > 1 and threads != 1:
        return {"session.intra_op.allow_spinning": "0"}
    return None


def _calls_filling(runners, round_ms: float, clock: Callable[[], float], most: int = 2000) -> int:
    """How many calls of the fastest runner take ``round_ms`` (from 5 timed calls of each; at most ``most``)."""
    per_call = []
    for runner in runners:
        t0 = clock()
        for _ in range(5):
            runner()
        per_call.append((clock() - t0) * 1e3 / 5)
    return min(most, math.ceil(round_ms / max(min(per_call), 1e-6)))


def compare_latency(
    models: Mapping[str, str | Path],
    feeds: dict[str, np.ndarray],
    ep: str,
    threads: int,
    batch_size: int,
    rounds: int = 20,
    calls_per_round: int = 10,
    warmup: int = 5,
    *,
    allow_fallback: bool = False,
    io_binding: bool | None = None,
    max_seconds: float | None = None,
    min_round_ms: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyComparison:
    """Time ONNX models against each other on exactly ``ep`` with ``threads`` intra-op threads, at ``batch_size``
    rows tiled from ``feeds`` (real samples, shared by all candidates), in alternating rounds (``time_rounds``).
    A session onnxruntime did not place on ``ep`` is an error, never a number; what ran each candidate is read
    back into its ``providers``. Judge the result with ``equally_fast`` / ``tied_with_fastest``, not by medians.

    ``min_round_ms`` raises the calls per round until the fastest candidate's share of a round lasts at least
    that long: a round of a few sub-millisecond calls is decided by whichever one an interrupt happened to hit."""
    from mmedge.runtime.providers import require

    _check_counts((threads,), rounds, warmup, (batch_size,), "rounds")
    if calls_per_round < 1:
        raise MmedgeError("calls per round must be at least 1; fix the timing options.")
    if not models:
        raise MmedgeError("nothing to compare: pass at least one candidate model.")
    config = _spinning_config(len(models), threads)
    runners, providers = {}, {}
    for name, path in models.items():
        sess = open_session(path, ep, threads, allow_fallback=allow_fallback, config=config)
        providers[name] = sess.get_providers()
        runners[name] = Runner(sess, ep, io_binding)
    _prepare(runners, dict.fromkeys(runners, feeds), batch_size, warmup)
    if min_round_ms > 0:
        calls_per_round = max(calls_per_round, _calls_filling(runners.values(), min_round_ms, clock))
    times = time_rounds(runners, rounds, calls_per_round, clock=clock, max_seconds=max_seconds)
    return summarize(times, ep=require(ep).name, threads=threads, batch_size=batch_size, providers=providers)


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
        memory = _prepare({0: runner}, {0: feeds}, batch, warmup)
        times = time_rounds({0: runner}, runs, 1, max_seconds=max_seconds)
        peak = max(peak, _rss_mb())
        result["batches"][str(batch)] = _stats(times[0], batch, memory[0])
    result["memory"] = {
        "rss_before_mb": rss_before,
        "rss_after_load_mb": rss_loaded,
        "peak_rss_mb": peak,
        "process_peak_rss_mb": _process_peak_rss_mb(),
    }
    result["size_bytes"] = Path(path).stat().st_size
    # embedded in documents (results.json, bundle manifests) that record the full provenance at their top level
    result["machine"] = machine_info(with_provenance=False)
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
    """``compare_latency`` once per batch size, as {name: {batch: CandidateTiming JSON + equally_fast_as_fastest}}."""
    out: dict[str, dict[str, dict]] = {name: {} for name in models}
    for batch in batch_sizes:
        comparison = compare_latency(models, feeds, ep, threads, batch, rounds, calls, warmup).to_json()
        for name in models:
            out[name][str(batch)] = comparison["candidates"][name]
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
    from mmedge.runtime.providers import available, require, resolve, unavailable_reason

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
        "provenance": collect(),
        "machine": machine_info(with_provenance=False),
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
    config = _spinning_config(len(models) * len(entries) * len(threads), max(threads))
    doc["settings"]["intra_op_spinning"] = config is None
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
            reason = unavailable_reason(ep.name)
            doc["eps"][ep.name] = {"ort_name": ep.ort_name, "status": "unavailable", "reason": reason}
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
    doc["comparisons"] = []
    model_order, ep_order = list(models), [e.name for e in entries]
    for batch in batch_sizes:
        # every variant (model x EP x threads) alternates in the same rounds, so any two can be compared round by round
        memory = _prepare(runners, {k: feeds[k[0]] for k in runners}, batch, warmup)
        times = time_rounds(runners, rounds, calls, max_seconds=max_seconds)
        for ep, t in dict.fromkeys((k[1], k[2]) for k in runners):
            group = {name: times[(name, e, n)] for name, e, n in runners if (e, n) == (ep, t)}
            comparison = summarize(
                group, ep=ep, threads=t, batch_size=batch, providers={m: loads[(m, ep, t)][2] for m in group}
            )
            doc["comparisons"].append(comparison.to_json())
            for name in group:
                load_ms, load_mb, providers = loads[(name, ep, t)]
                c = comparison.candidates[name]
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
                        **_stats(times[(name, ep, t)], batch, memory[(name, ep, t)]),
                        "ratio_to_fastest": [c.ratio_p10, c.ratio_p50, c.ratio_p90],
                        "equally_fast_as_fastest": comparison.equally_fast(name, comparison.fastest),
                    }
                )
        _add_ratios(doc["results"], times, batch, model_order, ep_order, rounds_run=len(next(iter(times.values()))))
    doc["memory"] = {"process_peak_rss_mb": _process_peak_rss_mb()}
    return doc


def comparison_lines(doc: dict) -> list[str]:
    """``LatencyComparison.describe`` for every group of a ``bench_matrix`` document with more than one model."""
    return [LatencyComparison.from_json(c).describe() for c in doc.get("comparisons", []) if len(c["candidates"]) > 1]


def _round_ratio(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[float]:
    """p10, p50, p90 over rounds of a's median call over b's in the same round."""
    ratios = np.asarray([np.median(x) for x in a]) / np.asarray([np.median(y) for y in b])
    return [float(v) for v in np.percentile(ratios, [10, 50, 90])]


def _add_ratios(
    rows: list[dict], times: dict, batch: int, model_order: list[str], ep_order: list[str], rounds_run: int
) -> None:
    """Each row of ``batch`` against the first model (same EP, threads) and the first EP (same model, threads), as
    per-round ratios: ``p50_vs_first_model`` is the median, ``vs_first_model`` the p10/p50/p90 interval."""
    for r in rows:
        if r["batch"] != batch:
            continue
        own = times[(r["model"], r["ep"], r["threads"])]
        first_model = next(m for m in model_order if (m, r["ep"], r["threads"]) in times)
        first_ep = next(e for e in ep_order if (r["model"], e, r["threads"]) in times)
        r["vs_first_model"] = _round_ratio(own, times[(first_model, r["ep"], r["threads"])])
        r["vs_first_ep"] = _round_ratio(own, times[(r["model"], first_ep, r["threads"])])
        r["p50_vs_first_model"], r["p50_vs_first_ep"] = r["vs_first_model"][1], r["vs_first_ep"][1]
        r["rounds"] = rounds_run
