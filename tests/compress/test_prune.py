import pytest
import torch

from mmedge.compress.prune import MagnitudePruneConfig, magnitude_prune, prunable_weights
from mmedge.errors import RecipeError
from mmedge.export.onnx import export_checkpoint, zipped_size
from mmedge.models.checkpoint import load_checkpoint, save_checkpoint
from mmedge.recipe import parse_recipe

pytestmark = pytest.mark.slow  # trains, exports or runs whole chains: `make test` runs it, `make test-fast` not


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_magnitude_pruning_reaches_the_target_sparsity(tiny_checkpoints, family):
    model = load_checkpoint(tiny_checkpoints[family]).model
    m = magnitude_prune(model, MagnitudePruneConfig(sparsity=0.6))
    assert m["sparsity_reached"] == pytest.approx(0.6, abs=0.01)
    assert 0 < m["model_sparsity"] < m["sparsity_reached"]  # biases and norms keep their values
    assert not any("bias" in n for n in m["pruned_tensors"])


def test_pruning_one_branch_leaves_the_others_dense(tiny_checkpoints):
    model = load_checkpoint(tiny_checkpoints["cnn-lstm"]).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = magnitude_prune(model, MagnitudePruneConfig(sparsity=0.5, branches=("text",)))
    assert all(n.startswith(("embedding", "lstm")) for n in m["pruned_tensors"])
    assert torch.equal(before["image_encoder.0.weight"], model.image_encoder[0].weight)
    assert m["per_branch"]["text"]["sparsity"] > 0.4 and m["per_branch"]["image"]["sparsity"] < 0.05


def test_step_prune_magnitude_exports_with_the_same_size_but_a_smaller_zip(tmp_path, tiny_checkpoints, tiny_onnx):
    ck = load_checkpoint(tiny_checkpoints["cnn-lstm"])
    magnitude_prune(ck.model, MagnitudePruneConfig(sparsity=0.8))
    save_checkpoint(ck.model, ck.vocab, ck.labels, tmp_path / "pruned", extra=ck.extra)
    export_checkpoint(tmp_path / "pruned", tmp_path / "pruned.onnx")  # validates against the pruned model
    dense = tiny_onnx["cnn-lstm"]
    assert abs((tmp_path / "pruned.onnx").stat().st_size - dense.stat().st_size) < 0.02 * dense.stat().st_size
    assert zipped_size(tmp_path / "pruned.onnx") < 0.8 * zipped_size(dense)


def test_prunable_weights_cover_conv_linear_lstm_and_embedding(tiny_checkpoints):
    names = [
        n
        for n, _, _ in prunable_weights(
            load_checkpoint(tiny_checkpoints["cnn-lstm"]).model, ("image", "text", "fusion", "head")
        )
    ]
    assert {"lstm.weight_ih_l0", "lstm.weight_hh_l0", "embedding.weight", "head.weight"} <= set(names)
    assert any(n.startswith("image_encoder") for n in names)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_sparsity_outside_zero_one_is_a_recipe_error(bad):
    with pytest.raises(RecipeError, match="sparsity"):
        parse_recipe({"name": "p", "steps": [{"type": "train"}, {"type": "prune.magnitude", "sparsity": bad}]})


def test_unknown_branch_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown branch 'audio'"):
        parse_recipe({"name": "p", "steps": [{"type": "train"}, {"type": "prune.magnitude", "branches": ["audio"]}]})


# ---- prune.structured ------------------------------------------------------------------------------------------


def _structured(family, tiny_checkpoints, data_cfg, **kw):
    from mmedge.compress.prune import StructuredPruneConfig, structured_prune
    from mmedge.data import load_dataset

    ck = load_checkpoint(tiny_checkpoints[family])
    cfg = StructuredPruneConfig(**{"ratio": 0.5, "finetune_epochs": 0, "iterative_steps": 2, **kw})
    metrics = structured_prune(ck.model, load_dataset(data_cfg), ck.vocab, cfg)
    return ck, metrics


def test_step_prune_structured_shrinks_cnn_lstm_and_the_result_exports(tmp_path, tiny_checkpoints, data_cfg):
    ck, m = _structured("cnn-lstm", tiny_checkpoints, data_cfg, branch_ratios={"fusion": 0.25})
    before, after = m["options_before"], m["options_after"]
    assert after["conv_channels"] == [c // 2 for c in before["conv_channels"]]
    assert after["hidden_size"] == before["hidden_size"] // 2  # the LSTM handler removed hidden units
    assert after["fusion_dim"] == 24  # 32 * (1 - 0.25)
    assert ck.model.head.out_features == 12  # one logit per label, never pruned
    assert m["parameters_after"] < 0.5 * m["parameters_before"] and m["macs_after"] < m["macs_before"]
    assert len(m["history"]) == 2
    # The checkpoint rebuilds from its options (strict load) and exports + validates like any other model.
    save_checkpoint(ck.model, ck.vocab, ck.labels, tmp_path / "pruned", extra=ck.extra)
    again = load_checkpoint(tmp_path / "pruned")
    assert again.options["hidden_size"] == after["hidden_size"]
    export_checkpoint(tmp_path / "pruned", tmp_path / "pruned.onnx")  # raises if the graph does not validate


def test_structured_pruning_removes_whole_attention_heads_and_ffn_width(tmp_path, tiny_checkpoints, data_cfg):
    ck, m = _structured("vit-transformer", tiny_checkpoints, data_cfg, iterative_steps=3, ratio=0.5)
    after = m["options_after"]
    blocks = ck.model.blocks()
    assert after["block_heads"] == [1] * len(blocks)  # 2 heads -> 1 in every block, over three steps
    assert after["block_mlp"] == [16] * len(blocks)  # 32 -> 16
    for b in blocks:  # the reshape follows the projections: heads x head_dim == q/k/v width
        assert b.attn.q.out_features == b.attn.k.out_features == b.attn.num_heads * b.attn.head_dim
        assert b.attn.out.out_features == ck.model.config.dim  # the residual width is kept
    save_checkpoint(ck.model, ck.vocab, ck.labels, tmp_path / "pruned", extra=ck.extra)
    export_checkpoint(tmp_path / "pruned", tmp_path / "pruned.onnx")  # raises if the graph does not validate


def test_lstm_handler_removes_units_exactly():
    from mmedge.compress.prune import _lstm_pruner

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 6, batch_first=True)
    drop = [1, 4]
    with torch.no_grad():  # units 1 and 4 must not feed the others, so the rest is unchanged without them
        lstm.weight_hh_l0[:, drop] = 0
    x = torch.randn(3, 7, 5)
    full, _ = lstm(x)
    _lstm_pruner().prune_out_channels(lstm, drop)
    pruned, _ = lstm(x)
    keep = [0, 2, 3, 5]
    assert lstm.hidden_size == 4 and lstm.weight_ih_l0.shape == (16, 5) and lstm.weight_hh_l0.shape == (16, 4)
    torch.testing.assert_close(pruned, full[..., keep])


def test_head_schedule_spreads_head_removal_over_the_steps():
    from mmedge.compress.prune import _head_schedule

    def removed(heads, ratio, steps):
        left = heads
        for r in _head_schedule(heads, ratio, steps)[1:]:
            left -= -int(-(r * left) // 1)  # torch-pruning rounds each step up
        return heads - left

    assert removed(4, 0.5, 1) == removed(4, 0.5, 3) == 2
    assert removed(8, 0.75, 4) == 6
    assert removed(2, 0.99, 2) == 1  # at least one head stays


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"type": "prune.structured", "ratio": 1.0}, "outside"),
        ({"type": "prune.structured", "ratio": -0.5}, "outside"),
        ({"type": "prune.structured", "branch_ratios": {"text": 1.2}}, "branch 'text'"),
        ({"type": "prune.structured", "branch_ratios": {"audio": 0.5}}, "unknown branch 'audio'"),
    ],
)
def test_structured_ratio_outside_zero_one_is_a_recipe_error(step, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"name": "p", "steps": [{"type": "train"}, step]})


def test_depth_pruning_removes_whole_transformer_blocks(tmp_path, tiny_checkpoints, data_cfg):
    ck, m = _structured("vit-transformer", tiny_checkpoints, data_cfg, drop_blocks={"text": 1}, ratio=0.0)
    assert m["options_after"]["text_layers"] == 0 and m["options_after"]["image_layers"] == 1
    assert m["dropped_blocks"]["text"][0]["index"] == 0 and m["parameters_after"] < m["parameters_before"]
    save_checkpoint(ck.model, ck.vocab, ck.labels, tmp_path / "shallow", extra=ck.extra)
    assert len(load_checkpoint(tmp_path / "shallow").model.text_blocks) == 0
    export_checkpoint(tmp_path / "shallow", tmp_path / "shallow.onnx")


def test_depth_pruning_by_similarity_needs_no_labels_and_records_the_distance(tiny_checkpoints, data_cfg):
    _, m = _structured(
        "vit-transformer", tiny_checkpoints, data_cfg, drop_blocks={"image": 1}, block_choice="similarity", ratio=0.0
    )
    (record,) = m["dropped_blocks"]["image"]
    assert record["index"] == 0 and record["similarity_distance"] > 0  # without its block the encodings relate anew
    assert "val_accuracy_without" not in record and m["options_after"]["image_layers"] == 0


@pytest.mark.parametrize(("family", "drop"), [("vit-transformer", {"image": 2}), ("cnn-lstm", {"image": 1})])
def test_depth_pruning_more_blocks_than_removable_is_refused(tiny_checkpoints, data_cfg, family, drop):
    from mmedge.errors import MmedgeError

    with pytest.raises(MmedgeError, match="drop_blocks asks for .* which has [01] removable"):
        _structured(family, tiny_checkpoints, data_cfg, drop_blocks=drop)


def test_vocabulary_pruning_is_refused_for_a_family_without_a_wordpiece_tower(tiny_checkpoints, data_cfg):
    from mmedge.compress.prune import prune_vocabulary
    from mmedge.data import load_dataset
    from mmedge.errors import MmedgeError

    ck = load_checkpoint(tiny_checkpoints["cnn-lstm"])
    with pytest.raises(MmedgeError, match="the cnn-lstm family has none, so drop vocab_size"):
        prune_vocabulary(ck, load_dataset(data_cfg), 2000)
