import json

import numpy as np
import onnx
import pytest

from mmedge.export.mobile import (
    ANALYSIS,
    FIXED_ONNX,
    FIXED_ORT,
    OPS_CONFIG,
    ORT_FILE,
    MobileConfig,
    MobileError,
    build_mobile,
    ort_session,
)
from mmedge.runtime.inputs import split_feeds
from tests.conftest import relu_onnx
from tests.isolation import frozen


@pytest.fixture(scope="module")
def mobile_out(tmp_path_factory, tiny_onnx):
    out = {}
    for family, path in tiny_onnx.items():
        folder = tmp_path_factory.mktemp(f"mobile-{family}")
        out[family] = (folder, build_mobile(path, folder, split_feeds(path, n=16)))
    with frozen(*(folder for folder, _ in out.values()), what="mobile_out"):
        yield out


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_mobile_ort_files_load_back_and_match_their_onnx(mobile_out, family):
    folder, r = mobile_out[family]
    for name in (ORT_FILE, FIXED_ONNX, FIXED_ORT, OPS_CONFIG, ANALYSIS):
        assert (folder / name).is_file(), name
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging folder left
    for name in (ORT_FILE, FIXED_ORT):
        p = r["parity"][name]
        assert p["max_abs_diff"] <= 1e-4 and p["argmax_agreement"] == 1.0 and p["samples"] == 16
    assert r["parity"][FIXED_ORT]["batches"] == 16  # batch 1 fixed: one call per question
    assert json.loads((folder / ANALYSIS).read_text())["parity"] == r["parity"]


def test_mobile_fixed_variant_has_batch_one_and_the_full_text_length(mobile_out, tiny_onnx):
    folder, r = mobile_out["cnn-lstm"]
    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx["cnn-lstm"])).metadata_props}
    max_length = json.loads(meta["mmedge.tokenizer"])["max_length"]
    assert r["fixed_dims"]["batch"] == 1
    shapes = {
        i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
        for i in onnx.load(str(folder / FIXED_ONNX)).graph.input
    }
    assert shapes["image"] == [1, 1, 28, 28]
    assert shapes["input_ids"] == [1, max_length] and r["fixed_dims"]["text_length"] == max_length
    sess = ort_session(folder / FIXED_ORT)
    assert [i.shape for i in sess.get_inputs()][1] == [1, max_length]


def test_mobile_operators_config_lists_the_ops_and_no_build_paths(mobile_out):
    folder, _ = mobile_out["cnn-lstm"]
    text = (folder / OPS_CONFIG).read_text()
    ops = {op for line in text.splitlines() if not line.startswith("#") for op in line.split(";")[2].split(",")}
    assert {"Conv", "LSTM"} <= ops
    assert "/tmp" not in text and str(folder) not in text


def test_mobile_analysis_is_structured_per_ep_and_fixing_shapes_helps(mobile_out):
    _, r = mobile_out["cnn-lstm"]
    dyn, fixed = r["analysis"]["dynamic"], r["analysis"]["fixed"]
    assert set(dyn["eps"]) == {"nnapi", "coreml-neuralnetwork", "coreml-mlprogram"}
    assert set(dyn["dynamic_inputs"]) == {"image", "input_ids", "attention_mask"} and not fixed["dynamic_inputs"]
    for key, e in dyn["eps"].items():
        assert 0 <= e["supported_nodes"] <= e["nodes"] and e["verdict"] in {"yes", "maybe", "no"}
        assert sum(e["partition_sizes"]) == e["supported_nodes"] and len(e["partition_sizes"]) == e["partitions"]
        assert e["nodes_unsupported_by_dynamic_shape"] > 0
        f = fixed["eps"][key]
        assert f["nodes_unsupported_by_dynamic_shape"] < e["nodes_unsupported_by_dynamic_shape"]
        assert f["supported_share"] > e["supported_share"]
    assert "LSTM" in dyn["eps"]["nnapi"]["unsupported_ops"]  # NNAPI has no LSTM kernel
    assert all(s.startswith(("NNAPI", "CoreML")) for s in r["verdicts"]["fixed"].values())


def test_mobile_sizes_open_dims_from_the_inputs_and_refuses_every_one_it_cannot_size(tmp_path):
    import onnx

    from mmedge.export.mobile import fixed_dims

    model = relu_onnx(tmp_path / "m.onnx", ("n", "k"))
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    # with no inputs to take sizes from (and no tokenizer), every open size is named at once
    with pytest.raises(MobileError, match=r"dims: \{k: N\}.*--dim k=N"):
        fixed_dims(onnx.load(str(model)), MobileConfig(), None)
    r = build_mobile(model, tmp_path / "out", feeds)  # the inputs' own sizes; the batch stays 1
    assert r["fixed_dims"] == {"n": 1, "k": 4} and r["parity"][FIXED_ORT]["max_abs_diff"] == 0.0
    r = build_mobile(model, tmp_path / "out5", feeds, MobileConfig(dims={"k": 5}))  # the step's dims win
    assert r["fixed_dims"] == {"n": 1, "k": 5}
    with pytest.raises(MobileError, match="not a dynamic dimension"):
        build_mobile(model, tmp_path / "out2", feeds, MobileConfig(dims={"k": 4, "z": 2}))


def test_mobile_fixes_dims_that_name_nothing_each_on_its_own_axis(tmp_path):
    """'?' on every open axis (as Paddle2ONNX writes it) names no shared size: each axis is its own dimension,
    called INPUT[AXIS], sized from the inputs."""
    model = relu_onnx(tmp_path / "q.onnx", ("?", "?", "?"))
    with pytest.raises(MobileError) as err:
        from mmedge.export.mobile import fixed_dims

        fixed_dims(onnx.load(str(model)), MobileConfig(), None)
    assert "'x[1]' (x[1]), 'x[2]' (x[2])" in str(err.value) and "--dim 'x[1]=N' --dim 'x[2]=N'" in str(err.value)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 5)).astype(np.float32)}
    r = build_mobile(model, tmp_path / "out", feeds)
    assert r["fixed_dims"] == {"x[0]": 1, "x[1]": 3, "x[2]": 5}
    (shape,) = [
        [d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in onnx.load(str(tmp_path / "out" / FIXED_ONNX)).graph.input
    ]
    assert shape == [1, 3, 5]
    assert r["parity"][FIXED_ORT]["max_abs_diff"] == 0.0 and r["parity"][FIXED_ORT]["batches"] == 2


def test_mobile_ort_that_does_not_reproduce_its_onnx_is_not_kept(tmp_path, tiny_onnx, monkeypatch):
    import mmedge.export.mobile as mobile

    real = mobile.ort_session

    class Drifting:
        def __init__(self, sess):
            self.sess = sess

        def get_inputs(self):
            return self.sess.get_inputs()

        def run(self, names, feeds):
            return [o + 0.5 for o in self.sess.run(names, feeds)]

    monkeypatch.setattr(mobile, "ort_session", lambda p: Drifting(real(p)))
    path = tiny_onnx["cnn-lstm"]
    with pytest.raises(MobileError, match="does not reproduce the model"):
        build_mobile(path, tmp_path / "out", split_feeds(path, n=4))
    assert not any((tmp_path / "out").iterdir())


def test_mobile_saves_at_the_basic_level_and_says_so_when_onnxruntime_cannot_replay_its_fusions(
    tmp_path, tiny_onnx, monkeypatch, capsys
):
    """onnxruntime can save fusion records for a static int8 graph that it then cannot replay; the step converts
    again at the basic level (no fusions saved) and records that, instead of failing or hiding it."""
    import mmedge.export.mobile as mobile

    real, calls = mobile.ort_session, []

    def first_load_fails(path):
        calls.append(path.name)
        if len(calls) == 1:
            raise MobileError(f"{path.name} does not load in onnxruntime (... in the runtime optimization recor)")
        return real(path)

    monkeypatch.setattr(mobile, "ort_session", first_load_fails)
    src = tiny_onnx["cnn-lstm"]
    r = build_mobile(src, tmp_path / "m", split_feeds(src, n=16))
    assert r["optimization_level"] == "basic" and "basic optimization level" in r["optimization_note"]
    assert "basic optimization level" in capsys.readouterr().err
    assert r["parity"][ORT_FILE]["max_abs_diff"] <= 1e-4 and (tmp_path / "m" / ORT_FILE).is_file()
    ok = build_mobile(src, tmp_path / "n", split_feeds(src, n=16))  # a model that replays keeps the default
    assert ok["optimization_level"] == "all" and ok["optimization_note"] is None


class _Fixed:
    """A session stand-in that returns given outputs (the rows of each chunk fed) for an input 'x' [batch, 4]."""

    def __init__(self, out):
        self.out = out

    def get_inputs(self):
        return [type("I", (), {"name": "x", "shape": ["batch", 4]})()]

    def get_outputs(self):
        return [type("O", (), {"name": "probs"})()]

    def run(self, names, feeds):
        return [self.out[feeds["x"][:, 0].astype(int)]]


def test_mobile_int8_ort_of_probabilities_is_judged_by_cosine_and_answers(tmp_path, monkeypatch):
    """An int8 text recognizer's softmax over 40 positions: its .ort (fused integer kernels) differed by 0.021 from
    the .onnx on probabilities up to 1, over 2 % of the largest output, with a cosine of 0.99997 and every answer the
    same. That reproduces the model; a .ort whose answers move does not."""
    from mmedge.export import mobile
    from mmedge.export.mobile import check_ort

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (8, 40, 30))
    want = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    close = want.copy()
    close[..., 0] += np.where(want[..., 0] < 0.5, 0.021, 0)  # rounding noise that moves no answer
    feeds = {"x": np.tile(np.arange(8, dtype=np.float32)[:, None], (1, 4))}
    cfg = MobileConfig()
    monkeypatch.setattr(mobile, "ort_session", lambda path: _Fixed(close))
    r = check_ort(tmp_path / "m.ort", _Fixed(want), feeds, {}, cfg, quantized=True)
    assert r["max_abs_diff"] > cfg.quantized_rtol and r["min_cosine"] >= 0.999 and r["argmax_agreement"] == 1.0
    assert "cosine >= 0.999" in r["rule"]
    with pytest.raises(MobileError, match="differs from its .onnx"):  # a float model: atol alone
        check_ort(tmp_path / "m.ort", _Fixed(want), feeds, {}, cfg, quantized=False)
    moved = want[:, :, ::-1].copy()  # the same values, other answers everywhere
    monkeypatch.setattr(mobile, "ort_session", lambda path: _Fixed(moved))
    with pytest.raises(MobileError, match=r"same answers on .*required 99%"):
        check_ort(tmp_path / "m.ort", _Fixed(want), feeds, {}, cfg, quantized=True)
