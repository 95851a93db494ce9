import pytest

from mmedge.bundle.manifest import load_bundle
from mmedge.errors import InputPathError, RecipeError
from mmedge.pipeline import run_recipe
from mmedge.recipe import parse_recipe
from tests.conftest import TINY, relu_onnx

TINY_CNN = TINY["cnn-lstm"]


def onnx_recipe(tmp_path, source, steps):
    return parse_recipe(
        {
            "name": "from-onnx",
            "model": {"source": f"onnx:{source}"},
            "data": {"test_images": 200, "val_images": 100},
            "budgets": {"max_accuracy_drop": 5.0},
            "steps": steps,
            "output": str(tmp_path / "bundle"),
            "workdir": str(tmp_path / "runs"),
        }
    )


def test_step_load_onnx_skips_the_torch_steps_and_ships_a_bundle(tmp_path, tiny_onnx):
    recipe = onnx_recipe(
        tmp_path,
        tiny_onnx["cnn-lstm"],
        [
            {"type": "train"},
            {"type": "export"},
            {"type": "quantize.dynamic"},
            {"type": "validate"},
            {"type": "bench", "runs": 5, "warmup": 1, "batch_sizes": [1]},
            # an untrained tiny model has near-tied logits, so an int8 rounding difference can flip an answer
            {"type": "mobile", "min_agreement": 0.9},
            {"type": "bundle", "samples": 2},
        ],
    )
    assert recipe.skipped_steps == ("train", "export")
    records = run_recipe(recipe, progress="off")
    assert [r.config.type for r in records] == [
        "load.onnx",
        "quantize.dynamic",
        "validate",
        "bench",
        "mobile",
        "bundle",
    ]
    loaded = records[0].result.metrics
    from mmedge.runtime.evaluate import evaluate_model

    scored = evaluate_model(tiny_onnx["cnn-lstm"], ablation=False)[0]  # the file as the user has it
    assert loaded.mmedge_metadata and loaded.test.accuracy == scored["test"]["accuracy"]
    assert loaded.val is not None and loaded.val.accuracy == scored["val"]["accuracy"]
    validated = records[2].result.metrics
    assert validated.reference_accuracy == loaded.test.accuracy  # the source ONNX is the reference
    assert validated.gate.reference_accuracy == loaded.val.accuracy  # and its validation accuracy decides
    assert validated.parity.argmax_agreement >= 0.9 and validated.within_budget
    m = load_bundle(tmp_path / "bundle").manifest
    assert m["model"]["lineage"] == ["load.onnx", "quantize.dynamic", "bundle"]
    assert m["metrics"]["reference"]["framework"] == "onnx"
    assert "ONNX source model reference" in (tmp_path / "bundle" / "report.md").read_text()
    assert tiny_onnx["cnn-lstm"].is_file()  # the user's file is only read
    parity = records[4].result.metrics.parity["model.ort"]
    assert parity["rule"].startswith("int8 model") and parity["argmax_agreement"] >= 0.9


def test_onnx_from_elsewhere_is_benched_and_converted_and_validated_by_fidelity(tmp_path):
    model = relu_onnx(tmp_path / "relu.onnx")
    steps = [{"type": "bench", "runs": 5, "warmup": 1, "batch_sizes": [1, 2]}, {"type": "mobile"}]
    records = run_recipe(onnx_recipe(tmp_path, model, steps), progress="off")
    assert records[0].result.metrics.mmedge_metadata is False
    assert records[1].result.metrics.inputs.startswith("synthetic")
    assert records[2].result.metrics.parity["model.fixed.ort"]["max_abs_diff"] == 0.0
    # no data to score: validate gives the model's fidelity to the source model (here: itself)
    validated = run_recipe(onnx_recipe(tmp_path, model, [{"type": "validate"}]), progress="off")[1].result.metrics
    assert validated.test is None and validated.fidelity.max_abs_diff == 0.0 and validated.fidelity.min_cosine == 1.0


def test_model_source_that_is_not_understood_or_missing_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="'tf:x' is not understood"):
        parse_recipe({"name": "r", "model": {"source": "tf:x"}, "steps": [{"type": "validate"}]})
    recipe = onnx_recipe(tmp_path, tmp_path / "nope.onnx", [{"type": "validate"}])
    with pytest.raises(InputPathError, match="is not an .onnx file that exists"):
        run_recipe(recipe, progress="off")


def test_a_changed_onnx_file_at_the_same_path_is_loaded_again(tmp_path, tiny_onnx):
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copyfile(tiny_onnx["cnn-lstm"], model)
    steps = [{"type": "bench", "runs": 3, "warmup": 1, "batch_sizes": [1]}]
    first = run_recipe(onnx_recipe(tmp_path, model, steps), progress="off")
    assert all(r.cached for r in run_recipe(onnx_recipe(tmp_path, model, steps), progress="off"))
    shutil.copyfile(tiny_onnx["vit-transformer"], model)
    again = run_recipe(onnx_recipe(tmp_path, model, steps), progress="off")
    assert not again[0].cached and again[0].result.metrics.size_bytes != first[0].result.metrics.size_bytes


@pytest.mark.slow
def test_user_dataset_trains_a_zoo_model_with_bad_rows_skipped_and_counted(tmp_path, monkeypatch):
    """`mmedge run --data MANIFEST`: the zoo cnn-lstm on the user's own rows (RGB PNGs resized to its 28x28 gray)."""
    import json

    import yaml
    from typer.testing import CliRunner

    from mmedge_cli.main import app
    from tests.conftest import digits_manifest

    monkeypatch.chdir(tmp_path)
    manifest = digits_manifest(tmp_path / "data", per_class=30, fmt="csv")
    with manifest.open("a") as fh:
        fh.write("images/missing.png,a digit,zero\n")
    recipe = tmp_path / "r.yaml"
    steps = [{"type": "train", "epochs": 3, "batch_size": 32, "augment": False}, {"type": "export"}]
    steps += [{"type": "validate"}, {"type": "bundle", "samples": 4}]
    recipe.write_text(yaml.safe_dump({"name": "mine", "model": {"options": TINY_CNN}, "steps": steps}))
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(recipe), "--data", str(manifest)])
    assert res.exit_code == 2 and "row 121 of data.csv names the image 'images/missing.png'" in res.output
    assert "--skip-bad-rows" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["run", str(recipe), "--data", str(manifest), "--skip-bad-rows", "--out", "b"])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / ".mmedge/runs/data-mine/results.json").read_text())
    train = results["steps"][0]["metrics"]
    assert train["skipped_rows"]["count"] == 1 and train["skipped_rows"]["rows"][0]["row"] == 121
    assert train["test"]["per_family"].keys() == {"all"}
    manifest_json = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest_json["labels"] == ["one", "three", "two", "zero"]
    sample = json.loads((tmp_path / "b/samples/samples.json").read_text())[0]
    answer = runner.invoke(app, ["predict", "b", "--image", f"b/{sample['image']}", "--text", sample["text"], "--json"])
    assert answer.exit_code == 0 and json.loads(answer.output)["answer"] == sample["predicted"]
