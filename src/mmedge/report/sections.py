"""The report of a pipeline run, written from the typed metrics of its steps (no torch).

One renderer serves both reports a run leaves: the run's own (`.mmedge/runs/NAME/report.md`, or
`mmedge report results.json`) and the bundle's (`BUNDLE/report.md`). Each section is written from the metrics
model of the step that measured it; a bundle report adds only what the bundle alone knows (its size, the parts of
a split model). A renamed metrics field fails here, when the metrics are read back, not silently in a report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mmedge.report.markdown import (
    describe_split,
    embeddings_section,
    mobile_section,
    pct,
    ratio_interval,
    robustness_section,
    split_section,
    table,
)
from mmedge.report.views import accuracy_points, pareto_front, robustness, typed_steps
from mmedge.results import (
    AutoQuantMetrics,
    BenchMetrics,
    DistillMetrics,
    DynamicQuantMetrics,
    ExportMetrics,
    LoadOnnxMetrics,
    MagnitudePruneMetrics,
    MobileMetrics,
    ModelMetrics,
    OptimizeMetrics,
    RewriteMetrics,
    StepMetrics,
    StructuredPruneMetrics,
    TrainMetrics,
    ValidateMetrics,
)

BRANCHES = ("image", "text", "fusion", "head", "other")
REWRITES = ("optimize", "quantize.dynamic", "quantize.static", "quantize.fp16")
COMPRESSING = ("prune.", "distill", "quantize.")  # steps whose output is allowed to answer differently


@dataclass(frozen=True)
class BundleFacts:
    """What only a bundle knows: its model file's size and the parts of a split model."""

    size_bytes: int
    zip_bytes: int | None = None
    split: dict | None = None


@dataclass
class Page:
    """A run's steps with their typed metrics, the plots drawn for them, and the bundle when there is one."""

    doc: dict
    plots: dict[str, str] = field(default_factory=dict)
    plots_dir: str = "plots"
    bundle: BundleFacts | None = None
    steps: list[tuple[dict, StepMetrics]] = field(init=False)

    def __post_init__(self) -> None:
        self.steps = typed_steps(self.doc)

    def latest(self, kind: str):
        """The typed metrics of the latest ``kind`` step, or None."""
        return next((m for s, m in reversed(self.steps) if s["type"] == kind), None)

    def source(self) -> tuple[str, ModelMetrics | LoadOnnxMetrics] | None:
        """The step that made the model the chain started from, with its metrics."""
        return next(
            ((s["type"], m) for s, m in self.steps if isinstance(m, ModelMetrics | LoadOnnxMetrics)),
            None,
        )

    def figure(self, kind: str, caption: str) -> list[str]:
        return ["", f"![{caption}]({self.plots_dir}/{self.plots[kind]})"] if kind in self.plots else []


def render_run(
    doc: dict,
    plots: dict[str, str] | None = None,
    *,
    bundle: BundleFacts | None = None,
    note: str | None = None,
    plots_dir: str = "plots",
) -> str:
    """report.md of a run (``bundle=None``) or of the bundle it shipped, from the run's results document."""
    page = Page(doc, plots or {}, plots_dir, bundle)
    out = header(page)
    if note:
        out += ["", note]
    for section in SECTIONS:
        out += section(page)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- sections, in report order


def header(page: Page) -> list[str]:
    doc, bundle = page.doc, page.bundle
    name = doc["recipe"]["name"]
    out = [f"# {name}" if bundle else f"# {name} — pipeline results", ""]
    if bundle is not None:
        zipped = f", {bundle.zip_bytes / 1e6:.3f} MB zipped" if bundle.zip_bytes else ""
        out.append(f"Model size: **{bundle.size_bytes / 1e6:.3f} MB** (`model.onnx`, weights inside{zipped}).")
    source = page.source()
    if source is not None:
        kind, m = source
        params = f", {m.parameters:,} parameters" if getattr(m, "parameters", None) else ""
        what = "ONNX source model" if kind == "load.onnx" else "PyTorch"
        acc = f"test accuracy {pct(m.test.accuracy)}" if m.test is not None else "no test split scored"
        inputs = getattr(m, "chain_inputs", None)
        if inputs is not None:
            acc = (
                f"no mmedge metadata, so no data to score: every step is judged by fidelity to it on {inputs.samples} "
                + (f"samples of **{inputs.source}**" if inputs.kind == "synthetic" else f"inputs from {inputs.source}")
            )
        out.append(f"{what} reference (step `{kind}`): {acc}{params}.")
    sparse: MagnitudePruneMetrics | None = page.latest("prune.magnitude")
    if sparse is not None:
        out.append(
            f"Unstructured sparsity: {pct(sparse.sparsity_reached)} of the pruned weights are zero "
            f"({pct(sparse.model_sparsity)} of all); {sparse.note}."
        )
    return out


def data_section(page: Page) -> list[str]:
    """How the data was split, what was left out, and how training stopped."""
    source = page.source()
    lines = []
    if source is not None and isinstance(source[1], ModelMetrics):
        m = source[1]
        if m.data_split:
            lines.append(describe_split(m.data_split))
        if m.skipped_rows is not None and m.skipped_rows.count:
            lines.append(f"{m.skipped_rows.count:,} data rows were skipped (`--skip-bad-rows`).")
        f = m.image_format
        if f is not None:
            colour = "grayscale" if f.channels == 1 else f"{f.channels}-channel colour"
            lines.append(
                f"Image input: {f.height}×{f.width} {colour}, {f.foreground} (training pictures: {f.data_images}); "
                + ", ".join(f"{k} from the {v}" for k, v in f.source.items())
                + "."
            )
            lines += [f"**Note:** {n}." for n in f.notes]
    for s, m in page.steps:
        if isinstance(m, TrainMetrics | DistillMetrics):
            how = {
                "epochs": "ran all its epochs",
                "early_stopping": "stopped early (validation accuracy stopped improving)",
                "time_cap": "**stopped on the recipe's wall-clock cap (`max_minutes`)**",
            }[m.stopped]
            lines.append(
                f"{s['type']}: {m.epochs_run} epochs in {m.train_seconds:.0f} s, {how}; best validation accuracy "
                f"{pct(m.best_val_accuracy)}."
            )
    return ["", "## Data and training", "", *lines] if lines else []


def accuracy_section(page: Page) -> list[str]:
    v: ValidateMetrics | None = page.latest("validate")
    if v is None or v.test is None:
        return []
    fams = list(v.test.per_family)
    rows = [
        [label, pct(score.accuracy), *[pct(score.per_family.get(f)) for f in fams]]
        for score, label in (
            (v.test, "full input"),
            (v.image_blanked, "image blanked"),
            (v.text_emptied, "text emptied"),
        )
        if score is not None
    ]
    out = [
        "",
        f"## Accuracy (ONNX Runtime, {(v.providers or ['CPUExecutionProvider'])[0]})",
        "",
        f"Test split: {v.samples} questions on held-out images; scored once, for this report.",
        "",
        table(["input", "accuracy", *fams], rows),
    ]
    if v.image_blanked is not None or v.text_emptied is not None:
        out += [
            "",
            "Blanking one modality must cost a lot: it shows the model really uses both the image and the text.",
        ]
    if v.accuracy_drop_points is not None:
        gate = (
            f", {v.gate.accuracy_drop_points:.2f} on validation (what the budget decided on)."
            if v.gate is not None
            else "."
        )
        out.append(
            f"\nAccuracy drop against the model the pipeline started from: {v.accuracy_drop_points:.2f} points on "
            f"test (reported){gate}"
        )
    if v.within_budget is False:
        out.append("\n**Over the accuracy budget**: kept because the run was told `--allow-over-budget`.")
    return out


def parity_section(page: Page) -> list[str]:
    """Export parity (the graph against the PyTorch model it came from), kept apart from the shipped model's
    agreement with the model the chain started from, which compression is allowed to change."""
    v: ValidateMetrics | None = page.latest("validate")
    export: ExportMetrics | None = page.latest("export")
    out = []
    if export is not None:
        out.append(
            f"Export: the ONNX graph against the PyTorch model it was exported from, at {len(export.checks)} "
            f"batch-size × text-length combinations (opset {export.opset}): max abs diff {export.max_abs_diff:.2e} "
            "over every output."
        )
    if v is not None and v.parity is not None:
        p, source = v.parity, page.source()
        changed = [s["type"] for s, _ in page.steps if s["type"].startswith(COMPRESSING)]
        figures = (
            f"over {p.samples} test questions: the same answer in {pct(p.argmax_agreement)}, max abs logit diff "
            f"{p.max_abs_diff:.2e}, mean abs diff {p.mean_abs_diff:.2e}"
        )
        if changed:
            out.append(
                f"Agreement of the shipped model with the model the chain started from (step `{source[0]}`), "
                f"{figures}. It was compressed on the way ({', '.join(dict.fromkeys(changed))}), so its logits are "
                "not meant to match; the export line above is the parity check."
            )
        else:
            out.append(f"Parity of the shipped model with the model it was exported from, {figures}.")
    out += source_fidelity_lines(page)
    return ["", "## Fidelity", "", *out] if out else []


def source_fidelity_lines(page: Page) -> list[str]:
    """A chain from a foreign ONNX model: the shipped model's outputs against the source model's, per output."""
    f = next((m.fidelity for _, m in reversed(page.steps) if getattr(m, "fidelity", None) is not None), None)
    if f is None:
        return []
    rows = [
        [
            o.name,
            "×".join(map(str, o.shape)),
            f"{o.cosine:.5f}",
            f"{o.min_cosine:.5f}",
            f"{o.max_abs_diff:.3g}",
            f"{o.mean_abs_diff:.3g}",
            pct(o.argmax_agreement) if o.argmax_agreement is not None else "–",
        ]
        for o in f.outputs
    ]
    what = (
        f"samples of **{f.inputs_source}**: they show the compression kept the computation, not how the "
        "model does on real data; pass `--inputs FILE.npz` to judge it on real inputs"
        if f.inputs == "synthetic"
        else f"of the user's inputs ({f.inputs_source})"
    )
    return [
        f"Fidelity of the shipped model to the source model (step `{f.against}`) on {f.samples} {what}:",
        "",
        table(["output", "shape", "cosine", "worst cosine", "max abs diff", "mean abs diff", "same argmax"], rows),
    ]


def missing_modalities(page: Page) -> list[str]:
    rows = robustness([(s["type"], m) for s, m in page.steps])
    return robustness_section(rows) if len(rows) > 1 else []


def compression_section(page: Page) -> list[str]:
    """Pruning, distillation, every graph rewrite and the quantization search, with the per-branch view."""
    out: list[str] = []
    p: StructuredPruneMetrics | None = page.latest("prune.structured")
    if p is not None:
        out += [
            "",
            f"Structured pruning ({p.importance} importance; ratio {p.ratio:g}, per branch "
            + ", ".join(f"{b} {r:g}" for b, r in p.branch_ratios.items())
            + f"): {p.parameters_before:,} → {p.parameters_after:,} parameters, {p.macs_before:,} → "
            f"{p.macs_after:,} MACs; test accuracy right after: {pct(p.test.accuracy if p.test else None)}.",
        ]
        if p.dropped_blocks:
            by_similarity = any("similarity_distance" in d for v in p.dropped_blocks.values() for d in v)
            out.append(
                "Depth pruning removed "
                + ", ".join(f"{len(v)} {b} block(s)" for b, v in p.dropped_blocks.items())
                + " first ("
                + (
                    "those whose absence changed least how the branch's encodings of the validation inputs relate "
                    "to each other)."
                    if by_similarity
                    else "those whose absence cost the least validation accuracy)."
                )
            )
        if p.vocabulary:
            v = p.vocabulary
            out.append(
                f"Vocabulary pruning kept {v['pieces_after']:,} of {v['pieces_before']:,} word pieces (the "
                f"{v['keep_first']:,} most frequent, every one-character piece and those of the training and "
                "validation questions); rarer words are spelled from smaller pieces."
            )
    d: DistillMetrics | None = page.latest("distill")
    if d is not None:
        out.append(
            f"\nDistillation from the {pct(d.teacher_test_accuracy)} teacher: the {d.parameters:,}-parameter student "
            f"reached {pct(d.test.accuracy if d.test else None)} in {d.epochs_run} epochs."
        )
    rewrites = [(s["type"], m) for s, m in page.steps if s["type"] in REWRITES]
    if rewrites:
        out += [
            "",
            table(
                ["rewrite", "MB", "val accuracy", "drop vs input (points)", "same answers", "note"],
                [
                    [
                        kind,
                        f"{m.input_size_bytes / 1e6:.3f} → {m.size_bytes / 1e6:.3f}",
                        pct(m.gate.accuracy) if m.gate else "–",
                        f"{m.gate.accuracy_drop_points:.2f}" if m.gate else "–",
                        pct(m.gate.agreement) if m.gate else "–",
                        rewrite_note(m),
                    ]
                    for kind, m in rewrites
                ],
            ),
        ]
    q: AutoQuantMetrics | None = page.latest("quantize.auto")
    if q is not None:
        out += quantization_search(q, page)
    out += branch_table(p, q)
    points = accuracy_points(page.doc)
    if points:
        front = pareto_front(points)
        rows = [
            [
                pt["name"] + (" (shipped)" if pt["chosen"] else ""),
                pct(pt["accuracy"]),
                f"{pt['p50_ms']:.3f}",
                f"{pt['size_bytes'] / 1e6:.3f}",
                "yes" if pt["name"] in front else "",
            ]
            for pt in points
        ]
        out += [
            "",
            "Accuracy against latency of the candidates (test accuracy, scored after the choice):",
            "",
            table(["variant", "test accuracy", "p50 ms", "size MB", "Pareto front"], rows),
        ]
    out += page.figure("pareto", "accuracy vs latency, size as marker")
    out += page.figure("sensitivity", "quantization sensitivity per branch")
    return ["", "## Compression", *out] if out else []


def rewrite_note(m: RewriteMetrics) -> str:
    notes = []
    if isinstance(m, OptimizeMetrics):
        loads = "every EP" if m.portable else ", ".join(m.loads_on)
        notes.append(f"level {m.level}, {m.nodes_before} → {m.nodes_after} nodes; loads on {loads}")
    if isinstance(m, DynamicQuantMetrics) and m.nothing_quantized:
        notes.append(m.nothing_quantized)
    if m.fidelity is not None:  # a foreign model: gated on fidelity to the source model, not on accuracy
        f = m.fidelity
        agreement = f", same argmax {pct(f.argmax_agreement)}" if f.argmax_agreement is not None else ""
        notes.append(f"fidelity on {f.inputs} inputs: cosine ≥ {f.min_cosine:.5f}{agreement}")
    return "; ".join(notes)


def quantization_search(q: AutoQuantMetrics, page: Page) -> list[str]:
    rows = [
        [
            f"**{c.name}**" if c.name == q.chosen else c.name,
            pct(c.val_accuracy),
            f"{c.drop_points:.2f}",
            pct(c.agreement),
            f"{c.size_bytes / 1e6:.3f}",
            "–" if c.p50_ms is None else f"{c.p50_ms:.3f}",
            ratio_interval(c.latency_ratio),
            "yes" if c.within_budget else "no",
            pct(c.test_accuracy),
        ]
        for c in q.candidates
    ]
    out = [
        "",
        f"Quantization search (`quantize.auto`, decided on the {q.selection_split} split: budget "
        f"{q.budget_points:g} accuracy point{'' if q.budget_points == 1 else 's'} below the "
        f"{pct(q.reference_val_accuracy)} reference; p50 at batch {q.batch_size}, {q.threads} thread(s), '{q.ep}', "
        "timed in alternating rounds; latency ratio to the fastest as p10–p50–p90 of the rounds); chosen: "
        f"**{q.chosen}** (objective {q.choice.objective}: {q.choice.rule}). Test accuracy was scored after the "
        "choice, for this report only.",
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
    sens = q.sensitivity
    if sens.branches:
        out += [
            "",
            f"Sensitivity (accuracy drop on the {sens.split} split when only this part is quantized):",
            "",
            table(
                ["branch", "scheme", "nodes", "drop (points)"],
                [[s.branch, s.scheme, str(s.nodes), f"{s.drop_points:.2f}"] for s in sens.branches],
            ),
        ]
    if sens.nodes:
        worst = sorted(sens.nodes, key=lambda s: -s.drop_points)[:8]
        out += [
            "",
            "Most sensitive nodes:",
            "",
            table(
                ["node", "op", "branch", "scheme", "drop (points)"],
                [[s.node, s.op, s.branch, s.scheme, f"{s.drop_points:.2f}"] for s in worst],
            ),
        ]
    return out


def branch_table(p: StructuredPruneMetrics | None, q: AutoQuantMetrics | None) -> list[str]:
    params = p.per_branch if p is not None else {}
    sizes = q.branch_sizes if q is not None else {}
    share = q.latency_share if q is not None else {}
    rows = [
        [
            b,
            f"{params[b]['before']:,} → {params[b]['after']:,}" if b in params else "–",
            f"{sizes[b] / 1e3:.1f}" if b in sizes else "–",
            pct(share[b]) if b in share else "–",
        ]
        for b in BRANCHES
        if b in params or b in sizes or b in share
    ]
    if not rows:
        return []
    return [
        "",
        "Per modality branch (shipped model; latency share from ONNX Runtime's kernel profiler, batch 1):",
        "",
        table(["branch", "parameters (pruned)", "weights kB", "latency share"], rows),
    ]


def latency(page: Page) -> list[str]:
    b: BenchMetrics | None = page.latest("bench")
    if b is None:
        return []
    rows = [
        [
            ep,
            str(t.threads),
            batch,
            *(f"{v:.3f}" for v in (s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms)),
            f"{s.throughput_per_s:.0f}",
            str(s.runs),
        ]
        for ep, t in b.targets.items()
        for batch, s in t.batches.items()
    ]
    out = [
        "",
        "## Latency",
        "",
        f"Inputs: {b.inputs}; session load "
        + ", ".join(f"{t.session_load_ms:.0f} ms on {ep}" for ep, t in b.targets.items())
        + ".",
        "",
        table(["EP", "threads", "batch", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s", "runs"], rows),
    ]
    if b.reference is not None:
        r = b.reference
        ratios = "; ".join(f"batch {batch}: {ratio_interval(list(v))}" for batch, v in r.latency_ratio.items())
        out.append(
            f"\nAgainst the fp32 ONNX of the first model ({r.file}, {r.size_bytes / 1e6:.2f} MB): size "
            f"{r.size_ratio:.3f}×; latency ratio per round (p10–p50–p90; {r.ep}, {r.threads} thread(s), both timed in "
            f"alternating rounds) {ratios}."
        )
    out += [f"\nNot measured on {ep}: {reason}." for ep, reason in b.unavailable.items()]
    if not b.within_budget:
        out.append("\n**Over the latency budget.**")
    return out + page.figure("latency", "latency per EP and batch size")


def mobile(page: Page) -> list[str]:
    m: MobileMetrics | None = page.latest("mobile")
    return mobile_section(m.model_dump(mode="json")) if m is not None else []


def embeddings(page: Page) -> list[str]:
    v: ValidateMetrics | None = page.latest("validate")
    return embeddings_section(v.embeddings) if v is not None and v.embeddings else []


def parts(page: Page) -> list[str]:
    return split_section(page.bundle.split) if page.bundle is not None and page.bundle.split else []


def machine(page: Page) -> list[str]:
    m, doc = page.doc.get("machine", {}), page.doc
    out = [
        "",
        f"Measured with mmedge {doc['mmedge_version']} on {m.get('cpu_summary') or m.get('cpu')} "
        f"({m.get('logical_cores')} logical cores), {m.get('os')}, Python {m.get('python')}, onnxruntime "
        f"{m.get('onnxruntime')}.",
    ]
    git = (doc.get("provenance") or {}).get("git") or {}
    if git.get("commit"):
        out.append(f"Code: commit {git['commit'][:12]}{' (uncommitted changes)' if git.get('dirty') else ''}.")
    return out


def steps_table(page: Page) -> list[str]:
    return [
        "",
        "## Pipeline",
        "",
        table(
            ["#", "step", "seconds", "cached"],
            [[str(s["index"]), s["type"], f"{s['seconds']:.1f}", str(s["cached"])] for s, _ in page.steps],
        ),
    ]


SECTIONS: tuple[Callable[[Page], list[str]], ...] = (
    data_section,
    accuracy_section,
    parity_section,
    missing_modalities,
    compression_section,
    latency,
    mobile,
    embeddings,
    parts,
    machine,
    steps_table,
)
