import numpy as np
import pytest

from mmedge.compress.optimize import OptimizeConfig, optimize_model
from mmedge.runtime.inputs import split_feeds
from mmedge.runtime.options import session_options
from mmedge.runtime.providers import PROVIDERS
from mmedge.runtime.session import metadata_json, open_session


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_step_optimize_keeps_outputs_and_metadata(tmp_path, tiny_onnx, family):
    src, out = tiny_onnx[family], tmp_path / "o.onnx"
    info = optimize_model(src, out, OptimizeConfig())
    assert info["nodes_after"] > 0 and info["level"] == "basic"
    assert info["transformer_fusions"] == (family == "vit-transformer")
    feeds = split_feeds(src, n=16)
    np.testing.assert_allclose(open_session(out).run(None, feeds)[0], open_session(src).run(None, feeds)[0], atol=1e-4)
    assert metadata_json(open_session(out), "mmedge.labels")[0] == "no"
    if family == "cnn-lstm":  # no transformer fusions: standard ONNX ops, which any EP may load
        assert info["portable"] and info["non_standard_ops"] == [] and info["loads_on"] == list(PROVIDERS)
    else:  # the fusions write ORT contrib ops (a GELU here), which only the CPU and CUDA EPs run
        assert not info["portable"] and "com.microsoft:BiasGelu" in info["non_standard_ops"]
        assert info["loads_on"] == ["cpu", "cuda"]
        plain = optimize_model(src, tmp_path / "plain.onnx", OptimizeConfig(transformer_fusions="off"))
        assert plain["portable"] and plain["non_standard_ops"] == [] and plain["loads_on"] == list(PROVIDERS)


def _loaded_ops(path, tmp_path) -> set[str]:
    """Op types of ``path`` after ORT's full CPU graph optimization, as a session runs it."""
    import onnx
    import onnxruntime as ort

    opts = session_options(level="all", optimized_path=tmp_path / "loaded.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}


def test_bert_attention_is_fused_with_heads_read_from_the_graph_then_quantized(tmp_path):
    """A BERT exported as Optimum exports it (TorchScript exporter, eager attention): optimize reads 4 heads from
    the graph, fuses each layer into one Attention kernel, and quantize.dynamic smooths and quantizes the fused
    graph (QAttention with saturation-free weights) within a fidelity floor."""
    import warnings

    import onnx
    import torch

    transformers = pytest.importorskip("transformers")
    from mmedge.compress.optimize import attention_heads
    from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model

    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(1, 120, (2, 7))
    src = tmp_path / "bert.onnx"
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(),
            (ids, torch.ones_like(ids)),
            str(src),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
        )
    assert attention_heads(onnx.load(str(src))) == (4, 32)
    fused = tmp_path / "fused.onnx"
    info = optimize_model(src, fused, OptimizeConfig())
    assert info["num_heads"] == 4 and info["ops"].get("Attention") == 2, info["ops"]
    assert "com.microsoft:Attention" in info["non_standard_ops"] and info["loads_on"] == ["cpu", "cuda"]
    # residual adds stay apart from their LayerNormalization, also once ORT optimizes the file as it loads it
    assert info["residual_sums"] == 4 and "SkipLayerNormalization" not in info["ops"], info["ops"]
    assert "SkipLayerNormalization" not in _loaded_ops(fused, tmp_path)
    as_add = onnx.load(str(fused))
    for node in as_add.graph.node:
        node.op_type = "Add" if node.op_type == "Sum" else node.op_type
    onnx.save(as_add, str(tmp_path / "as_add.onnx"))
    assert "SkipLayerNormalization" in _loaded_ops(tmp_path / "as_add.onnx", tmp_path)  # what ORT does to Add
    kept = optimize_model(src, tmp_path / "skip.onnx", OptimizeConfig(fuse_skip_layernorm=True))
    assert kept["ops"].get("SkipLayerNormalization") == 4 and "Sum" not in kept["ops"], kept["ops"]
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1, 120, (16, 11)), "attention_mask": np.ones((16, 11), np.int64)}
    feeds["attention_mask"][:8, 8:] = 0  # padded rows
    ref = open_session(src).run(None, feeds)[0]
    np.testing.assert_allclose(open_session(fused).run(None, feeds)[0], ref, atol=1e-4)

    calib = {"input_ids": rng.integers(1, 120, (32, 11)), "attention_mask": np.ones((32, 11), np.int64)}
    q = tmp_path / "q.onnx"
    qcfg = DynamicQuantConfig(
        op_types=("MatMul", "Attention"), per_channel=True, smooth_alpha="auto", outlier_channels=2
    )
    qinfo = quantize_dynamic_model(fused, q, qcfg, feeds=calib)
    assert qinfo["ops"].get("QAttention") == 2
    assert qinfo["saturation_free_weights"] == 2 + qinfo["ops"]["MatMulInteger"]
    assert qinfo["smoothing"]["smoothed_matmuls"] >= 2  # at least the two Attention inputs
    got = open_session(q).run(None, feeds)[0]
    mask = feeds["attention_mask"].astype(bool)
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos[mask].mean() > 0.99, cos[mask].mean()


def test_mmedges_own_minilm_attention_is_fused_and_quantized_dynamically(tmp_path):
    """mmedge's MiniLM, exported as mmedge exports it (dynamo, opset 18): the padding mask's two-axis Unsqueeze and
    the scores' scale as a product are what keep onnxruntime's BERT fusion from matching; optimize rewrites both and
    every layer becomes one Attention kernel with the same outputs, which quantize.dynamic runs as QAttention."""
    import onnx
    import torch

    from mmedge.compress.optimize import bert_attention_form
    from mmedge.compress.quantize.calibration import CalibrationConfig
    from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model
    from mmedge.compress.quantize.graph import prepare
    from mmedge.compress.quantize.plan import quantizable_nodes
    from mmedge.compress.quantize.static import StaticQuantConfig, quantize_static_model
    from mmedge.errors import MmedgeError
    from mmedge.models.minilm import MiniLM

    torch.manual_seed(0)
    encoder = MiniLM(vocab_size=100, dim=64, layers=2, head_dim=16, max_positions=32).eval()
    ids = torch.randint(1, 100, (3, 9))
    batch, text = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("text", min=2, max=32)
    program = torch.onnx.export(
        encoder,
        (ids, torch.ones_like(ids)),
        None,
        dynamo=True,
        opset_version=18,
        external_data=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["states"],
        dynamic_shapes=({0: batch, 1: text}, {0: batch, 1: text}),
        optimize=True,
        verbose=False,
    )
    src = tmp_path / "minilm.onnx"
    onnx.save(program.model_proto, str(src))
    copy = onnx.load(str(src))
    assert bert_attention_form(copy) == 1 + 2  # one shared mask Unsqueeze, one scale per layer
    assert bert_attention_form(copy) == 0  # nothing left to rewrite
    fused = tmp_path / "fused.onnx"
    info = optimize_model(src, fused, OptimizeConfig())
    assert info["num_heads"] == 4 and info["ops"].get("Attention") == 2, info["ops"]
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1, 100, (8, 12)), "attention_mask": np.ones((8, 12), np.int64)}
    feeds["attention_mask"][:4, 7:] = 0  # padded rows
    ref = open_session(src).run(None, feeds)[0]
    np.testing.assert_allclose(open_session(fused).run(None, feeds)[0], ref, atol=1e-4)
    q = tmp_path / "q.onnx"
    qinfo = quantize_dynamic_model(fused, q, DynamicQuantConfig(per_channel=True))  # Attention is a default op type
    assert qinfo["ops"].get("QAttention") == 2, qinfo["ops"]
    got = open_session(q).run(None, feeds)[0]
    mask = feeds["attention_mask"].astype(bool)
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos[mask].mean() > 0.99, cos[mask].mean()
    # quantizing keeps the residual adds as Sum, so ORT's slow SkipLayerNormalization fusion stays away on load
    assert "SkipLayerNormalization" in _loaded_ops(src, tmp_path)
    quantize_dynamic_model(src, tmp_path / "d.onnx", DynamicQuantConfig())
    assert "SkipLayerNormalization" not in _loaded_ops(tmp_path / "d.onnx", tmp_path)
    # every MatMul with a weight sits in a branch that computes attention, fused or not (Softmax of queries x keys)
    for model in (src, fused):
        nodes = quantizable_nodes(prepare(model, tmp_path / "prepared.onnx"))
        assert {n["op"] for n in nodes} >= {"MatMul"} and all(n["attention"] for n in nodes), nodes
    # quantize.static quantizes a transformer's MatMuls dynamically; with nothing else, it says what to use
    np.savez(tmp_path / "calibration.npz", **feeds)
    calib = CalibrationConfig(data=tmp_path / "calibration.npz")
    for model in (src, fused):
        with pytest.raises(MmedgeError, match="use quantize.dynamic for this model, or set transformer_matmuls: stat"):
            quantize_static_model(model, tmp_path / "s.onnx", StaticQuantConfig(calibration=calib))
        assert not (tmp_path / "s.onnx").exists()
    sinfo = quantize_static_model(
        fused, tmp_path / "s.onnx", StaticQuantConfig(calibration=calib, transformer_matmuls="static")
    )
    assert sinfo["ops"].get("QAttention") == 2 and sinfo["static_nodes"] > 0, sinfo
