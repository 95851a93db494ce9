"""Markdown reports from measured figures (no torch). Nothing here measures; it only renders."""

from __future__ import annotations


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.2f}%"


def _ratio(r: list[float] | None) -> str:
    """A per-round latency ratio interval, p10–p50–p90."""
    return "–" if not r else f"{r[0]:.2f}–{r[1]:.2f}–{r[2]:.2f}"


def describe_split(split: dict) -> str:
    """One sentence: how the data set was split, and what each split holds."""
    parts = ", ".join(f"{n} {split['images'][n]:,} images ({split['rows'][n]:,} questions)" for n in split["images"])
    return f"Data split {split['rule']}: {parts}."


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


def compression_section(c: dict) -> list[str]:
    """Pruning, distillation and the quantization search, with the per-branch view."""
    out = ["", "## Compression"]
    branches = ("image", "text", "fusion", "head", "other")
    p = c.get("structured_pruning")
    if p:
        out += [
            "",
            f"Structured pruning ({p['importance']} importance; ratio {p['ratio']:g}, per branch "
            + ", ".join(f"{b} {r:g}" for b, r in p["branch_ratios"].items())
            + f"): {p['parameters_before']:,} → {p['parameters_after']:,} parameters, "
            f"{p['macs_before']:,} → {p['macs_after']:,} MACs; test accuracy right after: {pct(p['test_accuracy'])}.",
        ]
        if p.get("dropped_blocks"):
            out.append(
                "Depth pruning removed "
                + ", ".join(f"{len(v)} {b} block(s)" for b, v in p["dropped_blocks"].items())
                + " first (those whose absence cost the least validation accuracy)."
            )
    d = c.get("distillation")
    if d:
        out.append(
            f"\nDistillation from the {pct(d['teacher_test_accuracy'])} teacher: the student reached "
            f"{pct(d['student_test_accuracy'])} in {d['epochs_run']} epochs."
        )
    q = c.get("quantization")
    if q:
        rows = [
            [
                f"**{r['name']}**" if r["name"] == q["chosen"] else r["name"],
                pct(r["val_accuracy"]),
                f"{r['drop_points']:.2f}",
                pct(r.get("agreement")),
                f"{r['size_bytes'] / 1e6:.3f}",
                "–" if r.get("p50_ms") is None else f"{r['p50_ms']:.3f}",
                _ratio(r.get("latency_ratio")),
                "yes" if r["within_budget"] else "no",
                pct(r["test_accuracy"]),
            ]
            for r in q["candidates"]
        ]
        out += [
            "",
            f"Quantization search (`quantize.auto`, decided on the {q['selection_split']} split: budget "
            f"{q['budget_points']:g} accuracy point{'' if q['budget_points'] == 1 else 's'} below the "
            f"{pct(q['reference_val_accuracy'])} reference; p50 at batch {q['batch_size']}, {q['threads']} "
            f"thread(s), '{q['ep']}', timed in alternating rounds; latency ratio to the fastest as p10–p50–p90 of "
            f"the rounds); chosen: **{q['chosen']}** (objective {q['choice']['objective']}: {q['choice']['rule']}). "
            "Test accuracy was scored after the choice, for this report only.",
            "",
            table(
                [
                    "candidate",
                    "val accuracy",
                    "drop (points)",
                    "same answers",
                    "MB",
                    "p50 ms",
                    "ratio to fastest",
                    "within budget",
                    "test accuracy",
                ],
                rows,
            ),
        ]
        sens = q.get("sensitivity") or {}
        if sens.get("branches"):
            out += [
                "",
                f"Sensitivity (accuracy drop on the {sens['split']} split when only this part is quantized):",
                "",
                table(
                    ["branch", "scheme", "nodes", "drop (points)"],
                    [[s["branch"], s["scheme"], str(s["nodes"]), f"{s['drop_points']:.2f}"] for s in sens["branches"]],
                ),
            ]
            worst = sorted(sens["nodes"], key=lambda s: -s["drop_points"])[:8]
            out += [
                "",
                "Most sensitive nodes:",
                "",
                table(
                    ["node", "op", "branch", "scheme", "drop (points)"],
                    [[s["node"], s["op"], s["branch"], s["scheme"], f"{s['drop_points']:.2f}"] for s in worst],
                ),
            ]
    params = (p or {}).get("per_branch", {})
    sizes = (q or {}).get("branch_sizes") or {}
    share = (q or {}).get("latency_share") or {}
    if params or sizes or share:
        rows = []
        for b in branches:
            if b in params or b in sizes or b in share:
                before_after = params.get(b)
                rows.append(
                    [
                        b,
                        f"{before_after['before']:,} → {before_after['after']:,}" if before_after else "–",
                        f"{sizes[b] / 1e3:.1f}" if b in sizes else "–",
                        pct(share.get(b)) if b in share else "–",
                    ]
                )
        out += [
            "",
            "Per modality branch (shipped model; latency share from ONNX Runtime's kernel profiler, batch 1):",
            "",
            table(["branch", "parameters (pruned)", "weights kB", "latency share"], rows),
        ]
    return out


def mobile_section(mob: dict) -> list[str]:
    """ORT-format files, their parity, and the NNAPI/CoreML usability analysis of the dynamic and fixed model."""
    dims = ", ".join(f"{k}={v}" for k, v in mob["fixed_dims"].items())
    out = [
        "",
        "## Mobile (ONNX Runtime Mobile)",
        "",
        f"`model.ort` (dynamic shapes) and `model.fixed.ort` ({dims}) are converted with the Runtime optimization "
        f"style for {mob['target_platform']}; load them with the session config "
        + ", ".join(f"`{k}={v}`" for k, v in mob["session_config"].items())
        + ". `required_operators.config` lists the operators for a reduced-operator build.",
        "",
        table(
            ["file", "bytes", "max abs diff vs .onnx", "argmax agreement", "inputs"],
            [
                [
                    f"`{name}`",
                    f"{mob['files'][name]['bytes']:,}",
                    f"{p['max_abs_diff']:.2e}",
                    pct(p["argmax_agreement"]),
                    str(p["samples"]),
                ]
                for name, p in mob["parity"].items()
            ],
        ),
        "",
        "Usability for the mobile EPs (onnxruntime's analysis after basic optimizations):",
        "",
    ]
    rows = []
    for variant, a in mob["analysis"].items():
        for r in a["eps"].values():
            rows.append(
                [
                    r["ep"],
                    variant,
                    f"{r['supported_nodes']}/{r['nodes']}",
                    str(r["partitions"]),
                    ", ".join(r["unsupported_ops"]) or "none",
                    str(r["nodes_unsupported_by_dynamic_shape"]),
                    r["verdict"],
                ]
            )
    out.append(
        table(
            ["EP", "shapes", "nodes supported", "partitions", "unsupported ops", "need fixed shapes", "verdict"], rows
        )
    )
    out += ["", *[f"- {v}" for v in mob["verdicts"]["fixed"].values()]]
    return out


def embeddings_section(emb: dict) -> list[str]:
    """Dual encoders: how far compression moved the embeddings from the fp32 export."""
    out = [
        "",
        f"## Embedding fidelity (against the {emb['against']} model)",
        "",
        "| embedding | items | mean cosine | min cosine | nearest-neighbour agreement |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, e in emb.items():
        if isinstance(e, dict):
            nn = pct(e["nn_agreement"]) if e.get("nn_agreement") is not None else "—"
            out.append(f"| {name} | {e['items']} | {e['mean_cosine']:.4f} | {e['min_cosine']:.4f} | {nn} |")
    return out


def split_section(split: dict) -> list[str]:
    """The dual encoder's parts: what each takes and gives, and that together they reproduce the whole model."""
    out = ["", "## Parts (dual encoder split)", "", "| file | inputs | outputs | size |", "|---|---|---|---|"]
    for name, part in split["files"].items():
        out.append(
            f"| `{name}` | {', '.join(part['inputs'])} | {', '.join(part['outputs'])} | {part['bytes'] / 1e6:.3f} MB |"
        )
    out.append("")
    out.append(f"Run one after another, the parts give the whole model's logits within {split['max_abs_diff']:.1e}.")
    if "label_embeddings" in split:
        le = split["label_embeddings"]
        out.append(
            f"`{le['file']}` holds the {le['shape'][0]} label embeddings ({le['shape'][1]} wide) precomputed from the "
            f"prompts: logits = {le['logit_scale']:.2f} × image_embeds · label_embeddings — the device runs only the "
            "vision encoder."
        )
    return out


def robustness(steps: list[tuple[str, dict]]) -> list[dict]:
    """Test accuracy of every artifact the run made, complete and with one modality missing (image blank, text
    empty), in pipeline order — whether compression made the model more fragile when a sensor or prompt drops."""
    rows = []
    for step_type, m in steps:
        if all(isinstance(m.get(k), dict) for k in ("test", "image_blanked", "text_emptied")):
            rows.append(
                {
                    "step": step_type,
                    "full": m["test"]["accuracy"],
                    "image_missing": m["image_blanked"]["accuracy"],
                    "text_missing": m["text_emptied"]["accuracy"],
                }
            )
    return rows


def robustness_section(rows: list[dict]) -> list[str]:
    first = rows[0]
    cells = [
        [
            r["step"],
            pct(r["full"]),
            f"{pct(r['image_missing'])} ({(r['image_missing'] - first['image_missing']) * 100:+.2f})",
            f"{pct(r['text_missing'])} ({(r['text_missing'] - first['text_missing']) * 100:+.2f})",
        ]
        for r in rows
    ]
    return [
        "",
        "## Missing modalities",
        "",
        "Test accuracy of each artifact of the run with both inputs, with the image missing (a blank frame) and "
        "with the text missing (an empty question); in brackets the change in points against the first model.",
        "",
        table(["artifact (step)", "both", "image missing", "text missing"], cells),
    ]


def render_bundle_report(name: str, metrics: dict, ctx=None, plots: dict[str, str] | None = None) -> str:
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
        ref = m["reference"]
        params = f", {ref['parameters']:,} parameters" if ref.get("parameters") else ""
        source = "PyTorch" if ref["framework"] == "pytorch" else "ONNX source model"
        out.append(f"{source} reference: test accuracy {pct(ref['test_accuracy'])}{params}.")
    if "accuracy" in m:
        out += [
            "",
            "## Accuracy (ONNX Runtime, CPU)",
            "",
            m["accuracy"]["split"] + ".",
            *([describe_split(m["data_split"])] if m.get("data_split") else []),
            "",
            accuracy_section(m["accuracy"]),
            "",
            "Blanking one modality must cost a lot: it shows the model really uses both the image and the text.",
        ]
        if m.get("accuracy_drop_points") is not None:
            out.append(
                f"\nAccuracy drop against the model the pipeline started from: {m['accuracy_drop_points']:.2f} "
                "points on test (reported)"
                + (
                    f", {m['gate']['accuracy_drop_points']:.2f} on validation (what the budget decided on)."
                    if m.get("gate")
                    else "."
                )
            )
    if m.get("parity"):
        p = m["parity"]
        out += [
            "",
            "## Parity with the PyTorch reference",
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
    plots = plots or {}
    if m.get("robustness"):
        out += robustness_section(m["robustness"])
    if m.get("compression"):
        out += compression_section(m["compression"])
        for kind, caption in (
            ("pareto", "accuracy vs latency"),
            ("sensitivity", "quantization sensitivity per branch"),
        ):
            if kind in plots:
                out += ["", f"![{caption}](plots/{plots[kind]})"]
    if "latency" in m:
        out += ["", "## Latency", "", latency_section(m["latency"])]
        for ep, reason in m.get("latency_unavailable", {}).items():
            out.append(f"\nNot measured on {ep}: {reason}.")
        if "latency" in plots:
            out += ["", f"![latency per EP and batch size](plots/{plots['latency']})"]
    if m.get("mobile"):
        out += mobile_section(m["mobile"])
    if m.get("embeddings"):
        out += embeddings_section(m["embeddings"])
    if m.get("split"):
        out += split_section(m["split"])
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


def latency_cells(r: dict) -> list[str]:
    """EP, threads, batch and p50/p90/p99 of one latency row."""
    return [r["ep"], str(r["threads"]), str(r["batch"]), *(f"{r[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms"))]


def bench_tables(doc: dict) -> str:
    """The `mmedge bench` results as Markdown: one latency row per model × EP × threads × batch, then what could
    not run and where the nodes ran."""
    rows = [
        [
            r["model"],
            *latency_cells(r),
            f"{r['p50_vs_first_model']:.2f}x",
            f"{r['throughput_per_s']:.0f}",
            f"{r['session_load_ms']:.1f}",
            f"{r['session_rss_mb'] + r['warmup_rss_growth_mb']:.1f}",
            str(r["runs"]),
        ]
        for r in doc["results"]
    ]
    header = ["model", "EP", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "p50 vs first model"]
    header += ["samples/s", "load ms", "memory MB", "runs"]
    out = [table(header, rows)]
    s = doc["settings"]
    spin = (
        ""
        if s.get("intra_op_spinning", True)
        else " Thread pools do not spin between calls (spinning pools of one variant slow the next)."
    )
    out.append(
        f"\nInterleaved: {s['rounds']} rounds x {s['calls_per_round']} calls per variant and batch size, after "
        f"{s['warmup']} warm-up calls.{spin} Memory: RSS growth from loading the session and its first runs. "
        f"Process peak RSS {doc['memory']['process_peak_rss_mb']:.0f} MB."
    )
    models = doc["models"]
    if any("accuracy" in m for m in models.values()):
        out += [
            "",
            table(
                ["model", "test accuracy", "size MB"],
                [[n, pct(m.get("accuracy")), f"{m['size_bytes'] / 1e6:.3f}"] for n, m in models.items()],
            ),
        ]
    if doc["unavailable"]:
        grouped: dict[tuple[str, str], list[str]] = {}
        for u in doc["unavailable"]:
            grouped.setdefault((u["ep"], u["reason"]), []).append(u["model"])
        out += ["", "Not measured:", ""]
        out += [f"- {ep} ({', '.join(m)}): {reason}" for (ep, reason), m in grouped.items()]
    placed = [
        f"- {model} on {ep}: {p['nodes']} nodes — "
        + ", ".join(f"{prov} {n}" for prov, n in p["per_provider"].items())
        + (f"; not on the EP: {', '.join(p['ops_not_on_ep'])}" if p["ops_not_on_ep"] else "")
        for model, per_ep in doc["placement"].items()
        for ep, p in per_ep.items()
    ]
    if placed:
        out += ["", "Where the nodes ran (onnxruntime profiler):", "", *placed]
    return "\n".join(out)
