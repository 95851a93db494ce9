"""py:package.module:factory — any PyTorch module, behind --trust-code; the README's worked example runs here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mmedge_cli.main import app

runner = CliRunner()
EXAMPLE = "py:mmedge.examples.bow_fusion:build"


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    # setenv records the variable's state before the test, so --trust-code cannot leak into the next test
    monkeypatch.setenv("MMEDGE_TRUST_CODE", "0")


def test_py_model_is_refused_without_trust_code():
    res = runner.invoke(app, ["run", "--model", EXAMPLE, "--dry-run"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "importing it runs its code" in res.output and "--trust-code" in res.output
    assert "trust_remote_code" in res.output


def test_py_model_in_a_recipe_file_is_refused_without_trust_code(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "x", "model": {"source": EXAMPLE}, "steps": [{"type": "train"}]}))
    res = runner.invoke(app, ["run", str(recipe), "--dry-run"])
    assert res.exit_code == 2 and "--trust-code" in res.output


@pytest.mark.slow
def test_worked_example_trains_exports_quantizes_validates_and_bundles(tmp_path, monkeypatch):
    """The README's command for a py: model, on digits-vqa, down to a bundle that predicts."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "bow",
                "data": {"name": "digits-vqa", "test_images": 200, "val_images": 100},
                "budgets": {"max_accuracy_drop": 3},
                "steps": [
                    {"type": "train", "epochs": 8, "lr": 0.005},
                    {"type": "prune.structured"},
                    {"type": "export"},
                    {"type": "quantize.dynamic", "tolerance": {"min_agreement": 0.9, "max_accuracy_drop": 3}},
                    {"type": "validate"},
                    {"type": "bench", "runs": 5, "warmup": 1, "batch_sizes": [1]},
                    {"type": "bundle", "samples": 4},
                ],
            }
        )
    )
    res = runner.invoke(app, ["run", str(recipe), "--model", EXAMPLE, "--trust-code", "--out", "bundle"])
    assert res.exit_code == 0, res.output
    assert "skipping prune.structured" in res.output
    results = json.loads((tmp_path / ".mmedge" / "runs" / "bow" / "results.json").read_text())
    by_type = {s["type"]: s["metrics"] for s in results["steps"]}
    assert by_type["train"]["test"]["accuracy"] > 0.5  # above the ~47 % text-only prior: it uses the image
    assert by_type["export"]["max_abs_diff"] < 1e-4
    assert (
        by_type["quantize.dynamic"]["ops"].get("MatMulInteger", 0)
        + by_type["quantize.dynamic"]["ops"].get("DynamicQuantizeMatMul", 0)
        > 0
    )
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["family"] == "bow-fusion"
    assert manifest["model"]["session_config"] == {"session.set_denormal_as_zero": "1"}
    sample = json.loads((tmp_path / "bundle" / "samples" / "samples.json").read_text())[0]
    answer = runner.invoke(
        app,
        ["predict", "bundle", "--image", f"bundle/{sample['image']}", "--text", sample["text"], "--json"],
    )
    assert answer.exit_code == 0 and json.loads(answer.output)["answer"] == sample["predicted"]


def test_factory_reference_and_return_value_are_checked(tmp_path, monkeypatch):
    from mmedge.errors import RecipeError
    from mmedge.models import build_model
    from mmedge.models.trust import trust_code

    trust_code()
    (tmp_path / "my_factories.py").write_text("def wrong(vocab_size, num_classes):\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RecipeError, match="must return \\(module, ModelSpec\\)"):
        build_model("py:my_factories:wrong", {}, vocab_size=10, num_classes=3)
    with pytest.raises(RecipeError, match="has no function 'missing'"):
        build_model("py:my_factories:missing", {}, vocab_size=10, num_classes=3)
    with pytest.raises(RecipeError, match="cannot import no_such_module"):
        build_model("py:no_such_module:build", {}, vocab_size=10, num_classes=3)
    with pytest.raises(RecipeError, match=r"the factory py:os:getcwd failed \(TypeError"):
        build_model("py:os:getcwd", {}, vocab_size=10, num_classes=3)
    with pytest.raises(RecipeError, match="not a factory reference"):
        build_model("py:not a module", {}, vocab_size=10, num_classes=3)


def test_factory_options_are_passed_through(monkeypatch):
    from mmedge.models import build_model
    from mmedge.models.trust import trust_code

    trust_code()
    model = build_model(EXAMPLE, {"width": 8}, vocab_size=20, num_classes=4)
    assert model.embed.weight.shape == (20, 8) and model.spec().family == "bow-fusion"
    assert model.current_options() == {"width": 8}
    import torch

    out = model(torch.rand(2, 1, 28, 28), torch.randint(0, 20, (2, 5)), torch.ones(2, 5, dtype=torch.int64))
    assert out.shape == (2, 4) and np.isfinite(out.detach().numpy()).all()
