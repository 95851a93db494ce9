"""Results documents -> report.md, PNG plots (matplotlib) and an optional self-contained report.html.

Two kinds of results document are rendered, both schema-versioned JSON:

- ``mmedge.results`` — one pipeline run (`mmedge run`): every step's metrics;
- ``mmedge.bench-results`` — one `mmedge bench` run: models × EPs × threads × batch sizes.

Both are first reduced to the same views (latency rows, accuracy/latency/size points, per-branch sensitivity),
so the plots and tables are drawn one way. `mmedge report RESULTS.json` re-renders any saved document.
"""

from __future__ import annotations

import base64
import html as htmlmod
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from pydantic import ValidationError

from mmedge.errors import InputPathError, MissingDependencyError, MmedgeError
from mmedge.report.markdown import bench_tables, pct, table
from mmedge.report.sections import render_run
from mmedge.report.views import accuracy_points, latency_rows, pareto_front, sensitivity_rows
from mmedge.results import METRICS, step_metrics

SUPPORTED = {"mmedge.results": 2, "mmedge.bench-results": 1}
PLOTS = {"pareto": "pareto.png", "latency": "latency.png", "sensitivity": "sensitivity.png"}


def load_results(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputPathError(
            f"results file {path} does not exist; pass the results.json written by `mmedge run` or "
            "`mmedge bench --out`."
        )
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MmedgeError(f"{path} is not valid JSON ({exc}); pass a results.json written by mmedge.") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema not in SUPPORTED:
        raise MmedgeError(
            f"{path} is not an mmedge results document (schema {schema!r}); pass the results.json written by "
            "`mmedge run` or `mmedge bench --out`."
        )
    if doc.get("schema_version") != SUPPORTED[schema]:
        raise MmedgeError(
            f"{path} has {schema} schema version {doc.get('schema_version')}, this mmedge reads version "
            f"{SUPPORTED[schema]}; re-run the measurement with this mmedge version."
        )
    if schema == "mmedge.results":
        check_step_metrics(doc, path)
    return doc


def check_step_metrics(doc: dict, source: str | Path) -> None:
    """Every step's metrics read back into its typed model; a file that does not fit is refused in one sentence."""
    for i, step in enumerate(doc.get("steps", []), 1):
        kind = step.get("type")
        if kind not in METRICS:
            raise MmedgeError(f"{source}: step {i} has unknown type {kind!r}; pass a results.json written by mmedge.")
        try:
            step_metrics(kind, step.get("metrics"))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "metrics"
            raise MmedgeError(
                f"{source}: the metrics of step {i} ({kind}) do not fit its schema ({where}: {first['msg']}); "
                "re-run the measurement with this mmedge version."
            ) from None


# ---------------------------------------------------------------- plots


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "drawing the plots needs matplotlib, which is not installed; pip install 'mmedge[report]'."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(points: list[dict], path: Path, title: str) -> None:
    plt = _pyplot()
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    biggest = max(p["size_bytes"] for p in points)
    for p in points:
        on_front = p["name"] in front
        ax.scatter(
            p["p50_ms"],
            p["accuracy"] * 100,
            s=60 + 900 * p["size_bytes"] / biggest,
            alpha=0.75,
            color="tab:blue" if on_front else "tab:gray",
            edgecolors="black" if p["chosen"] else "none",
            linewidths=2,
        )
        label = f"{p['name']}\n{p['size_bytes'] / 1e6:.3f} MB" + (" (shipped)" if p["chosen"] else "")
        ax.annotate(label, (p["p50_ms"], p["accuracy"] * 100), textcoords="offset points", xytext=(8, 6), fontsize=8)
    line = sorted((p for p in points if p["name"] in front), key=lambda p: p["p50_ms"])
    ax.plot(
        [p["p50_ms"] for p in line],
        [p["accuracy"] * 100 for p in line],
        "--o",
        markersize=3,
        color="tab:blue",
        label="Pareto front (blue; gray: beaten on both axes; ring: shipped)",
    )
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title + " — marker area ∝ model size", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.25, y=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latency(rows: list[dict], path: Path, title: str) -> None:
    import numpy as np

    plt = _pyplot()
    batches = sorted({r["batch"] for r in rows})
    series = list(dict.fromkeys((r["model"], r["ep"], r["threads"]) for r in rows))
    by = {(r["model"], r["ep"], r["threads"], r["batch"]): r for r in rows}
    fig, axes = plt.subplots(1, len(batches), figsize=(max(4.5, 3.2 * len(batches)), 4.2), dpi=110, squeeze=False)
    width = 0.8 / len(series)
    for ax, batch in zip(axes[0], batches, strict=True):
        for i, key in enumerate(series):
            r = by.get((*key, batch))
            if r is None:
                continue
            err = [[0], [r["p90_ms"] - r["p50_ms"]]]
            ax.bar(i * width, r["p50_ms"], width * 0.9, yerr=err, capsize=3, label=" / ".join(str(k) for k in key))
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.set_xticks([])
        ax.set_ylabel("p50 ms (whisker: p90)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(series)), fontsize=8, title="model / EP / threads")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.05 * np.ceil(len(series) / 3), 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_sensitivity(rows: list[dict], path: Path, title: str) -> None:
    plt = _pyplot()
    branches = sorted({r["branch"] for r in rows})
    schemes = sorted({r["scheme"] for r in rows})
    by = {(r["branch"], r["scheme"]): r["drop_points"] for r in rows}
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    width = 0.8 / len(schemes)
    for i, scheme in enumerate(schemes):
        xs = [b + i * width for b in range(len(branches))]
        ax.bar(xs, [by.get((b, scheme), 0.0) for b in branches], width * 0.9, label=scheme)
    ax.set_xticks([b + width * (len(schemes) - 1) / 2 for b in range(len(branches))], branches)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("accuracy drop (points, validation split)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_plots(doc: dict, folder: Path) -> dict[str, str]:
    """The plots this document has data for, as {kind: file name} inside ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    name = doc["recipe"]["name"] if doc["schema"] == "mmedge.results" else "mmedge bench"
    drawn = {}
    points = accuracy_points(doc)
    if len(points) >= 1:
        plot_pareto(points, folder / PLOTS["pareto"], f"{name}: accuracy vs latency")
        drawn["pareto"] = PLOTS["pareto"]
    rows = latency_rows(doc)
    if rows:
        plot_latency(rows, folder / PLOTS["latency"], f"{name}: latency per EP and batch size")
        drawn["latency"] = PLOTS["latency"]
    sens = sensitivity_rows(doc)
    if sens:
        plot_sensitivity(sens, folder / PLOTS["sensitivity"], f"{name}: quantization sensitivity per branch")
        drawn["sensitivity"] = PLOTS["sensitivity"]
    return drawn


# ---------------------------------------------------------------- markdown and html


def render_markdown(doc: dict, plots: dict[str, str], plots_dir: str = "plots", note: str | None = None) -> str:
    """report.md of a results document: a run's goes through the one run renderer (`report.sections`)."""
    if doc["schema"] == "mmedge.results":
        return render_run(doc, plots, note=note, plots_dir=plots_dir)
    m = doc.get("machine", {})
    out = ["# mmedge bench", "", f"Run {doc['created']}, mmedge {doc['mmedge_version']}."]
    out.append(
        f"Machine: {m.get('cpu_summary') or m.get('cpu')} ({m.get('logical_cores')} logical cores), {m.get('os')}, "
        f"onnxruntime {m.get('onnxruntime')}."
    )
    git = (doc.get("provenance") or {}).get("git") or {}
    if git.get("commit"):
        out.append(f"Code: commit {git['commit'][:12]}{' (uncommitted changes)' if git.get('dirty') else ''}.")
    out += bench_inputs_lines(doc)
    if note:
        out += ["", note]
    points = accuracy_points(doc)
    if points:
        front = pareto_front(points)
        out += ["", "## Accuracy vs latency", ""]
        rows = [
            [
                p["name"],
                pct(p["accuracy"]),
                f"{p['p50_ms']:.3f}",
                f"{p['size_bytes'] / 1e6:.3f}",
                "yes" if p["name"] in front else "",
            ]
            for p in points
        ]
        out.append(table(["variant", "test accuracy", "p50 ms", "size MB", "Pareto front"], rows))
        if "pareto" in plots:
            out += ["", f"![accuracy vs latency, size as marker]({plots_dir}/{plots['pareto']})"]
    out += ["", "## Latency", "", bench_tables(doc)]
    if "latency" in plots:
        out += ["", f"![latency per EP and batch size]({plots_dir}/{plots['latency']})"]
    return "\n".join(out) + "\n"


def bench_inputs_lines(doc: dict) -> list[str]:
    """What each model was timed on; synthetic inputs are called so, since their latency need not be real data's."""
    from mmedge.runtime.shapes import is_synthetic

    sources = {n: m.get("inputs") for n, m in doc.get("models", {}).items() if not n.endswith(" fp16")}
    lines = ["", "Inputs timed:", ""] + [f"- {name}: {source or 'not recorded'}" for name, source in sources.items()]
    if any(is_synthetic(s) for s in sources.values()):
        lines += [
            "",
            "**Synthetic inputs**: random values of the sizes shown, not real data; time real inputs with "
            "`mmedge bench MODEL --inputs FILE.npz` before trusting those figures.",
        ]
    return lines


def _inline(text: str) -> str:
    text = htmlmod.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_to_html(md: str, folder: Path, title: str) -> str:
    """The subset of Markdown mmedge writes (headings, paragraphs, lists, pipe tables, images) as one HTML page
    with the images inlined, so the file can be mailed or attached to a CI run on its own."""
    body, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                if not set(lines[i]) <= set("|-: "):
                    rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            rest = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif m := re.fullmatch(r"!\[(.*)\]\((.+)\)", line.strip()):
            data = base64.b64encode((folder / m.group(2)).read_bytes()).decode()
            body.append(f'<p><img alt="{htmlmod.escape(m.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left}th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{htmlmod.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


class ReportFiles(dict):
    """What ``write_report`` wrote ({name: path}), and ``note``: why something was not drawn, or None."""

    note: str | None = None


PLOTS_NOTE = 'plots not drawn: they need matplotlib, which is not installed; pip install "mmedge[report]" for them'


def write_report(doc: dict, out_dir: str | Path, html: bool = False, write_json: bool = True) -> ReportFiles:
    """results.json (unless it is the source), report.md, plots/*.png and optionally report.html, written into a
    temporary folder first and moved into ``out_dir`` only when all are made. Without matplotlib everything but
    the plots is written (report.html without images) and ``note`` says so; no empty folder is left behind."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputPathError(f"{out_dir} is a file; pass a folder for the report.")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report.", dir=out_dir))
    written = ReportFiles()
    try:
        try:
            plots = draw_plots(doc, tmp / "plots")
        except MissingDependencyError:
            plots, written.note = {}, PLOTS_NOTE
        if not plots:
            shutil.rmtree(tmp / "plots", ignore_errors=True)
        md = render_markdown(doc, plots, note=written.note and written.note[0].upper() + written.note[1:] + ".")
        (tmp / "report.md").write_text(md)
        if write_json:
            (tmp / "results.json").write_text(json.dumps(doc, indent=1, default=str))
        if html:
            title = doc["recipe"]["name"] if doc["schema"] == "mmedge.results" else "mmedge bench"
            (tmp / "report.html").write_text(markdown_to_html(md, tmp, title))
        if (tmp / "plots").exists():
            shutil.rmtree(out_dir / "plots", ignore_errors=True)
        for item in sorted(tmp.iterdir()):
            target = out_dir / item.name
            os.replace(item, target)
            written[item.name] = target
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a report that failed leaves no empty folder behind
