"""Word-level tokenizer: numpy only, so an edge device can tokenize without torch.

The vocabulary is built from the training split and ships with the model (``vocab.json``).
Id 0 is padding and id 1 stands for any word the vocabulary does not know.
"""

from __future__ import annotations

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
