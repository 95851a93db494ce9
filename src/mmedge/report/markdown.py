"""Markdown pieces shared by mmedge's reports (no torch). Nothing here measures; it only renders."""

from __future__ import annotations


def pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.2f}%"


def ratio_interval(r: list[float] | None) -> str:
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


_EP_NAMES = {"nnapi": "NNAPI", "coreml-mlprogram": "CoreML ML Program", "coreml-neuralnetwork": "CoreML NeuralNetwork"}


def split_section(split: dict) -> list[str]:
    """The dual encoder's parts: what each takes and gives, and that together they reproduce the whole model."""
    judged = all("suited_ep" in part for part in split["files"].values())
    head = ["file", "inputs", "outputs", "size"] + (["NNAPI", "CoreML ML Program", "suits"] if judged else [])
    out = ["", "## Parts (dual encoder split)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, part in split["files"].items():
        cells = [f"`{name}`", ", ".join(part["inputs"]), ", ".join(part["outputs"]), f"{part['bytes'] / 1e6:.3f} MB"]
        if judged:
            eps = part["mobile_eps"]
            cells += [_ep_cell(eps["nnapi"]), _ep_cell(eps["coreml-mlprogram"]), part["suited_ep"]]
        out.append("| " + " | ".join(cells) + " |")
    if judged:
        out += [
            "",
            "Each part at fixed shapes (batch 1, the tokenizer's length), as onnxruntime's mobile usability checker "
            "judges it: nodes the EP takes and in how many partitions; `suits` is the EP the manifest names for it.",
        ]
    if any(f != "vision.onnx" for f in split.get("vision_for", {}).values()):
        uses = ", ".join(f"{_EP_NAMES.get(ep, ep)}: `{f}`" for ep, f in split["vision_for"].items())
        out += [
            "",
            f"Vision file per mobile EP ({uses}): the float vision part, cut from the model before quantization, "
            "ships for the EPs that cannot take the quantized one.",
        ]
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


def _ep_cell(r: dict) -> str:
    return f"{r['supported_nodes']}/{r['nodes']} in {r['partitions']} ({r['verdict']})"


def robustness_section(rows: list[dict]) -> list[str]:
    first = rows[0]
    keys = ["image_missing", "text_missing"] + (["paraphrase"] if all("paraphrase" in r for r in rows) else [])
    cells = [
        [r["step"], pct(r["full"]), *(f"{pct(r[k])} ({(r[k] - first[k]) * 100:+.2f})" for k in keys)] for r in rows
    ]
    said = (
        ", and on the test pictures asked in wordings training never saw (paraphrased)" if "paraphrase" in keys else ""
    )
    return [
        "",
        "## Missing modalities",
        "",
        "Test accuracy of each artifact of the run with both inputs, with the image missing (a blank frame) and "
        f"with the text missing (an empty question){said}; in brackets the change in points against the first model.",
        "",
        table(
            ["artifact (step)", "both", "image missing", "text missing", "paraphrased"][: 2 + len(keys)],
            cells,
        ),
    ]


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
