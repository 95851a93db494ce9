from pathlib import Path

import pytest
import yaml

from mmedge.errors import InputPathError, RecipeError, UnknownNameError
from mmedge.recipe import BUILTIN_RECIPES, load_recipe, parse_recipe
from mmedge.results import METRICS
from mmedge.steps.registry import STEP_TABLE, get_step


def minimal(**over):
    data = {"name": "r", "steps": [{"type": "train"}, {"type": "export"}, {"type": "bundle"}]}
    data.update(over)
    return data


@pytest.mark.parametrize("name", list(BUILTIN_RECIPES))
def test_builtin_recipes_load_and_round_trip(name):
    r = load_recipe(None if name == "digits-vqa" else name)
    again = parse_recipe(yaml.safe_load(r.dump()))
    assert again == r
    compress = [
        "train",
        "prune.structured",
        "distill",
        "export",
        "quantize.auto",
        "validate",
        "bench",
        "mobile",
        "bundle",
    ]
    assert [s.type for s in r.steps] == compress


def test_default_recipe_is_digits_vqa_cnn_lstm():
    r = load_recipe()
    assert r.name == "digits-vqa" and r.model.family == "cnn-lstm" and r.output_dir == Path("exported/digits-vqa")


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"step 1 \(train\): 'epochz' is not a known key"):
        parse_recipe(minimal(steps=[{"type": "train", "epochz": 3}]))
    with pytest.raises(RecipeError, match="'colour' is not a known key"):
        parse_recipe(minimal(colour="red"))


def test_wrong_type_is_named():
    with pytest.raises(RecipeError, match=r"epochs: input should be a valid integer.*'ten'"):
        parse_recipe(minimal(steps=[{"type": "train", "epochs": "ten"}]))


def test_unknown_step_type_suggests_the_closest():
    with pytest.raises(RecipeError, match="unknown type 'exprot'.*did you mean 'export'"):
        parse_recipe(minimal(steps=[{"type": "train"}, {"type": "exprot"}]))


def test_steps_out_of_order_are_refused():
    with pytest.raises(RecipeError, match=r"step 1 \(export\) needs a torch-checkpoint"):
        parse_recipe(minimal(steps=[{"type": "export"}, {"type": "train"}]))


def test_unknown_family_and_ep_are_refused():
    with pytest.raises(UnknownNameError, match="unknown model family"):
        parse_recipe(minimal(model={"family": "resnet"}))
    with pytest.raises(UnknownNameError, match="unknown execution provider 'tpu'"):
        parse_recipe(minimal(targets=["tpu"]))


def test_toml_recipe_loads(tmp_path):
    (tmp_path / "r.toml").write_text('name = "t"\n[[steps]]\ntype = "train"\nepochs = 2\n[[steps]]\ntype = "export"\n')
    r = load_recipe(tmp_path / "r.toml")
    assert r.steps[0].epochs == 2


def test_bad_yaml_and_missing_file_are_clear(tmp_path):
    (tmp_path / "r.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "r.yaml")
    with pytest.raises(InputPathError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")


def test_every_registered_step_has_a_test():
    """A step type `a.b` is covered when some test is named test_step_a_b_..."""
    text = "\n".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py"))
    missing = sorted(t for t in STEP_TABLE if f"def test_step_{t.replace('.', '_')}_" not in text)
    assert not missing, f"registered steps without a test_step_<type>_... test: {missing}"


def test_step_table_and_decorators_agree():
    """Every declared step is registered by the module the table names, under its own tag."""
    for tag, decl in STEP_TABLE.items():
        entry = get_step(tag)
        assert entry.tag == tag and entry.config_cls.type_tag == tag
        assert entry.run.__module__ == decl.module, f"{tag} is registered in {entry.run.__module__}, not {decl.module}"
        assert entry.metrics_cls is METRICS[tag]  # the typed metrics the reports read back
