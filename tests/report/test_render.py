import json
from pathlib import Path

import pytest

from mmedge.errors import MmedgeError
from mmedge.report.render import load_results, markdown_to_html, write_report
from mmedge.report.sections import BundleFacts, render_run
from mmedge.report.views import accuracy_points, pareto_front


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


def _latency(p50, p90, p99, batch):
    return {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": p50,
        "min_ms": p50,
        "std_ms": 0.0,
        "runs": 100,
        "throughput_per_s": batch * 1e3 / p50,
        "warmup_rss_growth_mb": 0.0,
    }


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
                        "split": "val",
                        "input_val_accuracy": 0.98,
                        "nodes": [],
                        "branches": [
                            {"branch": "image", "scheme": "int8-static", "nodes": 4, "drop_points": 0.4},
                            {"branch": "text", "scheme": "int8-dynamic", "nodes": 2, "drop_points": 0.1},
                        ],
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
                            "model": "model.onnx",
                            "ep": "cpu",
                            "providers": ["CPUExecutionProvider"],
                            "threads": 1,
                            "session_load_ms": 5.0,
                            "batches": {"1": _latency(0.15, 0.2, 0.3, 1), "32": _latency(1.0, 1.2, 2.0, 32)},
                            "memory": {
                                "rss_before_mb": 100.0,
                                "rss_after_load_mb": 101.0,
                                "peak_rss_mb": 102.0,
                                "process_peak_rss_mb": 110.0,
                            },
                            "size_bytes": 60_000,
                            "machine": {},
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


RUN = Path(__file__).parent / "data" / "digits_vqa_results.json"  # a default run's results, as written


def _run_doc() -> dict:
    return load_results(RUN)


def _headings(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("## ")]


def _step(doc: dict, kind: str) -> dict:
    return next(s for s in doc["steps"] if s["type"] == kind)["metrics"]


def test_the_run_report_and_the_bundle_report_are_one_document():
    doc = _run_doc()
    run = render_run(doc)
    bundle = render_run(doc, bundle=BundleFacts(size_bytes=120_502, zip_bytes=105_000))
    assert run.startswith("# digits-vqa — pipeline results") and bundle.startswith("# digits-vqa\n")
    assert "Model size: **0.121 MB** (`model.onnx`, weights inside, 0.105 MB zipped)." in bundle
    assert "Model size" not in run
    # every step of the default recipe has its section, in both reports alike
    expected = [
        "## Data and training",
        "## Accuracy (ONNX Runtime, CPUExecutionProvider)",
        "## Fidelity",
        "## Missing modalities",
        "## Compression",
        "## Latency",
        "## Mobile (ONNX Runtime Mobile)",
        "## Pipeline",
    ]
    assert _headings(run) == _headings(bundle) == expected
    assert run.split("## Data and training", 1)[1] == bundle.split("## Data and training", 1)[1]


def test_each_section_is_written_from_its_steps_typed_metrics():
    doc = _run_doc()
    val = _step(doc, "validate")
    val["test"]["accuracy"] = 0.4321
    auto = _step(doc, "quantize.auto")
    auto["chosen"] = auto["candidates"][0]["name"]
    _step(doc, "train")["stopped"] = "time_cap"
    pruned = _step(doc, "prune.structured")
    pruned["parameters_after"] = 12_345
    md = render_run(doc)
    assert "| full input | 43.21% |" in md
    assert f"| **{auto['candidates'][0]['name']}** | " in md
    assert f"| **{auto['candidates'][1]['name']}** | " not in md
    assert "train: 20 epochs in" in md and "**stopped on the recipe's wall-clock cap (`max_minutes`)**" in md
    assert "281,212 → 12,345 parameters" in md
    # a step that did not run leaves no section behind
    doc["steps"] = [s for s in doc["steps"] if s["type"] not in ("validate", "mobile", "bench")]
    headings = _headings(render_run(doc))
    assert headings == [
        "## Data and training",
        "## Fidelity",  # the export's own check remains
        "## Missing modalities",
        "## Compression",
        "## Pipeline",
    ]


def test_the_report_states_the_split_rule_and_which_split_decided():
    doc = _run_doc()
    md = render_run(doc, bundle=BundleFacts(size_bytes=1))
    split = _step(doc, "train")["data_split"]
    assert f"Data split {split['rule']}: train {split['images']['train']:,} images" in md
    val = _step(doc, "validate")
    assert (
        f"{val['accuracy_drop_points']:.2f} points on test (reported), {val['gate']['accuracy_drop_points']:.2f} on "
        "validation (what the budget decided on)." in md
    )
    auto = _step(doc, "quantize.auto")
    assert f"decided on the {auto['selection_split']} split" in md and auto["selection_split"] == "val"


def test_a_bundle_report_of_a_split_model_lists_its_parts_and_a_run_with_a_skipped_row_says_so():
    doc = _run_doc()
    _step(doc, "train")["skipped_rows"] = {"count": 3, "rows": [1, 2, 3]}
    split = {
        "files": {"vision.onnx": {"inputs": ["image"], "outputs": ["image_embeds"], "bytes": 2_000_000}},
        "max_abs_diff": 1e-6,
    }
    md = render_run(doc, bundle=BundleFacts(size_bytes=1, split=split))
    assert "## Parts (dual encoder split)" in md and "| `vision.onnx` | image | image_embeds | 2.000 MB |" in md
    assert "3 data rows were skipped (`--skip-bad-rows`)." in md
    assert "## Parts" not in render_run(doc)


def test_export_parity_is_kept_apart_from_the_compressed_models_agreement_with_the_teacher():
    doc = _run_doc()
    md = render_run(doc)
    val = _step(doc, "validate")
    assert "Export: the ONNX graph against the PyTorch model it was exported from, at 4 " in md
    assert (
        "Agreement of the shipped model with the model the chain started from (step `train`), over "
        f"{val['parity']['samples']} test questions: the same answer in {val['parity']['argmax_agreement']:.2%}"
    ) in md
    assert "(prune.structured, distill, quantize.auto), so its logits are not meant to match" in md
    assert "Parity of the shipped model" not in md
    # train -> export -> validate: nothing compressed, so the same figures are the export's parity
    doc["steps"] = [s for s in doc["steps"] if s["type"] in ("train", "export", "validate")]
    md = render_run(doc)
    assert "Parity of the shipped model with the model it was exported from, over" in md
    assert "Agreement of the shipped model" not in md


def test_the_image_input_and_a_forced_setting_are_stated_in_the_report():
    doc = _run_doc()
    _step(doc, "train")["image_format"] = {
        "height": 64,
        "width": 64,
        "channels": 1,
        "mean": [0.5],
        "std": [0.2],
        "foreground": "natural",
        "data_images": "64x64 colour",
        "source": {"image_size": "data", "channels": "recipe", "image_mean": "training split"},
        "notes": ["the recipe sets channels: 1, but the training pictures are in colour"],
    }
    md = render_run(doc)
    assert "Image input: 64×64 grayscale, natural (training pictures: 64x64 colour); image_size from the data, " in md
    assert "**Note:** the recipe sets channels: 1, but the training pictures are in colour." in md
    assert "Image input:" not in render_run(_run_doc())  # a run that recorded no image format: no such line
