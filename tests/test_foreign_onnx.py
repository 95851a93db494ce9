"""A model mmedge did not write (`mmedge run --model onnx:PATH`): built here with onnx.helper, outside mmedge's
exporter — a dynamic batch dim, one weight as a Constant node, MatMul and Gemm for quantization to work on — and
taken through optimize, quantize, bench, mobile and bundle, judged by fidelity to the source model."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mmedge.bundle.manifest import load_bundle
from mmedge.errors import MmedgeError, RecipeError
from mmedge.pipeline import run_recipe, summary_lines
from mmedge.recipe import parse_recipe
from tests.conftest import onnx_model

FEATURES, HIDDEN, CLASSES = 64, 96, 10


def scorer_onnx(path, seq: bool = False, opset: int = 18):
    """x (batch, [seq,] 64) -> MatMul by a Constant-node weight -> Add -> Relu -> Gemm (initializer weight) ->
    scores (batch, 10); with ``seq`` the features are averaged over an unknown 'seq' axis first."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1 / np.sqrt(FEATURES), (FEATURES, HIDDEN)).astype(np.float32)
    b1 = rng.normal(0, 0.1, HIDDEN).astype(np.float32)
    w2 = rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, CLASSES)).astype(np.float32)
    b2 = np.linspace(-1, 1, CLASSES).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1"))]
    first = "x"
    if seq:
        nodes.append(helper.make_node("ReduceMean", ["x", "axes"], ["pooled"], keepdims=0))
        first = "pooled"
    nodes += [
        helper.make_node("MatMul", [first, "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    if seq:
        inits.append(numpy_helper.from_array(np.asarray([1], dtype=np.int64), "axes"))
    shape = ["batch", "seq", FEATURES] if seq else ["batch", FEATURES]
    graph = helper.make_graph(
        nodes,
        "scorer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    onnx.save(onnx_model(graph, opsets=(("", opset),)), str(path))
    return path


def recipe_for(tmp_path, source, steps, data=None, load=None):
    raw_steps = ([{"type": "load.onnx", "path": str(source), **load}] if load else []) + steps
    return parse_recipe(
        {
            "name": "foreign",
            "model": {"source": f"onnx:{source}"},
            **({"data": data} if data else {}),
            "steps": raw_steps,
            "output": str(tmp_path / "bundle"),
            "workdir": str(tmp_path / "runs"),
        }
    )


BENCH = {"type": "bench", "runs": 5, "warmup": 1, "batch_sizes": [1, 4], "max_seconds": 2}


def test_foreign_onnx_goes_through_every_onnx_step_judged_by_fidelity_on_synthetic_inputs(tmp_path):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    steps = [
        {"type": "optimize"},
        {"type": "quantize.dynamic"},
        {"type": "validate"},
        BENCH,
        {"type": "mobile"},
        {"type": "bundle", "samples": 4},
    ]
    records = run_recipe(recipe_for(tmp_path, model, steps), progress="off")
    assert [r.config.type for r in records] == ["load.onnx", *(s["type"] for s in steps)]
    loaded = records[0].result.metrics
    assert loaded.mmedge_metadata is False and loaded.test is None
    assert loaded.chain_inputs.kind == "synthetic" and loaded.chain_inputs.samples == 16
    assert loaded.constants_to_initializers == 1  # the Constant-node weight, so that int8 can reach it
    quantized = records[2].result.metrics
    assert quantized.gate is None and quantized.fidelity is not None
    assert any("Integer" in op or "DynamicQuantize" in op for op in quantized.ops)  # int8 really happened
    assert quantized.size_bytes < quantized.input_size_bytes
    fid = records[3].result.metrics.fidelity  # validate: the shipped model against the source model
    assert fid.against == "load.onnx" and fid.inputs == "synthetic" and fid.samples == 16
    (scores,) = fid.outputs
    assert scores.name == "scores" and scores.shape == [16, CLASSES]
    assert 0.99 <= scores.cosine <= 1.0 and scores.max_abs_diff < 0.5 and scores.argmax_agreement >= 0.9
    assert records[4].result.metrics.inputs.startswith("synthetic")  # bench times the chain's inputs
    report = (tmp_path / "bundle" / "report.md").read_text()
    assert "**synthetic random values, not real data" in report and "same argmax" in report
    bundle = load_bundle(tmp_path / "bundle")  # checksums verified
    assert bundle.verify() == []
    m = bundle.manifest
    assert m["model"]["lineage"] == ["load.onnx", "optimize", "quantize.dynamic", "bundle"]
    assert m["model"]["session_config"] == {"session.set_denormal_as_zero": "1"}  # what its figures assume
    assert m["inputs"][0]["name"] == "x" and m["labels"] is None
    assert m["metrics"]["fidelity"]["inputs"] == "synthetic" and m["metrics"]["inputs"]["kind"] == "synthetic"
    with np.load(bundle.path(m["samples"]["tensors"])) as npz:
        assert npz["x"].shape == (4, FEATURES)
    assert (tmp_path / "bundle" / "model.ort").is_file()
    assert model.is_file()


def test_console_names_synthetic_inputs_and_the_summary_gives_fidelity(tmp_path, capsys):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    recipe = recipe_for(tmp_path, model, [{"type": "quantize.dynamic"}])
    records = run_recipe(recipe, progress="off")
    err = capsys.readouterr().err
    assert "note:" in err and "synthetic random values" in err and "--inputs FILE.npz" in err
    summary = "\n".join(summary_lines(records, recipe))
    assert "fidelity to the source model on 16 synthetic inputs" in summary


def test_foreign_onnx_is_quantized_statically_on_the_users_inputs(tmp_path):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "inputs.npz", x=rng.random((32, FEATURES), dtype=np.float32))
    steps = [{"type": "quantize.static"}, BENCH, {"type": "bundle", "samples": 3}]
    recipe = recipe_for(tmp_path, model, steps, load={"inputs": str(tmp_path / "inputs.npz")})
    static = recipe.steps[1]
    assert static.calibration.data == tmp_path / "inputs.npz"  # calibrates on the user's inputs
    records = run_recipe(recipe, progress="off")
    loaded = records[0].result.metrics
    assert loaded.chain_inputs.kind == "user" and loaded.chain_inputs.samples == 32
    q = records[1].result.metrics
    assert q.static_nodes > 0 and q.calibration["samples_used"] == 32
    assert q.fidelity.inputs == "user" and q.fidelity.samples == 32
    assert q.fidelity.min_cosine >= 0.99 and q.fidelity.argmax_agreement >= 0.9
    assert str(tmp_path / "inputs.npz") in records[2].result.metrics.inputs
    m = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert m["metrics"]["fidelity"]["inputs"] == "user"
    assert "inputs from" in (tmp_path / "bundle" / "report.md").read_text()


def test_foreign_onnx_without_inputs_is_refused_by_quantize_static_and_gets_dynamic_for_auto(tmp_path):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    with pytest.raises(RecipeError, match="quantize.static has no data to calibrate on; pass real inputs"):
        run_recipe(recipe_for(tmp_path, model, [{"type": "quantize.static"}]), progress="off")
    # the built-in recipe's quantize.auto chooses on validation accuracy: a model without data gets quantize.dynamic,
    # and the skipped steps say so (`mmedge run` prints them)
    recipe = recipe_for(tmp_path, model, [{"type": "export"}, {"type": "quantize.auto"}, {"type": "validate"}])
    assert [s.type for s in recipe.steps] == ["load.onnx", "quantize.dynamic", "validate"]
    assert recipe.skipped_steps[0] == "export" and recipe.skipped_steps[1].startswith("quantize.auto (no data")


def test_foreign_onnx_with_an_unknown_non_batch_dim_is_refused_with_every_dim_listed(tmp_path):
    model = scorer_onnx(tmp_path / "seq.onnx", seq=True)
    with pytest.raises(MmedgeError) as err:
        run_recipe(recipe_for(tmp_path, model, [BENCH]), progress="off")
    message = str(err.value)
    assert "'seq' (x[1])" in message and "--dim seq=N" in message and "--inputs FILE.npz" in message
    assert "batch" not in message  # the batch needs no size
    recipe = recipe_for(tmp_path, model, [BENCH, {"type": "mobile"}], load={"dims": {"seq": 5}})
    records = run_recipe(recipe, progress="off")
    assert records[0].result.metrics.chain_inputs.shapes == {"x": [16, 5, FEATURES]}
    assert records[2].result.metrics.fixed_dims == {"batch": 1, "seq": 5}  # the sizes given reach mobile


def test_reloading_an_export_of_user_data_with_the_digits_recipe_is_refused(tmp_path, tiny_onnx):
    from mmedge.runtime.session import model_metadata, set_metadata

    model = onnx.load(str(tiny_onnx["cnn-lstm"]))
    set_metadata(model, {**model_metadata(model), "mmedge.data": json.dumps({"name": "user", "path": "/d/easy.jsonl"})})
    onnx.save(model, str(tmp_path / "easy.onnx"))
    with pytest.raises(RecipeError) as err:
        run_recipe(recipe_for(tmp_path, tmp_path / "easy.onnx", [{"type": "validate"}]), progress="off")
    message = str(err.value)
    assert "was trained on the user data at /d/easy.jsonl" in message
    assert "the built-in 'digits-vqa' data" in message and "--data /d/easy.jsonl" in message
    user = {"name": "user", "path": str(tmp_path / "other.jsonl")}
    with pytest.raises(RecipeError, match="trained on the built-in 'digits-vqa' data"):
        run_recipe(recipe_for(tmp_path, tiny_onnx["cnn-lstm"], [{"type": "validate"}], data=user), progress="off")


def test_cli_run_takes_the_users_inputs_and_refuses_them_without_an_onnx_model(tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from mmedge_cli.main import app

    monkeypatch.chdir(tmp_path)
    model = scorer_onnx(tmp_path / "scorer.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(2).random((24, FEATURES), dtype=np.float32))
    steps = [{"type": "quantize.static"}, BENCH, {"type": "bundle", "samples": 2}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "mine", "steps": steps}))
    runner = CliRunner()
    res = runner.invoke(app, ["run", "r.yaml", "--model", f"onnx:{model}", "--inputs", "x.npz", "--out", "b"])
    assert res.exit_code == 0, res.output
    assert "fidelity to the source model on 24 user inputs" in res.output and "synthetic" not in res.output
    assert load_bundle(tmp_path / "b").manifest["metrics"]["fidelity"]["samples"] == 24
    res = runner.invoke(app, ["run", "r.yaml", "--dim", "seq=4"])
    assert res.exit_code == 2 and "add --model onnx:PATH" in res.output and "Traceback" not in res.output


def test_the_users_inputs_size_the_open_dims_of_the_mobile_step(tmp_path):
    model = scorer_onnx(tmp_path / "seq.onnx", seq=True)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(3).random((6, 7, FEATURES), dtype=np.float32))
    recipe = recipe_for(tmp_path, model, [{"type": "mobile"}], load={"inputs": str(tmp_path / "x.npz")})
    records = run_recipe(recipe, progress="off")
    assert records[1].result.metrics.fixed_dims == {"batch": 1, "seq": 7}


def test_a_model_whose_open_dims_name_nothing_gets_its_fixed_shapes_from_the_users_inputs(tmp_path):
    """Both image dims of PP-OCR's text classifier are called '?', and its batch is -1: three independent
    dimensions, each sized from the user's arrays (the batch fixed at 1), through mobile into the manifest."""
    from tests.conftest import relu_onnx

    model = relu_onnx(tmp_path / "cls.onnx", (-1, 3, "?", "?"))
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(4).standard_normal((5, 3, 6, 10)).astype(np.float32))
    steps = [{"type": "mobile"}, {"type": "bundle", "samples": 2}]
    records = run_recipe(recipe_for(tmp_path, model, steps, load={"inputs": str(tmp_path / "x.npz")}), progress="off")
    assert records[1].result.metrics.fixed_dims == {"x[0]": 1, "x[2]": 6, "x[3]": 10}
    variants = {v["file"]: v for v in load_bundle(tmp_path / "bundle").manifest["variants"]}
    assert variants["model.fixed.ort"]["inputs"] == {"x": [1, 3, 6, 10]}
    assert variants["model.fixed.onnx"]["inputs"] == {"x": [1, 3, 6, 10]}
    with pytest.raises(MmedgeError) as err:  # no inputs: both '?' are named, each on its own axis
        run_recipe(recipe_for(tmp_path / "b", model, [BENCH]), progress="off")
    assert "'x[2]' (x[2]), 'x[3]' (x[3])" in str(err.value) and "--dim 'x[2]=N' --dim 'x[3]=N'" in str(err.value)


def test_a_model_with_nothing_to_quantize_dynamically_goes_on_unchanged_and_says_why(tmp_path, capsys):
    from mmedge.bundle.manifest import sha256
    from tests.conftest import relu_onnx

    model = relu_onnx(tmp_path / "conv-like.onnx", ("batch", 4))
    records = run_recipe(recipe_for(tmp_path, model, [{"type": "quantize.dynamic"}]), progress="off")
    m = records[1].result.metrics
    assert "found no Attention/Gather/LSTM/MatMul node to quantize in the model (its most common ops: 1 Relu)" in (
        m.nothing_quantized
    )
    assert "quantize.static" in m.nothing_quantized and m.size_bytes == m.input_size_bytes
    assert sha256(records[1].folder / "model.onnx") == sha256(records[0].folder / "model.onnx")  # not a bigger copy
    assert "note: quantize.dynamic: dynamic int8 found no" in capsys.readouterr().err


def test_validate_checks_a_foreign_bundle_on_its_samples_alone_and_fails_when_they_move(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mmedge.bundle.manifest import sha256
    from mmedge_cli.main import app

    model = scorer_onnx(tmp_path / "scorer.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(5).random((12, FEATURES), dtype=np.float32))
    steps = [{"type": "quantize.dynamic"}, {"type": "bundle", "samples": 6}]
    run_recipe(recipe_for(tmp_path, model, steps, load={"inputs": str(tmp_path / "x.npz")}), progress="off")
    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(tmp_path / "bundle")])
    assert res.exit_code == 0, res.output
    assert "bundle samples: 6 run (taken from" in res.output and "argmax agreement 100.00%" in res.output
    res = runner.invoke(app, ["validate", str(tmp_path / "bundle"), "--data", str(tmp_path / "x.npz")])
    assert res.exit_code == 2 and "drop --data" in res.output
    res = runner.invoke(app, ["validate", str(model)])
    assert res.exit_code == 2 and "validate the bundle" in res.output and "Traceback" not in res.output
    # outputs that no longer match (as on a CPU whose kernels answer otherwise): one sentence, exit 1
    bundle = tmp_path / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    with np.load(bundle / "samples" / "outputs.npz") as npz:
        moved = {k: npz[k][:, ::-1].copy() for k in npz.files}
    np.savez(bundle / "samples" / "outputs.npz", **moved)
    manifest["files"]["samples/outputs.npz"]["sha256"] = sha256(bundle / "samples" / "outputs.npz")
    manifest["files"]["samples/outputs.npz"]["bytes"] = (bundle / "samples" / "outputs.npz").stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["validate", str(bundle)])
    assert res.exit_code == 1, res.output
    assert "does not reproduce the outputs it recorded at build time" in res.output and "Traceback" not in res.output


def test_smoothing_a_foreign_model_calibrates_on_the_users_inputs_and_is_refused_without_them(tmp_path):
    model = scorer_onnx(tmp_path / "scorer.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(6).random((20, FEATURES), dtype=np.float32))
    steps = [{"type": "quantize.dynamic", "smooth_alpha": "auto", "keep_float": 1}]
    with pytest.raises(RecipeError, match="pass real inputs with --inputs FILE.npz, or leave smooth_alpha"):
        run_recipe(recipe_for(tmp_path / "none", model, steps), progress="off")
    recipe = recipe_for(tmp_path, model, steps, load={"inputs": str(tmp_path / "x.npz")})
    assert recipe.steps[1].calibration_data == tmp_path / "x.npz"
    m = run_recipe(recipe, progress="off")[1].result.metrics
    assert m.smoothing is not None and len(m.float_matmuls) == 1 and m.fidelity.inputs == "user"


def test_a_model_at_an_opset_before_13_is_converted_so_that_its_per_channel_int8_loads(tmp_path):
    """PP-OCR's text classifier is at opset 11: the static quantizer's per-channel DequantizeLinear (axis) made a
    model onnxruntime refused ("Unrecognized attribute: axis"). The chain's copy is converted to opset 13 first."""
    model = scorer_onnx(tmp_path / "old.onnx", opset=11)
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(7).random((16, FEATURES), dtype=np.float32))
    steps = [{"type": "quantize.static", "per_channel": True}, {"type": "quantize.dynamic", "per_channel": True}]
    recipe = recipe_for(tmp_path, model, steps[:1], load={"inputs": str(tmp_path / "x.npz")})
    m = run_recipe(recipe, progress="off")[1].result.metrics
    assert m.static_nodes > 0 and m.fidelity.min_cosine >= 0.99
    recipe = recipe_for(tmp_path / "d", model, steps[1:], load={"inputs": str(tmp_path / "x.npz")})
    m = run_recipe(recipe, progress="off")[1].result.metrics
    assert m.pre_process.endswith("opset 11 converted to 13") and m.fidelity.min_cosine >= 0.99
    assert onnx.load(str(model)).opset_import[0].version == 11  # the user's file is never changed


def test_a_model_with_its_weights_as_external_data_beside_it_goes_through_the_chain(tmp_path):
    """Exporters write large models with their weights in files beside the .onnx: the chain's own copy takes those
    weights inside it, so every later step reads one file; data leaving the model's folder is refused."""
    model = scorer_onnx(tmp_path / "plain.onnx")
    proto = onnx.load(str(model))
    folder = tmp_path / "external"
    folder.mkdir()
    onnx.save(proto, str(folder / "scorer.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").is_file()
    records = run_recipe(recipe_for(tmp_path, folder / "scorer.onnx", [{"type": "quantize.dynamic"}]), progress="off")
    copy = records[0].result.artifact.path
    assert not any(t.data_location == TensorProto.EXTERNAL for t in onnx.load(str(copy)).graph.initializer)
    assert records[-1].result.metrics.fidelity.min_cosine > 0.99

    escaped = tmp_path / "escaped"
    escaped.mkdir()
    moved = onnx.load(str(folder / "scorer.onnx"), load_external_data=False)
    for tensor in moved.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../external/weights.bin"
    onnx.save(moved, str(escaped / "scorer.onnx"))
    with pytest.raises(MmedgeError, match="outside its folder"):
        run_recipe(recipe_for(tmp_path / "b", escaped / "scorer.onnx", []), progress="off")
