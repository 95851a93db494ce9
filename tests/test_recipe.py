from pathlib import Path

import pytest
import yaml

from mmedge.errors import InputPathError, MmedgeError, RecipeError, UnknownNameError
from mmedge.recipe import BUILTIN_RECIPES, load_recipe, overrides, parse_recipe
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
    if name == "easy-vqa":  # ONNX Runtime's fusions for the transformer tower
        compress.insert(compress.index("export") + 1, "optimize")
    assert [s.type for s in r.steps] == compress


def test_default_recipe_is_digits_vqa_cnn_lstm():
    r = load_recipe()
    assert r.name == "digits-vqa" and r.model.family == "cnn-lstm" and r.output_dir == Path("bundles/digits-vqa")


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


def test_overrides_leave_a_recipe_as_it_is_when_no_option_is_given():
    data = minimal(model={"family": "cnn-lstm", "options": {"hidden_size": 32}}, data={"seed": 3})
    assert overrides()(data) == data


def test_overrides_set_source_task_user_data_bad_rows_and_output():
    data = minimal(model={"family": "cnn-lstm", "options": {"hidden_size": 32}}, data={"seed": 3, "test_images": 50})
    edited = overrides(
        model="hf:/models/clip", task="fusion-head", data_path=Path("d.jsonl"), skip_bad_rows=True, output=Path("o")
    )(data)
    assert edited["model"] == {"family": "cnn-lstm", "source": "hf:/models/clip", "options": {"task": "fusion-head"}}
    assert edited["data"] == {"name": "user", "path": "d.jsonl", "seed": 3, "skip_bad_rows": True}
    assert edited["output"] == "o"
    assert data["model"]["options"] == {"hidden_size": 32}  # the recipe data given is not changed


def test_overrides_keep_the_options_of_a_recipe_that_already_names_a_source():
    data = minimal(model={"source": "hf:/a", "options": {"task": "zero-shot", "prompt": "a photo of {}"}})
    assert overrides(model="hf:/b")(data)["model"] == {
        "source": "hf:/b",
        "options": {"task": "zero-shot", "prompt": "a photo of {}"},
    }
    # an onnx: source keeps the zoo options (its PyTorch steps are left out anyway)
    zoo = minimal(model={"options": {"hidden_size": 32}})
    assert overrides(model="onnx:m.onnx")(zoo)["model"] == {"options": {"hidden_size": 32}, "source": "onnx:m.onnx"}


def test_overrides_skip_bad_rows_alone_keeps_the_recipe_data():
    edited = overrides(skip_bad_rows=True)(minimal(data={"name": "digits-vqa", "seed": 1}))
    assert edited["data"] == {"name": "digits-vqa", "seed": 1, "skip_bad_rows": True}


def test_overrides_task_without_a_hugging_face_source_is_one_sentence():
    with pytest.raises(MmedgeError) as info:
        overrides(task="zero-shot")(minimal())
    assert str(info.value) == "--task applies to Hugging Face models; add --model hf:PATH or leave --task out."
    with pytest.raises(MmedgeError, match="--task applies to Hugging Face models"):
        load_recipe(None, overrides(model="onnx:m.onnx", task="zero-shot"))


def test_overrides_reach_the_parsed_recipe(tmp_path):
    r = load_recipe(None, overrides(data_path=tmp_path / "d.jsonl", output=tmp_path / "out"))
    assert r.data.name == "user" and r.data.path == tmp_path / "d.jsonl" and r.output_dir == tmp_path / "out"


def test_a_run_from_another_model_is_named_after_that_model():
    default = load_recipe(None, overrides(model="onnx:/m/ch_PP-OCRv4_rec_infer.onnx"))
    assert default.name == "ch_PP-OCRv4_rec_infer" and default.output_dir.name == "ch_PP-OCRv4_rec_infer"
    assert overrides(model="hf:/models/tiny clip")(minimal(name="digits-vqa-vit"))["name"] == "tiny-clip-vit"
    # a bundle's model.onnx is named after its bundle folder; --name and --data still win
    assert load_recipe(None, overrides(model="onnx:exported/digits-vqa/model.onnx")).name == "digits-vqa-model"
    assert load_recipe(None, overrides(model="onnx:/m/det.onnx", name="det-int8")).name == "det-int8"
    assert load_recipe(None, overrides(model="onnx:/m/det.onnx", data_path=Path("/d/shapes.jsonl"))).name == "shapes"
    # a recipe that names its own source keeps its name
    assert load_recipe(None, overrides()).name == "digits-vqa"
