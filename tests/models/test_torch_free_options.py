"""Model options validate without torch: a subprocess in which importing torch raises checks every zoo family and
the hf:/py: sources, and fails if anything so much as tried to import torch (or the py: factory's module)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from mmedge.models import FAMILY_TABLE

# Runs in a fresh interpreter. Every attempt to import torch is refused and recorded, so an attempt that some
# caller swallows (try/except ImportError) is still seen; the last line printed is the JSON the test reads.
SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    attempts = []

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "torch":
                attempts.append(name)
                raise ImportError(name + " is blocked in this test")

    sys.meta_path.insert(0, NoTorch())
    case = json.loads(sys.argv[1])

    from mmedge.errors import MmedgeError
    from mmedge.models import FAMILY_TABLE, family_config
    from mmedge.models.trust import trust_code

    trust_code()  # py: names are refused untrusted; trusted, their module must still not be imported to validate
    out = {"families": sorted(FAMILY_TABLE), "ok": {}, "errors": {}}
    for name, options in case["good"].items():
        out["ok"][name] = family_config(name, options).model_dump(mode="json")
    for name, options in case["bad"].items():
        try:
            family_config(name, options)
            out["errors"][name] = None
        except MmedgeError as exc:
            out["errors"][name] = [type(exc).__name__, str(exc)]
    if case.get("recipe"):
        from mmedge.recipe import ModelSection

        out["recipe"] = ModelSection(**case["recipe"]).family_name
    out["torch_attempts"] = attempts
    out["imported"] = sorted(m for m in sys.modules if m.startswith(("mmedge.models.", "mmedge.examples")))
    print(json.dumps(out))
""")

FACTORY = "py:mmedge.examples.bow_fusion:build"  # its module imports torch: validating options must not import it


def _run_without_torch(case: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(case)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hf_folder(tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))  # the options need no weights
    return folder


def test_every_family_validates_its_options_without_torch(tmp_path):
    hf = f"hf:{_hf_folder(tmp_path)}"
    good = {name: {} for name in FAMILY_TABLE}
    good["cnn-lstm"] = {"hidden_size": 24, "fusion_dim": [32, 16]}
    good["vit-transformer"] = {"dim": 16, "heads": 2, "fusion": "concat"}
    good[hf] = {"task": "fusion-head", "text_max_length": 16}
    good[FACTORY] = {"width": 8}
    out = _run_without_torch({"good": good, "bad": {}, "recipe": {"family": "vit-transformer", "options": {"dim": 32}}})
    assert out["torch_attempts"] == []
    assert out["families"] == sorted(FAMILY_TABLE)
    assert out["ok"]["cnn-lstm"]["fusion_dim"] == [32, 16] and out["ok"]["cnn-lstm"]["hidden_size"] == 24
    assert out["ok"]["vit-transformer"]["fusion"] == "concat"
    assert out["ok"][hf]["task"] == "fusion-head" and out["ok"][hf]["text_max_length"] == 16
    assert out["ok"][FACTORY] == {"width": 8}
    assert out["recipe"] == "vit-transformer"
    # no model module was loaded: no zoo family, not hf.py, not the factory's module
    model_modules = {decl.module for decl in FAMILY_TABLE.values()} | {"mmedge.models.hf", "mmedge.examples.bow_fusion"}
    assert not model_modules & set(out["imported"])


@pytest.mark.parametrize(
    ("family", "options", "phrase"),
    [
        ("cnn-lstm", {"hidden_sise": 3}, "hidden_sise: Extra inputs are not permitted"),
        ("cnn-lstm", {"fusion_dim": 0}, "fusion widths must be >= 1"),
        ("vit-transformer", {"dim": 30, "heads": 4}, "dim 30 must be divisible by 4 and by heads 4"),
        ("vit-transformer", {"patch_size": 5, "image_size": 28}, "image_size 28 is not divisible by patch_size 5"),
        ("cnn-lstm", {"channels": 3, "image_mean": [0.5, 0.5]}, "image_mean needs 3 value(s)"),
        ("hf", {"task": "captioning"}, "task: Input should be 'zero-shot' or 'fusion-head'"),
    ],
)
def test_bad_option_is_one_recipe_error_without_torch(tmp_path, family, options, phrase):
    name = f"hf:{_hf_folder(tmp_path)}" if family == "hf" else family
    out = _run_without_torch({"good": {}, "bad": {name: options}})
    assert out["torch_attempts"] == []
    kind, message = out["errors"][name]
    assert kind == "RecipeError"
    assert message.startswith(f"invalid options for model family '{name}': ") and phrase in message
    assert message.endswith("fix them in the recipe's model.options.") and "\n" not in message


def test_unknown_family_and_missing_hf_folder_are_clear_errors_without_torch(tmp_path):
    missing = f"hf:{tmp_path / 'nowhere'}"
    out = _run_without_torch({"good": {}, "bad": {"cnn_lstm": {}, missing: {}}})
    assert out["torch_attempts"] == []
    assert (
        out["errors"]["cnn_lstm"][0] == "UnknownNameError" and "did you mean 'cnn-lstm'" in out["errors"]["cnn_lstm"][1]
    )
    assert out["errors"][missing][0] == "InputPathError" and "has no config.json" in out["errors"][missing][1]


def test_guard_records_a_torch_import_even_when_it_is_swallowed():
    """The check itself: a torch import that a caller catches still shows in torch_attempts."""
    swallowed = "try:\n    import mmedge.models.cnn_lstm\nexcept ImportError:\n    pass\n"
    script = SCRIPT.replace('out["torch_attempts"] = attempts', swallowed + 'out["torch_attempts"] = attempts')
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps({"good": {}, "bad": {}})], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch" in json.loads(proc.stdout.strip().splitlines()[-1])["torch_attempts"]
