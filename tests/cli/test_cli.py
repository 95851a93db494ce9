"""The CLI, through typer's CliRunner: the jobs work, and bad input gets one clear sentence and exit != 0."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from mmedge_cli.main import app
from tests.conftest import REFERENCE_BUNDLE

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, code, *phrases):
    """Exit ``code`` with one error line naming the problem: no traceback, no exception but the exit itself."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or (isinstance(result.exception, SystemExit) and result.exception.code == code)
    errors = [line for line in result.output.splitlines() if line.startswith(("error:", "internal error:"))]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.output  # one user error, not a bug report
    for phrase in phrases:
        assert phrase in result.output, result.output


def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.startswith("mmedge ")


def test_inspect_bundle_and_onnx():
    r = invoke("inspect", REFERENCE_BUNDLE)
    assert r.exit_code == 0 and "verified" in r.output and "input_ids" in r.output
    r = invoke("inspect", REFERENCE_BUNDLE / "model.onnx", "--json")
    s = json.loads(r.output)
    assert s["inputs"][0]["shape"] == ["batch", 1, 28, 28] and s["mmedge"]["family"] == "cnn-lstm"


def test_predict_answers_a_shipped_sample_as_recorded():
    samples = json.loads((REFERENCE_BUNDLE / "samples" / "samples.json").read_text())
    for s in samples[:4]:
        r = invoke("predict", REFERENCE_BUNDLE, "--image", REFERENCE_BUNDLE / s["image"], "--text", s["text"], "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["answer"] == s["predicted"]


def test_validate_gate_passes_within_budget():
    r = invoke("validate", REFERENCE_BUNDLE, "--max-accuracy-drop", "1", "--no-ablation", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert abs(got["accuracy_drop_points"]) <= 1
    # the bundle's own samples give the answers recorded when it was built
    assert got["bundle_samples"]["samples"] == 8 and got["bundle_samples"]["same_answers"] == 1.0
    answers = got["per_answer"]
    assert sum(map(sum, answers["confusion"])) == got["samples"]
    hits = sum(answers["confusion"][i][i] for i in range(len(answers["labels"])))
    assert hits / got["samples"] == pytest.approx(got["test"]["accuracy"])


def test_validate_gate_exits_1_when_over_budget(tmp_path, tiny_onnx):
    accs = {
        f: json.loads(invoke("validate", p, "--no-ablation", "--json").output)["test"]["accuracy"]
        for f, p in tiny_onnx.items()
    }
    worse, better = sorted(accs, key=accs.get)
    if accs[worse] == accs[better]:
        pytest.skip("both tiny models scored the same")
    r = invoke(
        "validate", tiny_onnx[worse], "--reference", tiny_onnx[better], "--max-accuracy-drop", "0", "--no-ablation"
    )
    assert_clean_failure(r, 1, "over the allowed 0")


def test_bench_json_reports_percentiles_on_bundle_samples():
    r = invoke(
        "bench",
        REFERENCE_BUNDLE,
        "--rounds",
        "4",
        "--calls",
        "5",
        "--warmup",
        "2",
        "--batch",
        "1",
        "--batch",
        "4",
        "--json",
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["models"]["digits-vqa"]["inputs"].startswith("bundle samples")
    rows = {r["batch"]: r for r in res["results"]}
    assert set(rows) == {1, 4} and rows[4]["providers"][0] == "CPUExecutionProvider"
    assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "session_load_ms"} <= set(rows[4])


def test_bench_two_models_writes_results_report_plots_and_html_and_report_rerenders(tmp_path, tiny_onnx):
    out = tmp_path / "rep"
    r = invoke(
        "bench",
        REFERENCE_BUNDLE,
        tiny_onnx["cnn-lstm"],
        "--ep",
        "cpu",
        "--ep",
        "nnapi",
        "--allow-missing",
        "--batch",
        "1",
        "--batch",
        "2",
        "--threads",
        "1",
        "--threads",
        "2",
        "--rounds",
        "2",
        "--calls",
        "2",
        "--warmup",
        "1",
        "--accuracy",
        "--out",
        out,
        "--html",
    )
    assert r.exit_code == 0, r.output
    assert "nnapi (digits-vqa, cnn-lstm): not in this onnxruntime" in r.output and "p50 vs first model" in r.output
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["results"]) == 2 * 2 * 2 and doc["eps"]["nnapi"]["status"] == "unavailable"
    assert doc["models"]["digits-vqa"]["accuracy"] > 0.9
    for png in ("pareto.png", "latency.png"):
        data = (out / "plots" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    md = (out / "report.md").read_text()
    assert "![accuracy vs latency, size as marker](plots/pareto.png)" in md and "Pareto front" in md
    assert md.count("data:image/png;base64,") == 0
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2
    (out / "report.md").unlink()
    shutil.rmtree(out / "plots")
    r = invoke("report", out / "results.json")
    assert r.exit_code == 0, r.output
    assert (out / "report.md").read_text() == md and (out / "plots" / "latency.png").is_file()


def test_report_refuses_a_file_that_is_not_a_results_document(tmp_path):
    (tmp_path / "x.json").write_text('{"schema": "something-else"}')
    assert_clean_failure(invoke("report", tmp_path / "x.json"), 2, "not an mmedge results document")
    (tmp_path / "v.json").write_text('{"schema": "mmedge.bench-results", "schema_version": 99}')
    assert_clean_failure(invoke("report", tmp_path / "v.json"), 2, "schema version 99")
    assert_clean_failure(invoke("report", tmp_path / "none.json"), 2, "does not exist")


def test_bench_threads_below_one_and_fp16_of_a_quantized_model_are_refused(tmp_path):
    assert_clean_failure(invoke("bench", REFERENCE_BUNDLE, "--threads", "0"), 2, "thread count 0 is below 1")
    assert_clean_failure(invoke("bench", REFERENCE_BUNDLE, "--batch", "0"), 2, "batch size 0 is below 1")
    vit = REFERENCE_BUNDLE.parent / "digits-vqa-vit"
    assert_clean_failure(invoke("bench", vit, "--fp16"), 2, "already quantized")


def test_bench_fp16_times_a_float16_copy_next_to_the_model(tiny_onnx):
    r = invoke("bench", tiny_onnx["cnn-lstm"], "--fp16", "--batch", "1", "--rounds", "2", "--calls", "2", "--json")
    assert r.exit_code == 0, r.output
    assert {row["model"] for row in json.loads(r.output)["results"]} == {"cnn-lstm", "cnn-lstm fp16"}


def test_mobile_command_refuses_a_malformed_dim():
    assert_clean_failure(invoke("mobile", REFERENCE_BUNDLE, "--dim", "text_length"), 2, "is not NAME=SIZE")


def test_run_dry_run_prints_the_resolved_default_recipe():
    r = invoke("run", "--dry-run")
    assert r.exit_code == 0 and "name: digits-vqa" in r.output and "type: bundle" in r.output


# --- bad input -------------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    assert_clean_failure(invoke("bench", tmp_path / "nope.onnx"), 2, "does not exist")
    assert_clean_failure(invoke("inspect", tmp_path / "nope.onnx"), 2, "does not exist")


def test_file_that_is_not_onnx(tmp_path):
    (tmp_path / "m.onnx").write_text("definitely not protobuf")
    assert_clean_failure(invoke("bench", tmp_path / "m.onnx"), 2, "not a loadable ONNX model")
    assert_clean_failure(invoke("validate", tmp_path / "m.onnx"), 2, "not a loadable ONNX model")


def test_truncated_onnx(tmp_path):
    data = (REFERENCE_BUNDLE / "model.onnx").read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 3])
    assert_clean_failure(invoke("inspect", tmp_path / "t.onnx"), 2, "truncated")
    assert_clean_failure(invoke("bench", tmp_path / "t.onnx"), 2, "truncated")


def test_recipe_with_unknown_key_and_wrong_type(tmp_path):
    (tmp_path / "a.yaml").write_text("name: x\nsteps:\n  - type: train\n    epochz: 3\n")
    assert_clean_failure(invoke("run", tmp_path / "a.yaml", "--dry-run"), 2, "'epochz' is not a known key")
    (tmp_path / "b.yaml").write_text("name: x\nsteps:\n  - type: train\n    epochs: many\n")
    assert_clean_failure(invoke("run", tmp_path / "b.yaml"), 2, "valid integer")


def test_image_that_does_not_decode(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = invoke("predict", REFERENCE_BUNDLE, "--image", tmp_path / "x.png", "--text", "is this digit even?")
    assert_clean_failure(r, 2, "does not decode")


def test_inputs_of_wrong_shape_and_dtype(tmp_path):
    np.savez(
        tmp_path / "bad.npz",
        image=np.zeros((1, 3, 28, 28), np.float32),
        input_ids=np.zeros((1, 5), np.float32),
        attention_mask=np.ones((1, 5), np.int64),
    )
    r = invoke("bench", REFERENCE_BUNDLE, "--inputs", tmp_path / "bad.npz", "--rounds", "1")
    assert_clean_failure(r, 2, "size 3 on axis 1", "'input_ids' has dtype float32")


def test_unknown_model_family(tmp_path):
    r = invoke("train", "--family", "resnet", "--out", tmp_path / "c")
    assert_clean_failure(r, 2, "unknown model family 'resnet'")
    assert not (tmp_path / "c").exists()


def test_unknown_execution_provider():
    assert_clean_failure(invoke("bench", REFERENCE_BUNDLE, "--ep", "tpu"), 2, "unknown execution provider 'tpu'")
    assert_clean_failure(invoke("bench", REFERENCE_BUNDLE, "--ep", "xnnpak"), 2, "did you mean 'xnnpack'")
    assert_clean_failure(invoke("bench", REFERENCE_BUNDLE, "--ep", "cuda"), 2, "pip install 'mmedge[gpu]'")
    assert_clean_failure(invoke("bench", REFERENCE_BUNDLE, "--ep", "coreml"), 2, "not in this onnxruntime")


def test_predict_on_a_tampered_bundle_is_refused(tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(REFERENCE_BUNDLE, copy)
    with open(copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    r = invoke("predict", copy, "--image", copy / "samples" / "sample_00.png", "--text", "is this a 3?")
    assert_clean_failure(r, 2, "model.onnx does not match its sha256")


@pytest.mark.slow
def test_train_export_validate_from_the_command_line(tmp_path):
    r = invoke("train", "--out", tmp_path / "ck", "--epochs", "1", "--max-minutes", "0.05")
    assert r.exit_code == 0, r.output
    assert "image blanked" in r.output and (tmp_path / "ck" / "model.safetensors").is_file()
    r = invoke("export", tmp_path / "ck", "--out", tmp_path / "m.onnx", "--mobile")
    assert r.exit_code == 0, r.output
    assert "validated at 4 batch × text-length combinations" in r.output
    assert (tmp_path / "m-mobile" / "model.ort").is_file() and "## Mobile" in r.output
    r = invoke("validate", tmp_path / "m.onnx", "--max-accuracy-drop", "0.5", "--no-ablation")
    assert r.exit_code == 0, r.output
    assert "accuracy drop vs the PyTorch model at export: 0.00 points" in r.output
    assert "accuracy per answer" in r.output  # and the confusion table


@pytest.mark.slow
def test_run_a_recipe_file_without_bundle_or_ablation(tmp_path, tiny_checkpoints):
    (tmp_path / "r.yaml").write_text(
        f"name: r\ndata: {{test_images: 200, val_images: 100}}\nworkdir: {tmp_path / 'runs'}\nsteps:\n"
        f"  - {{type: load, path: {tiny_checkpoints['cnn-lstm']}}}\n  - {{type: export}}\n"
        "  - {type: validate, ablation: false}\n"
    )
    r = invoke("run", tmp_path / "r.yaml")
    assert r.exit_code == 0, r.output
    assert "3. validate" in r.output and "test accuracy" in r.output and "bundle:" not in r.output


def test_providers_lists_cpu_as_available_and_mobile_eps_honestly_unavailable():
    import onnxruntime as ort

    res = runner.invoke(app, ["providers", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert set(rows) >= {"cpu", "cuda", "tensorrt", "openvino", "xnnpack", "nnapi", "coreml", "qnn", "dml"}
    have = set(ort.get_available_providers())
    for r in rows.values():  # what onnxruntime itself reports, never assumed
        assert r["listed"] == (r["ort_name"] in have)
        assert r["available"] <= r["listed"]  # listed, but unable to start here (onnxruntime-gpu without a GPU)
        assert (r["how_to_get"] is None) == r["available"]
    assert rows["cpu"]["available"] and rows["cuda"]["default_options"]["device_id"] == 0
    table = runner.invoke(app, ["providers"])
    assert table.exit_code == 0 and "XnnpackExecutionProvider" in table.output and "mmedge[gpu]" in table.output


def test_run_with_an_onnx_model_source_skips_the_torch_steps_in_the_dry_run(tmp_path):
    r = invoke("run", "--model", f"onnx:{REFERENCE_BUNDLE / 'model.onnx'}", "--out", tmp_path / "b", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "skipping train, prune.structured, distill, export" in r.output
    assert "type: load.onnx" in r.output and "type: train" not in r.output and f"output: {tmp_path / 'b'}" in r.output
    assert_clean_failure(invoke("run", "--model", "keras:m.h5", "--dry-run"), 2, "'keras:m.h5' is not understood")


def test_inspect_of_a_tampered_bundle_shows_what_is_wrong_and_exits_2(tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(REFERENCE_BUNDLE, copy)
    vocab = copy / "vocab.json"
    vocab.write_text(vocab.read_text().replace('"two"', '"tow"'))  # an edited file
    r = invoke("inspect", copy)
    assert_clean_failure(r, 2, "NOT verified", "vocab.json does not match its sha256", "rebuild it")
    assert "input_ids" in r.output  # the inputs the manifest states, not an empty table
    assert_clean_failure(invoke("inspect", copy, "--json"), 2, "is not what was built")


@pytest.mark.parametrize("html", [False, True])
def test_bench_report_without_matplotlib_writes_everything_but_plots_and_says_so_once(tmp_path, monkeypatch, html):
    import sys

    from tests.conftest import relu_onnx

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, as on a [cpu] install
    out = tmp_path / "rep"
    args = ["--html"] if html else []
    r = invoke("bench", relu_onnx(tmp_path / "relu.onnx"), "--batch", "1", "--rounds", "2", "--calls", "2", "--out",
               out, *args)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.count('pip install "mmedge[report]"') == 1, r.output
    assert "plots" not in r.output.splitlines()[-1]  # the closing line names what was written
    names = {p.name for p in out.iterdir()}
    assert names == {"results.json", "report.md"} | ({"report.html"} if html else set())  # no empty plots/
    assert "Plots not drawn" in (out / "report.md").read_text()
    if html:
        assert "Plots not drawn" in (out / "report.html").read_text()
    r = invoke("report", out / "results.json", "--out", tmp_path / "again", "--html")
    assert r.exit_code == 0 and r.output.count("mmedge[report]") == 1, r.output
    assert not (tmp_path / "again" / "plots").exists()


def test_recipe_key_typos_get_did_you_mean_in_one_sentence(tmp_path):
    (tmp_path / "a.yaml").write_text("name: x\nsteps:\n  - type: train\n    epcohs: 3\n")
    r = invoke("run", tmp_path / "a.yaml", "--dry-run")
    assert_clean_failure(r, 2, "step 1 (train): 'epcohs' is not a known key (did you mean 'epochs'?)", "a.yaml")
    assert "value error" not in r.output.lower()
    (tmp_path / "b.yaml").write_text("name: x\nmodel: {famliy: cnn-lstm}\nsteps:\n  - type: train\n")
    r = invoke("run", tmp_path / "b.yaml", "--dry-run")
    assert_clean_failure(r, 2, "'model.famliy' is not a known key (did you mean 'family'?)", "b.yaml")
