import pytest
import torch

from mmedge.errors import RecipeError, UnknownNameError
from mmedge.models import FAMILY_TABLE, MODELS, build_model, get_family
from mmedge.models.registry import register_model
from tests.conftest import TINY


def _inputs(batch=3, length=9, vocab=30):
    ids = torch.randint(2, vocab, (batch, length))
    mask = torch.ones_like(ids)
    ids[0, 4:], mask[0, 4:] = 0, 0
    return torch.rand(batch, 1, 28, 28), ids, mask


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_family_gives_logits_of_batch_by_classes(family):
    model = build_model(family, TINY[family], vocab_size=30, num_classes=12).eval()
    assert model(*_inputs()).shape == (3, 12)


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_branch_map_covers_every_parameter(family):
    model = build_model(family, {}, vocab_size=30, num_classes=12)
    spec = model.spec()
    assert set(spec.branches) == {"image", "text", "fusion", "head"}
    unmapped = [
        n
        for n, _ in model.named_parameters()
        if spec.branch_of(n.rsplit(".", 1)[0]) is None and spec.branch_of(n) is None
    ]
    assert not unmapped


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_padding_does_not_change_the_answer(family):
    torch.manual_seed(0)
    model = build_model(family, TINY[family], vocab_size=30, num_classes=12).eval()
    image, ids, mask = _inputs(batch=2, length=6)
    mask[:] = 1
    padded_ids = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        assert torch.allclose(model(image, ids, mask), model(image, padded_ids, padded_mask), atol=1e-5)


def test_vit_concat_fusion_option_builds_and_runs():
    model = build_model("vit-transformer", {**TINY["vit-transformer"], "fusion": "concat"}, 30, 12).eval()
    assert model(*_inputs()).shape == (3, 12)


def test_vit_attention_uses_separate_qkv_linears():
    model = build_model("vit-transformer", {}, 30, 12)
    attn = model.text_blocks[0].attn
    assert all(isinstance(getattr(attn, n), torch.nn.Linear) for n in ("q", "k", "v", "out"))
    assert attn.num_heads * attn.head_dim == model.config.dim


def test_unknown_family_suggests_the_closest():
    with pytest.raises(
        UnknownNameError, match="did you mean 'cnn-lstm'.*choose one of: cnn-lstm, effnet-minilm, vit-transformer"
    ):
        get_family("cnn_lstm")


@pytest.mark.parametrize("family", sorted(FAMILY_TABLE))
def test_family_table_and_register_model_agree(family):
    """Recipe parsing reads the table; building reads what the module registered: both must name the same thing."""
    decl = FAMILY_TABLE[family]
    fam = get_family(family)
    assert fam is MODELS[family] and fam.config_cls is decl.options
    assert fam.build.__module__ == decl.module and fam.build.family == family


def test_every_registered_family_is_in_the_table():
    for family in FAMILY_TABLE:
        get_family(family)
    assert set(MODELS) == set(FAMILY_TABLE)


def test_register_model_refuses_a_family_the_table_does_not_declare():
    with pytest.raises(TypeError, match="not declared so in FAMILY_TABLE"):
        register_model("resnet", FAMILY_TABLE["cnn-lstm"].options)
    with pytest.raises(TypeError, match="not declared so in FAMILY_TABLE"):
        register_model("cnn-lstm", FAMILY_TABLE["vit-transformer"].options)


def test_bad_family_options_are_a_recipe_error():
    with pytest.raises(RecipeError, match="hidden_sise"):
        build_model("cnn-lstm", {"hidden_sise": 3}, 30, 12)
    with pytest.raises(RecipeError, match="divisible"):
        build_model("vit-transformer", {"dim": 30, "heads": 4}, 30, 12)
