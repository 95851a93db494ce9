"""Vocabulary pruning for WordPiece text towers: keep the frequent pieces, spell rare words from smaller ones.

A pretrained BERT-family tower carries a 30,522-piece embedding table, half of all-MiniLM-L6-v2's weights, while a
question uses a few dozen pieces. Keeping only the pieces a data set's training questions use would turn every
other word into [UNK] and lose the tower's hold on new wordings. Instead :func:`trim_wordpiece` keeps

- the ``keep_first`` pieces of lowest id: BERT-family vocabularies list their special tokens, single characters
  and then whole words and pieces in order of frequency, so these are the most common ones;
- every one-character continuation piece (``##a``), so that any word of known characters can still be spelled;
- every piece the given texts use (the training and validation questions), so that they tokenize as before.

A word whose piece was dropped is then split into smaller kept pieces by the same WordPiece algorithm, rather than
becoming [UNK]. The kept pieces keep their order; ids below ``keep_first`` (the special tokens among them) keep
their values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from mmedge.data.text import HFTokenizer
from mmedge.errors import MmedgeError


def trim_wordpiece(tokenizer, keep_first: int, texts: Iterable[str]) -> tuple[HFTokenizer, list[int]]:
    """(the smaller tokenizer, the old id of each new id in order) for a WordPiece ``tokenizer``."""
    spec = json.loads(tokenizer.json_text) if isinstance(tokenizer, HFTokenizer) else {}
    model = spec.get("model") or {}
    if model.get("type") != "WordPiece":
        raise MmedgeError(
            "vocab_size prunes WordPiece vocabularies (BERT-family tokenizers); this model's tokenizer is "
            f"{model.get('type') or type(tokenizer).__name__}, so drop vocab_size."
        )
    vocab: dict[str, int] = model["vocab"]
    if keep_first >= len(vocab):
        raise MmedgeError(
            f"vocab_size {keep_first} keeps the whole {len(vocab)}-piece vocabulary; give a smaller number or drop it."
        )
    prefix = model.get("continuing_subword_prefix", "##")
    keep = set(range(keep_first))
    keep |= {i for piece, i in vocab.items() if piece.startswith(prefix) and len(piece) == len(prefix) + 1}
    for enc in tokenizer._tok.encode_batch(sorted(set(texts))):
        keep |= set(enc.ids)
    old_ids = sorted(keep)
    piece_of = {i: piece for piece, i in vocab.items()}
    model["vocab"] = {piece_of[old]: new for new, old in enumerate(old_ids)}
    trimmed = HFTokenizer(json.dumps(spec, ensure_ascii=False), tokenizer.max_length, tokenizer.pad_id)
    return trimmed, old_ids
