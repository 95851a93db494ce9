"""Your own data (issue 15, items 1-3): colour pictures keep their colour and size, runs and bundles are named after
the data, every bad row is reported at once, and a misspelt label is refused or named."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmedge.data import DataConfig, load_dataset
from mmedge.data.user import DataError
from tests.conftest import TINY, tiny_train_config

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220)}


def shapes_manifest(folder: Path, per_colour: int = 12, size: int = 64, extra_rows=()) -> Path:
    """A JSONL manifest of ``size`` x ``size`` RGB PNGs: a circle or a square in one of three colours on a light
    background, asked "what color is the shape?" (answer: the colour)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for colour, rgb in COLOURS.items():
        for k in range(per_colour):
            im = Image.new("RGB", (size, size), (235, 235, 225))
            m = size // 8
            box = (m + k % 5, m + k % 3, size - m - 2 + k % 2, size - m - k % 3)
            (ImageDraw.Draw(im).ellipse if k % 2 else ImageDraw.Draw(im).rectangle)(box, fill=rgb)
            name = f"img/{colour}_{k}.png"
            im.save(folder / name)
            rows.append({"image": name, "text": "what color is the shape?", "label": colour})
    path = folder / "shapes.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*rows, *extra_rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return shapes_manifest(tmp_path_factory.mktemp("shapes"))


def _fit(manifest: Path, options: dict | None = None, family: str = "cnn-lstm"):
    from mmedge.train import build_for_data

    return build_for_data(family, {**TINY[family], **(options or {})}, DataConfig(name="user", path=manifest))


# -- item 1: the model takes the data's size and colour, normalized by the training split's statistics


def test_zoo_model_takes_colour_images_at_the_data_size_with_train_split_statistics(shapes):
    import torch

    data, vocab, model = _fit(shapes)
    spec = model.spec()
    assert spec.input("image").shape == ("batch", 3, 64, 64)
    prep = spec.image
    assert (prep.channels, prep.height, prep.width) == (3, 64, 64) and prep.to_json()["color"] == "rgb"
    assert prep.foreground == "natural"  # not a digit: predict offers no --invert
    pixels = data.train.pictures(np.arange(len(data.train.images)), prep).astype(np.float64)  # (M, 3, 64, 64)
    assert len(prep.mean) == 3 and len(prep.std) == 3
    np.testing.assert_allclose(prep.mean, pixels.mean((0, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(prep.std, pixels.std((0, 2, 3)), atol=1e-4)
    everything = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in data_images(shapes)]) / 255.0
    assert not np.allclose(prep.mean, everything.mean((0, 1, 2)), atol=1e-4)  # train only, not every image
    ids, mask = vocab.encode(["what color is the shape?"] * 2)
    x = torch.from_numpy(data.train.pictures(np.arange(2), prep))
    assert x.shape == (2, 3, 64, 64) and model(x, torch.from_numpy(ids), torch.from_numpy(mask)).shape == (2, 3)
    assert model.image_format["source"] == {
        "image_size": "data",
        "channels": "data",
        "image_mean": "training split",
        "image_std": "training split",
    }


def data_images(manifest: Path) -> list[Path]:
    return [manifest.parent / json.loads(line)["image"] for line in manifest.read_text().splitlines()]


def test_trained_checkpoint_rebuilds_with_the_fitted_colour_input(shapes, tmp_path):
    from mmedge.models.checkpoint import load_checkpoint
    from mmedge.train import run_training

    path, metrics = run_training(
        "cnn-lstm", TINY["cnn-lstm"], DataConfig(name="user", path=shapes), tiny_train_config(), tmp_path / "ck", "off"
    )
    spec = load_checkpoint(path).spec
    assert spec.input("image").shape == ("batch", 3, 64, 64) and spec.image.channels == 3
    assert metrics["image_format"]["channels"] == 3 and metrics["image_format"]["notes"] == []


def test_vit_takes_the_data_size_rounded_to_its_patch_size(shapes):
    _, _, model = _fit(shapes, family="vit-transformer")
    assert model.spec().input("image").shape == ("batch", 3, 63, 63)  # 64 is no multiple of patch_size 7
    assert any("rounded down to 63" in n for n in model.image_format["notes"])


def test_grayscale_forced_on_colour_data_is_stated_on_the_console_and_in_the_results(shapes, capsys):
    _, _, model = _fit(shapes, {"channels": 1})
    assert model.spec().input("image").shape == ("batch", 1, 64, 64) and len(model.spec().image.mean) == 1
    err = capsys.readouterr().err
    assert "model.options.channels 1 but the training images are colour" in err
    assert model.image_format["source"]["channels"] == "recipe"
    assert any("sees them as grayscale" in n for n in model.image_format["notes"])


def test_gray_user_pictures_get_one_channel_and_builtin_digits_keep_mnist_statistics(tmp_path):
    from mmedge.train import build_for_data
    from tests.conftest import digits_manifest

    manifest = digits_manifest(tmp_path / "d", digits=(0, 1), per_class=8, size=32)  # gray digits saved as RGB
    prep = _fit(manifest)[2].spec().image
    assert (prep.channels, prep.height) == (1, 32) and prep.mean != (0.1307,)
    prep = build_for_data("cnn-lstm", TINY["cnn-lstm"], DataConfig())[2].spec().image
    assert (prep.channels, prep.height, prep.mean, prep.foreground) == (1, 28, (0.1307,), "light-on-dark")


def test_a_fresh_model_built_with_a_fitted_models_image_options_takes_the_same_input(shapes):
    from mmedge.models import build_model
    from mmedge.models.options import image_options

    _, vocab, model = _fit(shapes)
    fitted = image_options(model.current_options())
    assert fitted["channels"] == 3 and fitted["image_size"] == 64 and "hidden_size" not in fitted
    student = build_model("cnn-lstm", {**fitted, "hidden_size": 8}, len(vocab), 3)
    assert student.spec().input("image").shape == ("batch", 3, 64, 64) and student.spec().image == model.spec().image


def test_invert_hint_only_for_models_trained_on_light_on_dark_digits():
    from mmedge.data.images import ImagePreprocessing
    from mmedge.runtime.predict import polarity_note

    bright_border = np.ones((1, 3, 8, 8), np.float32)
    assert polarity_note(ImagePreprocessing(channels=3, foreground="natural"), bright_border, False) is None
    assert "--invert" in polarity_note(ImagePreprocessing(), bright_border[:, :1], False)


# -- item 2: runs and bundles are named after the data, or --name


def test_a_run_on_user_data_is_named_after_the_data_not_digits_vqa(shapes):
    from mmedge.recipe import load_recipe, overrides

    r = load_recipe(None, overrides(data_path=shapes))
    assert r.name == "shapes" and r.output_dir.name == "shapes" and "digits-vqa" not in str(r.output_dir)
    vit = load_recipe("vit-transformer", overrides(data_path=shapes))
    assert vit.name == "shapes-vit" and vit.output_dir.name == "shapes-vit"  # one run folder per recipe + data
    named = load_recipe(None, overrides(data_path=shapes, name="my-shapes"))
    assert named.name == "my-shapes" and named.output_dir.name == "my-shapes"
    assert load_recipe(None, overrides(data_path=shapes, output="b")).output_dir == Path("b")


def test_data_name_is_the_manifest_stem_or_folder_name(tmp_path):
    from mmedge.data import data_name

    (tmp_path / "easy vqa").mkdir()
    assert data_name(tmp_path / "easy vqa" / "questions.jsonl") == "questions"
    assert data_name(tmp_path / "easy vqa" / "train.csv") == "easy-vqa-train"  # a generic stem gets its folder
    assert data_name(tmp_path / "easy vqa") == "easy-vqa"


def test_cli_run_name_option_names_the_run(shapes):
    from typer.testing import CliRunner

    from mmedge_cli.main import app

    res = CliRunner().invoke(app, ["run", "--data", str(shapes), "--name", "colours", "--dry-run", "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["name"] == "colours"


# -- item 3: every bad row at once, labels from a declared set or named when rare, skipped rows counted


def test_every_bad_row_is_reported_in_one_error_with_the_count(tmp_path):
    bad = [{"image": f"img/none_{i}.png", "text": "x", "label": "red"} for i in range(25)]
    manifest = shapes_manifest(tmp_path, per_colour=3, size=16, extra_rows=[*bad, {"image": "img/red_0.png"}])
    with pytest.raises(DataError) as exc:
        load_dataset(DataConfig(name="user", path=manifest))
    message = str(exc.value)
    assert "shapes.jsonl has 26 bad rows" in message and "and 6 more" in message
    assert "row 10 names the image 'img/none_0.png'" in message and "row 29 names" in message
    assert "row 35" not in message  # 20 named, the rest counted
    assert message.count(".") >= 1 and "--skip-bad-rows" in message


def test_a_misspelt_label_is_refused_with_a_declared_label_set(tmp_path):
    typo = {"image": "img/red_0.png", "text": "what color is the shape?", "label": "rde"}
    manifest = shapes_manifest(tmp_path, per_colour=4, size=16, extra_rows=[typo])
    with pytest.raises(DataError, match=r"row 13 of shapes.jsonl has the label 'rde'.*did you mean 'red'"):
        load_dataset(DataConfig(name="user", path=manifest, labels=("red", "green", "blue")))


def test_a_misspelt_label_without_a_declared_set_is_named_as_rare(tmp_path, capsys):
    typo = {"image": "img/typo.png", "text": "what color is the shape?", "label": "rde"}
    manifest = shapes_manifest(tmp_path, per_colour=12, size=16, extra_rows=[typo])
    Image.new("RGB", (16, 16), COLOURS["red"]).save(tmp_path / "img" / "typo.png")
    load_dataset(DataConfig(name="user", path=manifest, seed=7))
    err = capsys.readouterr().err
    assert "fewer than 5 training examples: 'rde' (1; did you mean 'red'?)" in err
    assert "data.labels" in err


def test_skipped_rows_are_counted_on_the_console_in_one_line(tmp_path, capsys):
    bad = [{"image": "img/none.png", "text": "x", "label": "red"}, {"text": "no image", "label": "red"}]
    manifest = shapes_manifest(tmp_path, per_colour=4, size=16, extra_rows=bad)
    data = load_dataset(DataConfig(name="user", path=manifest, skip_bad_rows=True, seed=3))
    assert [s["row"] for s in data.skipped] == [13, 14]
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "skipped" in ln]
    assert lines == ["note: 2 bad rows of shapes.jsonl were skipped (--skip-bad-rows): row(s) 13, 14."]


def test_skipped_rows_are_counted_in_the_bundle_manifest_metrics():
    from types import SimpleNamespace

    from mmedge.bundle.writer import shipped_metrics
    from mmedge.results import ModelMetrics, SkippedRows

    ref = ModelMetrics(skipped_rows=SkippedRows(count=2, rows=[{"row": 13, "reason": "has no image"}]))
    record = SimpleNamespace(config=SimpleNamespace(type="train"), result=SimpleNamespace(metrics=ref))
    ctx = SimpleNamespace(records=[record], reference=lambda: record, latest=lambda t: None)
    model = Path(__file__)  # any file: the figures read its size
    out = shipped_metrics(ctx, model)
    assert out["skipped_rows"]["count"] == 2


@pytest.mark.slow
def test_readme_data_path_on_colour_shapes_ships_an_rgb_bundle_named_after_the_data(tmp_path, monkeypatch):
    """`mmedge run RECIPE --data shapes.jsonl --skip-bad-rows` as the README writes it, on colour pictures: the bundle
    takes RGB at the data's size, is named after the data, counts the skipped row, and predict offers no --invert."""
    import yaml
    from typer.testing import CliRunner

    from mmedge_cli.main import app

    monkeypatch.chdir(tmp_path)
    missing = {"image": "img/none.png", "text": "what color is the shape?", "label": "red"}
    manifest = shapes_manifest(tmp_path / "shapes", per_colour=10, size=32, extra_rows=[missing])
    steps = [{"type": "train", "epochs": 2, "batch_size": 16, "augment": False}, {"type": "export"}]
    steps += [{"type": "validate", "ablation": False}, {"type": "bundle", "samples": 2}]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "tiny", "model": {"options": TINY["cnn-lstm"]}, "steps": steps}))
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(recipe), "--data", str(manifest), "--skip-bad-rows"])
    assert res.exit_code == 0, res.output
    assert "1 bad row of shapes.jsonl was skipped (--skip-bad-rows): row(s) 31" in res.output
    results = json.loads((tmp_path / ".mmedge/runs/shapes-tiny/results.json").read_text())
    assert results["recipe"]["name"] == "shapes-tiny"
    assert results["steps"][0]["metrics"]["image_format"]["channels"] == 3
    bundle = tmp_path / next(ln.split(": ", 1)[1] for ln in res.output.splitlines() if ln.startswith("bundle: "))
    assert bundle.name == "shapes-tiny"
    shipped = json.loads((bundle / "manifest.json").read_text())
    image = shipped["preprocessing"]["image"]
    assert (image["color"], image["height"], image["foreground"], len(image["mean"])) == ("rgb", 32, "natural", 3)
    assert shipped["inputs"][0]["shape"] == ["batch", 3, 32, 32] and shipped["name"] == "shapes-tiny"
    assert shipped["metrics"]["skipped_rows"]["count"] == 1 and shipped["labels"] == ["blue", "green", "red"]
    sample = json.loads((bundle / "samples/samples.json").read_text())[0]
    answer = runner.invoke(
        app, ["predict", str(bundle), "--image", str(bundle / sample["image"]), "--text", sample["text"], "--json"]
    )
    assert answer.exit_code == 0, answer.output
    assert json.loads(answer.output)["notes"] == []  # a light background is no digit to invert
    # On the device the data's build-time path does not exist: validate checks the bundle's own samples, and scores
    # a data set only where one is given with --data (the path recorded at build time is never read).
    moved = tmp_path / "elsewhere"
    (tmp_path / "shapes").rename(moved)
    alone = runner.invoke(app, ["validate", str(bundle), "--json"])
    assert alone.exit_code == 0, alone.output
    checked = json.loads(alone.stdout)
    assert checked["bundle_samples"]["samples"] == 2 and "test" not in checked
    assert any("pass --data PATH" in n for n in checked["notes"])
    clean = moved / "clean.jsonl"  # the manifest as it lives on the device, without the row that was skipped
    clean.write_text("".join(ln for ln in (moved / manifest.name).read_text().splitlines(True) if "none.png" not in ln))
    given = runner.invoke(app, ["validate", str(bundle), "--data", str(clean), "--no-ablation"])
    assert given.exit_code == 0, given.output
    assert "test questions" in given.output


@pytest.mark.slow
def test_a_distillation_student_of_another_width_takes_the_teachers_colour_input(tmp_path, capsys):
    from mmedge.models.checkpoint import load_checkpoint
    from mmedge.pipeline import run_recipe
    from mmedge.recipe import parse_recipe

    manifest = shapes_manifest(tmp_path / "shapes", per_colour=8, size=32)
    student = {**TINY["cnn-lstm"], "hidden_size": 16}
    recipe = parse_recipe(
        {
            "name": "colour-student",
            "model": {"family": "cnn-lstm", "options": TINY["cnn-lstm"]},
            "data": {"name": "user", "path": str(manifest)},
            "steps": [
                {"type": "train", "epochs": 1, "batch_size": 16, "augment": False},
                {"type": "distill", "epochs": 1, "batch_size": 16, "student": student},
            ],
            "workdir": str(tmp_path / "runs"),
        }
    )
    records = run_recipe(recipe, progress="lines")
    teacher, pupil = (load_checkpoint(r.result.artifact.path) for r in records)
    assert pupil.options["hidden_size"] == 16 and teacher.options["hidden_size"] != 16
    for key in ("image_size", "channels", "image_mean", "image_std", "foreground"):
        assert pupil.options.get(key) == teacher.options.get(key), key
    assert teacher.options.get("channels") == 3
    err = capsys.readouterr().err
    assert "train epoch 1/1" in err and "distill epoch 1/1" in err  # each step's epochs under its own name
