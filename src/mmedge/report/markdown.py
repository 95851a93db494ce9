"""Markdown reports from measured figures (no torch). Nothing here measures; it only renders."""

from __future__ import annotations


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.2f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_section(acc: dict) -> str:
    fams = list(acc["test"]["per_family"])
    rows = []
    for key, label in (("test", "full input"), ("image_blanked", "image blanked"), ("text_emptied", "text emptied")):
        if key in acc:
            rows.append([label, pct(acc[key]["accuracy"]), *[pct(acc[key]["per_family"].get(f)) for f in fams]])
    return table(["input", "accuracy", *fams], rows)


def latency_section(latency: dict) -> str:
    rows = []
    for ep, r in latency.items():
        for batch, s in r["batches"].items():
            rows.append(
                [
                    ep,
                    str(r["threads"]),
                    batch,
                    f"{s['p50_ms']:.3f}",
                    f"{s['p90_ms']:.3f}",
                    f"{s['p99_ms']:.3f}",
                    f"{s['mean_ms']:.3f}",
                    f"{s['throughput_per_s']:.0f}",
                    str(s["runs"]),
                ]
            )
    return table(["EP", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s", "runs"], rows)


def render_bundle_report(name: str, metrics: dict, ctx=None) -> str:
    m = metrics
    out = [f"# {name}", ""]
    zipped = f", {m['zip_bytes'] / 1e6:.3f} MB zipped" if m.get("zip_bytes") else ""
    out.append(f"Model size: **{m['size_bytes'] / 1e6:.3f} MB** (`model.onnx`, weights inside{zipped}).")
    if m.get("sparsity"):
        out.append(
            f"Unstructured sparsity: {pct(m['sparsity']['weights'])} of the pruned weights are zero "
            f"({pct(m['sparsity']['model'])} of all); {m['sparsity']['note']}."
        )
    if "reference" in m:
        out.append(
            f"PyTorch reference: test accuracy {pct(m['reference']['test_accuracy'])}, "
            f"{m['reference']['parameters']:,} parameters."
        )
    if "accuracy" in m:
        out += [
            "",
            "## Accuracy (ONNX Runtime, CPU)",
            "",
            m["accuracy"]["split"] + ".",
            "",
            accuracy_section(m["accuracy"]),
            "",
            "Blanking one modality must cost a lot: it shows the model really uses both the image and the text.",
        ]
        if m.get("accuracy_drop_points") is not None:
            out.append(f"\nAccuracy drop against PyTorch: {m['accuracy_drop_points']:.2f} points.")
    if m.get("parity"):
        p = m["parity"]
        out += [
            "",
            "## Parity with PyTorch",
            "",
            f"Over {p['samples']} test questions: max abs diff {p['max_abs_diff']:.2e}, mean abs diff "
            f"{p['mean_abs_diff']:.2e}, argmax agreement {pct(p['argmax_agreement'])}.",
        ]
    if m.get("export"):
        e = m["export"]
        out.append(
            f"Export checked at {e['checks']} batch-size × text-length combinations (opset {e['opset']}, "
            f"max abs diff {e['max_abs_diff']:.2e})."
        )
    if "latency" in m:
        out += ["", "## Latency", "", latency_section(m["latency"])]
    mach = m.get("measured_on", {})
    if mach:
        out += [
            "",
            f"Measured on: {mach.get('cpu')} ({mach.get('logical_cores')} logical cores), {mach.get('os')}, "
            f"Python {mach.get('python')}, onnxruntime {mach.get('onnxruntime')}.",
        ]
    if ctx is not None and ctx.records:
        out += [
            "",
            "## Pipeline",
            "",
            table(
                ["step", "type", "seconds", "cached"],
                [[str(r.index), r.config.type, f"{r.seconds:.1f}", str(r.cached)] for r in ctx.records],
            ),
        ]
    return "\n".join(out) + "\n"
