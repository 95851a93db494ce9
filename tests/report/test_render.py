import json

import pytest

from mmedge.errors import MmedgeError
from mmedge.report.render import accuracy_points, load_results, markdown_to_html, pareto_front, write_report


def test_pareto_front_keeps_only_points_nothing_beats_on_both_axes():
    pts = [
        {"name": "fast", "p50_ms": 1.0, "accuracy": 0.90},
        {"name": "accurate", "p50_ms": 3.0, "accuracy": 0.99},
        {"name": "beaten", "p50_ms": 2.0, "accuracy": 0.89},
        {"name": "middle", "p50_ms": 2.0, "accuracy": 0.95},
        {"name": "tie-slower", "p50_ms": 1.5, "accuracy": 0.90},
    ]
    assert pareto_front(pts) == {"fast", "accurate", "middle"}


def _candidate(name, test_accuracy, p50_ms, size_bytes):
    return {
        "name": name,
        "val_accuracy": test_accuracy,
        "test_accuracy": test_accuracy,
        "drop_points": 0.0,
        "agreement": 1.0,
        "size_bytes": size_bytes,
        "p50_ms": p50_ms,
        "latency_ratio": None,
        "within_budget": p50_ms is not None,
        "float_nodes": None,
    }


def _auto_metrics(**fields):
    """A quantize.auto metrics document as results.json holds it (the fields a test does not set: neutral)."""
    score = {"accuracy": 0.98, "per_family": {}}
    parity = {
        "max_abs_diff": 0.0,
        "mean_abs_diff": 0.0,
        "mean_cosine": 1.0,
        "sqnr_db": float("inf"),
        "argmax_agreement": 1.0,
        "samples": 10,
    }
    base = {
        "val": score,
        "test": score,
        "gate": {"split": "val", "accuracy": 0.98, "accuracy_drop_points": 0.0, "input_accuracy": 0.98, "agreement": 1},
        "parity": parity,
        "input_accuracy": 0.98,
        "accuracy_drop_points": 0.0,
        "size_bytes": 60_000,
        "input_size_bytes": 200_000,
        "ops": {"MatMul": 1},
        "selection_split": "val",
        "choice": {
            "objective": "size",
            "latency_tolerance": 0.05,
            "rule": "smallest",
            "fastest": "fp32",
            "latency_ratio": [1.0, 1.0, 1.0],
            "timing": {},
        },
        "within_budget": True,
        "budget_points": 1.0,
        "reference_val_accuracy": 0.98,
        "input_val_accuracy": 0.98,
        "input_test_accuracy": 0.98,
        "ep": "cpu",
        "threads": 1,
        "batch_size": 1,
        "plan": {},
        "quantizable_nodes": 1,
        "branch_sizes": {},
        "latency_share": {},
    }
    return {**base, **fields}


def _pipeline_doc():
    return {
        "schema": "mmedge.results",
        "schema_version": 2,
        "mmedge_version": "0",
        "recipe": {"name": "r"},
        "machine": {"cpu": "x", "logical_cores": 2, "os": "Linux", "onnxruntime": "1"},
        "steps": [
            {
                "index": 1,
                "type": "quantize.auto",
                "seconds": 1.0,
                "cached": False,
                "metrics": _auto_metrics(
                    chosen="int8-dynamic",
                    candidates=[
                        _candidate("fp32", 0.98, 0.2, 200_000),
                        _candidate("int8-dynamic", 0.975, 0.15, 60_000),
                        _candidate("int8-static", 0.97, 0.3, 50_000),
                        _candidate("untimed", 0.5, None, 1),
                    ],
                    sensitivity={
                        "branches": [
                            {"branch": "image", "scheme": "int8-static", "nodes": 4, "drop_points": 0.4},
                            {"branch": "text", "scheme": "int8-dynamic", "nodes": 2, "drop_points": 0.1},
                        ]
                    },
                ),
            },
            {
                "index": 2,
                "type": "bench",
                "seconds": 1.0,
                "cached": False,
                "metrics": {
                    "targets": {
                        "cpu": {
                            "threads": 1,
                            "batches": {
                                "1": {"p50_ms": 0.15, "p90_ms": 0.2, "p99_ms": 0.3},
                                "32": {"p50_ms": 1.0, "p90_ms": 1.2, "p99_ms": 2.0},
                            },
                        }
                    },
                    "unavailable": {},
                    "inputs": "test split samples",
                    "within_budget": True,
                },
            },
        ],
    }


def test_pipeline_results_render_all_three_plots_and_mark_the_shipped_variant(tmp_path):
    doc = _pipeline_doc()
    assert [p["name"] for p in accuracy_points(doc)] == ["fp32", "int8-dynamic", "int8-static"]
    written = write_report(doc, tmp_path, html=True)
    assert {"report.md", "results.json", "plots", "report.html"} == set(written)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["latency.png", "pareto.png", "sensitivity.png"]
    md = (tmp_path / "report.md").read_text()
    assert "| int8-dynamic (shipped) | 97.50% | 0.150 | 0.060 | yes |" in md
    assert "| int8-static | 97.00% | 0.300 | 0.050 |  |" in md  # slower and less accurate than int8-dynamic
    assert "| image | int8-static | 4 | 0.40 |" in md
    assert load_results(tmp_path / "results.json") == json.loads(json.dumps(doc))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_results_document_whose_step_metrics_do_not_fit_their_schema_is_refused(tmp_path):
    doc = _pipeline_doc()
    metrics = doc["steps"][0]["metrics"]
    metrics["picked"] = metrics.pop("chosen")  # a renamed key
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(MmedgeError, match=r"step 1 \(quantize.auto\) do not fit its schema \(chosen: Field required"):
        load_results(tmp_path / "r.json")


def test_html_inlines_the_plots_and_escapes_text(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake")
    page = markdown_to_html(
        "# T <x>\n\n| a | b |\n|---|---|\n| `1` | **2** |\n\n- item\n\n![cap](a.png)\n", tmp_path, "T"
    )
    assert "<h1>T &lt;x&gt;</h1>" in page and "<td><code>1</code></td><td><strong>2</strong></td>" in page
    assert "<li>item</li>" in page and 'src="data:image/png;base64,' in page


def test_a_results_document_of_another_schema_version_is_refused(tmp_path):
    for other in (1, 3):  # older and newer alike
        doc = _pipeline_doc() | {"schema_version": other}
        (tmp_path / "r.json").write_text(json.dumps(doc))
        with pytest.raises(MmedgeError, match=f"schema version {other}, this mmedge reads version 2"):
            load_results(tmp_path / "r.json")


def test_bundle_report_states_the_split_rule_and_which_split_decided():
    from mmedge.report.markdown import render_bundle_report

    metrics = {
        "size_bytes": 120_000,
        "reference": {"framework": "pytorch", "test_accuracy": 0.985, "parameters": 150_000},
        "data_split": {
            "rule": "by image, seeded (seed 0)",
            "images": {"train": 3750, "val": 250, "test": 1000},
            "rows": {"train": 15000, "val": 1000, "test": 4000},
        },
        "accuracy": {
            "split": "test (4000 questions on held-out images)",
            "test": {"accuracy": 0.98, "per_family": {}},
        },
        "accuracy_drop_points": 0.5,
        "gate": {"split": "val", "accuracy_drop_points": 0.3},
    }
    md = render_bundle_report("r", metrics)
    assert "Data split by image, seeded (seed 0): train 3,750 images (15,000 questions), val 250 images" in md
    assert "0.50 points on test (reported), 0.30 on validation (what the budget decided on)." in md
