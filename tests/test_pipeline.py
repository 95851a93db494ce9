import json
import shutil

import pytest

from mmedge.bundle.manifest import load_bundle
from mmedge.errors import BudgetExceededError, MmedgeError
from mmedge.pipeline import run_recipe
from mmedge.recipe import parse_recipe
from tests.conftest import TINY
from tests.isolation import frozen

pytestmark = pytest.mark.slow  # trains, exports or runs whole chains: `make test` runs it, `make test-fast` not


def tiny_recipe(tmp_path, bench_runs=15, **over):
    data = {
        "name": "tiny",
        "model": {"family": "cnn-lstm", "options": TINY["cnn-lstm"]},
        "data": {"test_images": 200, "val_images": 100},
        "steps": [
            {"type": "train", "epochs": 1, "batch_size": 256},
            {"type": "export", "batch_sizes": [1, 3], "text_lengths": [5, 12]},
            {"type": "validate"},
            {"type": "bench", "runs": bench_runs, "warmup": 2, "batch_sizes": [1, 4]},
            {"type": "mobile"},
            {"type": "bundle", "samples": 4},
        ],
        "output": str(tmp_path / "bundle"),
        "workdir": str(tmp_path / "runs"),
    }
    data.update(over)
    return parse_recipe(data)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One run of the tiny recipe, read by several tests: none may change it (``frozen``); one that runs the recipe
    again, or edits an output, does so on its own copy (``own_copy``)."""
    tmp = tmp_path_factory.mktemp("pipe")
    recipe = tiny_recipe(tmp)
    records = run_recipe(recipe, progress="off")
    with frozen(tmp, what="first_run"):
        yield tmp, recipe, records


def own_copy(first_run, tmp_path, **over):
    """The first run's step folders and bundle copied into this test's ``tmp_path``, with the recipe pointed there
    (``over`` changes it as ``tiny_recipe`` does), and that recipe's step records. Every step comes from the cache
    except the bundle, which writes its new output folder once."""
    src = first_run[0]
    shutil.copytree(src / "runs", tmp_path / "runs")
    shutil.copytree(src / "bundle", tmp_path / "bundle")
    recipe = tiny_recipe(tmp_path, **over)
    return recipe, run_recipe(recipe, progress="off")


def test_step_bundle_pipeline_runs_every_step_and_ships_a_verified_bundle(first_run):
    tmp, _, records = first_run
    assert [r.config.type for r in records] == ["train", "export", "validate", "bench", "mobile", "bundle"]
    assert not any(r.cached for r in records)
    bundle = load_bundle(tmp / "bundle")
    m = bundle.manifest
    assert {"model.onnx", "manifest.json", "vocab.json", "report.md"} - {"manifest.json"} <= set(m["files"])
    assert m["metrics"]["accuracy_drop_points"] <= 0.5
    assert m["metrics"]["parity"]["argmax_agreement"] >= 0.999
    assert m["metrics"]["latency"]["cpu"]["batches"]["1"]["p50_ms"] > 0
    results = json.loads((tmp / "runs" / "tiny" / "results.json").read_text())
    assert results["schema_version"] == 2 and len(results["steps"]) == 6
    # every results file and bundle says what made its figures: code, packages, the CPU and its flags
    import onnxruntime

    for prov in (results["provenance"], m["provenance"]):
        # the onnxruntime module comes from the CPU wheel or from onnxruntime-gpu: whichever is installed is recorded
        packages = prov["packages"]
        assert onnxruntime.__version__ in (packages.get("onnxruntime"), packages.get("onnxruntime-gpu"))
        assert prov["cpu"]["summary"] and "commit" in prov["git"]
        assert isinstance(prov["cpu"]["flags"], list)
    # the exported model is the trained model itself: it is its own reference, and bench times nothing against it
    ref = next(s for s in results["steps"] if s["type"] == "export")["metrics"]["reference_onnx"]
    assert ref["file"] == "model.onnx" and ref["same_as_export"]
    assert next(s for s in results["steps"] if s["type"] == "bench")["metrics"]["reference"] is None
    validated = next(s for s in results["steps"] if s["type"] == "validate")["metrics"]
    assert validated["gate"]["split"] == "val" and m["metrics"]["gate"]["split"] == "val"
    assert "plots/latency.png" in m["files"] and "![latency per EP" in (tmp / "bundle" / "report.md").read_text()
    assert (tmp / "runs" / "tiny" / "report.md").is_file() and (
        tmp / "runs" / "tiny" / "plots" / "latency.png"
    ).is_file()


def test_step_mobile_files_ship_in_the_bundle_with_their_analysis(first_run):
    tmp = first_run[0]
    bundle = load_bundle(tmp / "bundle")
    m = bundle.manifest
    for name in ("model.ort", "model.fixed.ort", "model.fixed.onnx", "required_operators.config", "mobile.json"):
        assert name in m["files"], name
    variants = {v["file"]: v for v in m["variants"]}
    assert variants["model.fixed.ort"]["inputs"]["input_ids"][0] == 1
    assert variants["model.ort"]["session_config"] == {"session.enable_saved_runtime_optimizations": "1"}
    mob = m["metrics"]["mobile"]
    assert mob["parity"]["model.fixed.ort"]["max_abs_diff"] <= 1e-4
    report = (tmp / "bundle" / "report.md").read_text()
    assert "## Mobile" in report and "NNAPI" in report and "CoreML" in report


def test_step_validate_reports_parity_and_ablation(first_run):
    v = first_run[2][2].result.metrics
    assert v.parity.max_abs_diff < 1e-3 and v.image_blanked is not None and v.text_emptied is not None


def test_step_bench_reports_each_batch(first_run):
    b = first_run[2][3].result.metrics
    assert set(b.targets["cpu"].batches) == {"1", "4"} and b.inputs == "test split samples"


def test_rerun_skips_finished_steps_and_reruns_only_what_changed(first_run, tmp_path):
    recipe, copied = own_copy(first_run, tmp_path)
    assert [r.cached for r in copied] == [True] * 5 + [False]  # the bundle's output folder is part of its key
    again = run_recipe(recipe, progress="off")
    assert all(r.cached for r in again)
    changed = run_recipe(tiny_recipe(tmp_path, bench_runs=16), progress="off")
    assert [r.cached for r in changed] == [True, True, True, False, False, False]


def test_latency_budget_that_cannot_be_met_fails_the_run(first_run, tmp_path):
    own_copy(first_run, tmp_path)
    before = (tmp_path / "bundle" / "manifest.json").read_bytes()
    recipe = tiny_recipe(tmp_path, budgets={"max_latency_ms": 1e-6})
    with pytest.raises(BudgetExceededError, match="over the budget"):
        run_recipe(recipe, progress="off")
    assert load_bundle(tmp_path / "bundle")  # the earlier bundle is untouched
    assert (tmp_path / "bundle" / "manifest.json").read_bytes() == before


def test_step_bench_marks_a_target_this_onnxruntime_lacks_as_unavailable_when_allowed(tmp_path):
    recipe = tiny_recipe(tmp_path, targets=["cpu", "nnapi"])
    with pytest.raises(MmedgeError, match="'nnapi' is not in this onnxruntime"):
        run_recipe(recipe, progress="off")
    steps = [s.model_dump() for s in recipe.steps]
    steps[3]["allow_missing"] = True
    records = run_recipe(tiny_recipe(tmp_path, targets=["cpu", "nnapi"], steps=steps), progress="off")
    bench = records[3].result.metrics
    assert set(bench.targets) == {"cpu"} and "onnxruntime-android" in bench.unavailable["nnapi"]
    m = load_bundle(tmp_path / "bundle").manifest["metrics"]
    assert set(m["latency"]) == {"cpu"} and "nnapi" in m["latency_unavailable"]
    assert "Not measured on nnapi" in (tmp_path / "bundle" / "report.md").read_text()


def test_step_load_starts_a_chain_from_an_existing_checkpoint(tmp_path, tiny_checkpoints):
    recipe = parse_recipe(
        {
            "name": "loaded",
            "data": {"test_images": 200, "val_images": 100},
            "steps": [
                {"type": "load", "path": str(tiny_checkpoints["vit-transformer"])},
                {"type": "export"},
                {"type": "validate", "ablation": False},
            ],
            "workdir": str(tmp_path / "runs"),
        }
    )
    records = run_recipe(recipe, progress="off")
    assert records[0].result.metrics.family == "vit-transformer"
    assert records[2].result.metrics.parity.argmax_agreement >= 0.999
    assert records[2].result.metrics.accuracy_drop_points <= 0.5


def test_a_step_that_reruns_invalidates_the_steps_after_it(first_run, tmp_path):
    recipe, _ = own_copy(first_run, tmp_path)
    fresh = run_recipe(recipe, progress="off")
    assert all(r.cached for r in fresh)
    shutil.rmtree(fresh[3].folder)  # bench re-runs: its timings differ, so the bundle after it must re-run too
    again = run_recipe(recipe, progress="off")
    assert [r.cached for r in again] == [True, True, True, False, False, False]


def test_an_output_changed_by_hand_is_not_taken_from_the_cache(first_run, tmp_path, capsys):
    recipe, _ = own_copy(first_run, tmp_path)
    (tmp_path / "bundle" / "report.md").write_text("edited")
    capsys.readouterr()
    again = run_recipe(recipe, progress="off")
    assert [r.cached for r in again] == [True, True, True, True, True, False]
    assert load_bundle(tmp_path / "bundle")
    assert "the output of the cached bundle step" in capsys.readouterr().err  # said, not silent


def test_a_cache_written_by_another_onnxruntime_or_mmedge_is_not_reused(first_run, tmp_path, monkeypatch):
    from mmedge import pipeline, provenance

    recipe, _ = own_copy(first_run, tmp_path)
    versions = provenance.package_versions()
    monkeypatch.setattr(provenance, "package_versions", lambda: {**versions, "onnxruntime": "0.0.1"})
    assert not any(r.cached for r in run_recipe(recipe, progress="off"))  # every step keyed anew
    monkeypatch.undo()
    back = run_recipe(recipe, progress="off")  # the first cache, still there for its version; the bundle folder was
    assert [r.cached for r in back] == [True] * 5 + [False]  # rewritten by the other version's run, so it is rewritten
    monkeypatch.setattr(pipeline, "__version__", "0.0.1")
    assert not any(r.cached for r in run_recipe(recipe, progress="off"))


def test_a_killed_runs_working_folder_is_removed_by_the_next_run(first_run, tmp_path):
    recipe, records = own_copy(first_run, tmp_path)
    stale = records[0].folder.parent / f".{records[3].folder.name}.k1ll3d"  # as a SIGKILL mid-step leaves it
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    again = run_recipe(recipe, progress="off")
    assert all(r.cached for r in again[:5]) and not stale.exists()


def test_a_truncated_step_record_is_said_and_the_step_runs_again(first_run, tmp_path, capsys):
    recipe, records = own_copy(first_run, tmp_path)
    marker = records[2].folder / "result.json"  # validate, in this test's copy
    marker.write_bytes(marker.read_bytes()[:100])  # as a full disk or a crash of another tool might leave it
    capsys.readouterr()
    again = run_recipe(recipe, progress="off")
    assert [r.cached for r in again][:3] == [True, True, False]
    assert f"the cached validate step's record {marker} is unreadable" in capsys.readouterr().err
    assert json.loads(marker.read_text())["metrics"]["test"]  # rewritten whole


def test_a_cached_step_whose_figures_do_not_fit_the_schema_runs_again(first_run, tmp_path, capsys):
    recipe, records = own_copy(first_run, tmp_path)
    marker = records[2].folder / "result.json"  # validate, in this test's copy
    assert marker.is_relative_to(tmp_path)
    data = json.loads(marker.read_text())
    data["metrics"]["renamed"] = data["metrics"].pop("test")  # as another mmedge version might have written it
    marker.write_text(json.dumps(data))
    again = run_recipe(recipe, progress="off")
    assert [r.cached for r in again][:3] == [True, True, False]
    assert "does not fit this mmedge's results; running it again" in capsys.readouterr().err
    assert again[2].result.metrics.test is not None


def test_prune_magnitude_in_a_recipe_reports_sparsity_and_zip_size(tmp_path, tiny_checkpoints):
    recipe = parse_recipe(
        {
            "name": "pruned",
            "data": {"test_images": 200, "val_images": 100},
            "budgets": {"max_accuracy_drop": None},
            "steps": [
                {"type": "load", "path": str(tiny_checkpoints["cnn-lstm"])},
                {"type": "prune.magnitude", "sparsity": 0.5},
                {"type": "export"},
                {"type": "validate", "ablation": False},
            ],
            "workdir": str(tmp_path / "runs"),
        }
    )
    records = run_recipe(recipe, progress="off")
    pruned = records[1].result.metrics
    assert pruned.sparsity_reached == pytest.approx(0.5, abs=0.01) and pruned.test is not None
    assert records[2].result.metrics.zip_bytes < records[2].result.metrics.size_bytes
    assert records[3].result.metrics.parity.samples == 800


def test_compression_chain_ships_a_bundle_that_reports_every_step_per_branch(tmp_path, trained_checkpoint):
    recipe = parse_recipe(
        {
            "name": "compress",
            "model": {"family": "cnn-lstm"},
            "data": {"test_images": 200, "val_images": 100},
            "budgets": {"max_accuracy_drop": 5.0},
            "steps": [
                {"type": "load", "path": str(trained_checkpoint)},
                {"type": "prune.structured", "ratio": 0.25, "iterative_steps": 1, "finetune_epochs": 0},
                {"type": "distill", "epochs": 1, "augment": False},
                {"type": "export", "batch_sizes": [1, 3], "text_lengths": [5, 12]},
                {"type": "quantize.auto", "rounds": 3, "calibration": {"samples": 32}},
                {"type": "validate"},
                {"type": "bench", "runs": 10, "warmup": 2, "batch_sizes": [1]},
                {"type": "bundle", "samples": 4},
            ],
            "output": str(tmp_path / "bundle"),
            "workdir": str(tmp_path / "runs"),
        }
    )
    records = run_recipe(recipe, progress="off")
    pruned = records[1].result.metrics
    assert pruned.options_after["hidden_size"] == 48 and pruned.parameters_after < pruned.parameters_before
    assert records[2].result.metrics.teacher_test_accuracy > 0.6
    auto = records[4].result.metrics
    assert auto.within_budget and auto.sensitivity.nodes and auto.latency_share
    bundle = load_bundle(tmp_path / "bundle")
    c = bundle.manifest["metrics"]["compression"]
    assert set(c) == {"structured_pruning", "distillation", "quantization"}
    assert c["quantization"]["chosen"] in [x["name"] for x in c["quantization"]["candidates"]]
    assert {"image", "text", "fusion"} <= set(c["quantization"]["branch_sizes"])
    report = (tmp_path / "bundle" / "report.md").read_text()
    for heading in ("## Compression", "Quantization search", "Sensitivity", "Per modality branch"):
        assert heading in report
    assert {"plots/pareto.png", "plots/sensitivity.png", "plots/latency.png"} <= set(bundle.manifest["files"])
    robust = bundle.manifest["metrics"]["robustness"]
    assert [r["step"] for r in robust] == ["load", "prune.structured", "distill", "quantize.auto", "validate"]
    assert all(r["image_missing"] < r["full"] and r["text_missing"] < r["full"] for r in robust)
    assert "## Missing modalities" in report
    assert "(plots/pareto.png)" in report and "(plots/sensitivity.png)" in report
    # the loaded (unpruned) model exported once as fp32 ONNX: the yardstick of size and latency
    ref = records[3].result.metrics.reference_onnx
    assert ref.file == "reference.onnx" and not ref.same_as_export
    assert ref.size_bytes > records[3].result.metrics.size_bytes  # the pruned student is smaller
    against = records[6].result.metrics.reference
    assert against.file.endswith("/reference.onnx") and against.rounds["1"] >= 1
    assert 0 < against.size_ratio < 0.5 and set(against.latency_ratio) == {"1"}
    lo, mid, hi = against.latency_ratio["1"]
    assert 0 < lo <= mid <= hi
    shipped = bundle.manifest["metrics"]["reference_onnx"]
    assert shipped["size_ratio"] == pytest.approx(against.size_ratio) and shipped["latency_ratio"]["1"]["p50"] == mid
    assert "Against the fp32 ONNX of the first model" in report


def test_a_budget_no_candidate_meets_stops_the_run_unless_over_budget_is_allowed(tmp_path, trained_checkpoint):
    recipe = parse_recipe(
        {
            "name": "over",
            "model": {"family": "cnn-lstm"},
            "data": {"test_images": 200, "val_images": 100},
            "budgets": {"max_accuracy_drop": 0.5},
            "steps": [
                {"type": "load", "path": str(trained_checkpoint)},
                # 90 % of every layer gone, no fine-tuning: far below the loaded model
                {"type": "prune.structured", "ratio": 0.9, "iterative_steps": 1, "finetune_epochs": 0},
                {"type": "export", "batch_sizes": [1, 3], "text_lengths": [5, 12]},
                {"type": "quantize.auto", "rounds": 3, "schemes": ["int8-dynamic"], "fallback": False},
                {"type": "validate", "ablation": False},
            ],
            "workdir": str(tmp_path / "runs"),
        }
    )
    with pytest.raises(BudgetExceededError, match=r"no quantized candidate meets the budget.*the best reached"):
        run_recipe(recipe, progress="off")
    records = run_recipe(recipe, progress="off", allow_over_budget=True)
    assert [r.cached for r in records][:3] == [True, True, True]  # the failed step alone re-ran
    auto, validate = records[3].result.metrics, records[4].result.metrics
    assert not auto.within_budget and not validate.within_budget
    assert auto.chosen == max(auto.candidates, key=lambda c: c.val_accuracy).name


def test_a_user_dataset_changed_in_place_reruns_the_chain(tmp_path):
    from pathlib import Path

    from mmedge.pipeline import source_fingerprints
    from tests.conftest import digits_manifest

    manifest = digits_manifest(tmp_path / "data", digits=(0, 1), per_class=6)
    recipe = parse_recipe({"name": "fp", "data": {"name": "user", "path": str(manifest)}, "steps": [{"type": "train"}]})
    before = source_fingerprints(recipe)
    assert set(before) == {"data"}
    Path(manifest).write_text(Path(manifest).read_text().replace("a digit", "a number"))
    assert source_fingerprints(recipe)["data"] != before["data"]
