import pytest
import torch

from mmedge.compress.prune import MagnitudePruneConfig, magnitude_prune, prunable_weights
from mmedge.errors import RecipeError
from mmedge.export.onnx import export_checkpoint, zipped_size
from mmedge.models.checkpoint import load_checkpoint, save_checkpoint
from mmedge.recipe import parse_recipe


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
