"""Word-level tokenizer: numpy only, so an edge device can tokenize without torch.

The vocabulary is built from the training split and ships with the model (``vocab.json``).
Id 0 is padding and id 1 stands for any word the vocabulary does not know.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmedge.errors import BundleError

PAD = "<pad>"
UNK = "<unk>"
# Words are runs of letters and digits; punctuation carries no meaning in our questions.
TOKEN_PATTERN = r"[a-z0-9]+"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


@dataclass(frozen=True)
class WordVocab:
    words: tuple[str, ...]
    max_length: int = 12
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.words[:2] != (PAD, UNK):
            raise BundleError(f"a vocabulary must start with '{PAD}' and '{UNK}'; rebuild it with WordVocab.build.")

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, texts: Iterable[str], max_length: int = 12, min_freq: int = 1) -> WordVocab:
        counts = Counter(tok for t in texts for tok in tokenize(t))
        # Most frequent first, ties alphabetical, so the same texts always give the same ids.
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(words=(PAD, UNK, *ranked), max_length=max_length)

    def encode(self, texts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask, both int64 (B, T); truncated and right-padded to ``length``."""
        length = self.max_length if length is None else length
        index = {w: i for i, w in enumerate(self.words)}
        ids = np.zeros((len(texts), length), dtype=np.int64)
        for row, text in enumerate(texts):
            toks = [index.get(tok, self.unk_id) for tok in tokenize(text, self.lowercase)][:length]
            ids[row, : len(toks)] = toks
        return ids, (ids != self.pad_id).astype(np.int64)

    def to_json(self) -> dict:
        return {
            "type": "word",
            "words": list(self.words),
            "max_length": self.max_length,
            "lowercase": self.lowercase,
            "pattern": TOKEN_PATTERN,
            "pad_id": self.pad_id,
            "unk_id": self.unk_id,
        }

    @classmethod
    def from_json(cls, data: dict) -> WordVocab:
        try:
            return cls(words=tuple(data["words"]), max_length=int(data["max_length"]), lowercase=data["lowercase"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"the vocabulary is malformed ({exc!r} missing or invalid); re-export the model."
            ) from exc

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> WordVocab:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot read the vocabulary {path}: {exc}; re-export the model.") from exc


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    return _TOKEN_RE.findall(text.lower() if lowercase else text)


@dataclass(frozen=True)
class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` run with the ``tokenizers`` package alone (no transformers, no torch)."""

    json_text: str  # the tokenizer.json file, verbatim
    max_length: int
    pad_id: int = 0

    @functools.cached_property
    def _tok(self):
        try:
            from tokenizers import Tokenizer
        except ModuleNotFoundError as exc:
            from mmedge.errors import MissingDependencyError

            raise MissingDependencyError(
                "this model tokenizes with a Hugging Face tokenizer.json, which needs the tokenizers package; "
                "run `pip install tokenizers` (or 'mmedge[hf]')."
            ) from exc
        try:
            tok = Tokenizer.from_str(self.json_text)
        except Exception as exc:  # the tokenizers package raises plain Exceptions for a file it cannot read
            from mmedge.errors import MmedgeError, brief

            raise MmedgeError(
                f"the tokenizer.json does not load ({brief(exc, 120)}); restore it from the bundle or model it came "
                "with."
            ) from None
        tok.no_padding()
        tok.no_truncation()
        return tok

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @functools.cached_property
    def words(self) -> tuple[str, ...]:
        """Every piece, in id order (as ``WordVocab.words``: a teacher with another vocabulary is read by piece)."""
        pieces = [""] * len(self)
        for piece, i in self._tok.get_vocab(with_added_tokens=True).items():
            pieces[i] = piece
        return tuple(pieces)

    @property
    def unk_id(self) -> int:
        """The id of the unknown piece (the padding id where the tokenizer has none)."""
        unk = getattr(self._tok.model, "unk_token", None)
        found = self._tok.token_to_id(unk) if unk else None
        return self.pad_id if found is None else found

    def encode(self, texts: Sequence[str], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask, both int64 (B, T); special tokens added, truncated and right-padded to ``length``."""
        length = self.max_length if length is None else length
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, enc in enumerate(self._tok.encode_batch(list(texts))):
            toks = enc.ids
            if len(toks) > length:  # keep the closing special token (CLIP pools at it, BERT expects it)
                toks = toks[: length - 1] + toks[-1:]
            ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        return ids, mask

    def to_json(self) -> dict:
        return {"type": "hf", "max_length": self.max_length, "pad_id": self.pad_id, "json": self.json_text}

    def save(self, path: Path) -> None:
        """``path`` is a folder: tokenizer.json plus tokenizer_config (max length, pad id)."""
        Path(path, "tokenizer.json").write_text(self.json_text)
        Path(path, "tokenizer_mmedge.json").write_text(
            json.dumps({"max_length": self.max_length, "pad_id": self.pad_id})
        )

    @classmethod
    def load(cls, folder: Path) -> HFTokenizer:
        from mmedge.errors import MmedgeError

        try:
            extra = json.loads(Path(folder, "tokenizer_mmedge.json").read_text(encoding="utf-8"))
            text = Path(folder, "tokenizer.json").read_text(encoding="utf-8")
            return cls(text, int(extra["max_length"]), int(extra["pad_id"]))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise MmedgeError(
                f"the tokenizer.json or tokenizer_mmedge.json in {folder} is damaged ({type(exc).__name__}); restore "
                "them from the checkpoint they came with."
            ) from None


Tokenizer = WordVocab | HFTokenizer


def tokenizer_from_json(data: dict) -> Tokenizer:
    """The tokenizer a model's metadata describes: mmedge's word vocabulary or a Hugging Face tokenizer."""
    if data.get("type") == "hf":
        try:
            return HFTokenizer(data["json"], int(data["max_length"]), int(data.get("pad_id", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the tokenizer metadata is malformed ({exc!r}); re-export the model.") from exc
    return WordVocab.from_json(data)


def english_sentences(n: int) -> list[str]:
    """Up to ``n`` distinct English sentences of 6-30 words from the prose that ships with Python (pydoc_data)."""
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    found = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    good = [s for s in found if 6 <= len(s.split()) <= 30 and s[0].isupper() and not set(s) & set("{}[]=>*|\\")]
    return list(dict.fromkeys(good))[:n]
