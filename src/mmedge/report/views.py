"""Views of a results document: the rows the plots and the report tables are drawn from (no torch).

A run's results (``mmedge.results``) are read through each step's typed metrics; `mmedge bench` results
(``mmedge.bench-results``) are reduced to the same rows, so the plots are drawn one way for both."""

from __future__ import annotations

from mmedge.results import AutoQuantMetrics, BenchMetrics, Scored, StepMetrics, step_metrics


def typed_steps(doc: dict) -> list[tuple[dict, StepMetrics]]:
    """Every step of a run's results with its metrics read back into the step's typed model."""
    return [(s, step_metrics(s["type"], s["metrics"])) for s in doc["steps"]]


def robustness(steps: list[tuple[str, StepMetrics]]) -> list[dict]:
    """Test accuracy of every artifact the run made, complete and with one modality missing (image blank, text
    empty), in pipeline order — whether compression made the model more fragile when a sensor or prompt drops — and,
    where the data set has one, on the paraphrased questions (whether it cost the text tower its generality)."""
    return [
        {
            "step": kind,
            "full": m.test.accuracy,
            "image_missing": m.image_blanked.accuracy,
            "text_missing": m.text_emptied.accuracy,
            **({"paraphrase": m.paraphrase.accuracy} if m.paraphrase is not None else {}),
        }
        for kind, m in steps
        if isinstance(m, Scored) and None not in (m.test, m.image_blanked, m.text_emptied)
    ]


def latest_metrics(doc: dict, step_type: str):
    """The typed metrics of the latest ``step_type`` step of a run's results, or None."""
    found = next((s["metrics"] for s in reversed(doc["steps"]) if s["type"] == step_type), None)
    return None if found is None else step_metrics(step_type, found)


def latency_rows(doc: dict) -> list[dict]:
    """{label, model, ep, threads, batch, p50_ms, p90_ms, p99_ms} for every measured combination."""
    if doc["schema"] == "mmedge.bench-results":
        return [
            {k: r[k] for k in ("model", "ep", "threads", "batch", "p50_ms", "p90_ms", "p99_ms")} for r in doc["results"]
        ]
    bench: BenchMetrics | None = latest_metrics(doc, "bench")
    name = doc["recipe"]["name"]
    return [
        {
            "model": name,
            "ep": ep,
            "threads": t.threads,
            "batch": int(b),
            "p50_ms": s.p50_ms,
            "p90_ms": s.p90_ms,
            "p99_ms": s.p99_ms,
        }
        for ep, t in (bench.targets if bench else {}).items()
        for b, s in t.batches.items()
    ]


def accuracy_points(doc: dict) -> list[dict]:
    """{name, accuracy, p50_ms, size_bytes, chosen} per model variant whose accuracy and latency were both measured."""
    if doc["schema"] == "mmedge.bench-results":
        first = {}
        for r in doc["results"]:  # the first EP/threads/batch combination each model ran
            first.setdefault(r["model"], r["p50_ms"])
        return [
            {"name": n, "accuracy": m["accuracy"], "p50_ms": first[n], "size_bytes": m["size_bytes"], "chosen": False}
            for n, m in doc["models"].items()
            if m.get("accuracy") is not None and n in first
        ]
    auto: AutoQuantMetrics | None = latest_metrics(doc, "quantize.auto")
    return [
        {
            "name": c.name,
            "accuracy": c.test_accuracy,  # scored after the choice, for the report
            "p50_ms": c.p50_ms,
            "size_bytes": c.size_bytes,
            "chosen": c.name == auto.chosen,
        }
        for c in (auto.candidates if auto else [])
        if c.p50_ms is not None
    ]


def sensitivity_rows(doc: dict) -> list[dict]:
    if doc["schema"] != "mmedge.results":
        return []
    auto: AutoQuantMetrics | None = latest_metrics(doc, "quantize.auto")
    return [b.model_dump() for b in auto.sensitivity.branches] if auto else []


def pareto_front(points: list[dict]) -> set[str]:
    """Names of the points no other point beats on both latency (lower) and accuracy (higher)."""
    front = set()
    for p in points:
        dominated = any(
            q["p50_ms"] <= p["p50_ms"]
            and q["accuracy"] >= p["accuracy"]
            and (q["p50_ms"] < p["p50_ms"] or q["accuracy"] > p["accuracy"])
            for q in points
        )
        if not dominated:
            front.add(p["name"])
    return front
