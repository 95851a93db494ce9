"""Checkpoints are folders: model.safetensors, config.json, vocab.json, labels.json. No pickle anywhere."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmedge import __version__
from mmedge.data.text import HFTokenizer, Tokenizer, WordVocab
from mmedge.errors import InputPathError, MmedgeError

FILES = ("model.safetensors", "config.json", "labels.json")
TOKENIZER_FILES = ("vocab.json", "tokenizer.json")  # mmedge's word vocabulary, or a Hugging Face tokenizer


@dataclass
class Checkpoint:
    model: Any  # torch.nn.Module in eval mode
    family: str
    options: dict
    vocab: Tokenizer
    labels: tuple[str, ...]
    extra: dict  # training metrics and provenance

    @property
    def spec(self):
        return self.model.spec()


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header's keys in sorted order. safetensors writes the metadata
    from a hash map, whose order changes from one process to the next, so the same weights would otherwise give
    files that differ in a few header bytes; sorted, the same model is the same file."""
    size = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    if len(header) > size:  # never the case for safetensors' own compact header; keep the file as it is
        return data
    return data[:8] + header + b" " * (size - len(header)) + data[8 + size :]


def save_checkpoint(model, vocab: Tokenizer, labels: tuple[str, ...], path: Path, extra: dict | None = None) -> Path:
    """Write the checkpoint folder atomically (a temporary sibling, then rename)."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        weights = save(state, metadata={"format": "pt", "mmedge": __version__})
        (tmp / "model.safetensors").write_bytes(canonical_safetensors(weights))
        config = {
            "family": model.family,
            "options": model.current_options(),  # widths as they are now, e.g. after structured pruning
            "vocab_size": model.vocab_size,
            "num_classes": model.num_classes,
            "mmedge_version": __version__,
            "spec": model.spec().to_json(),
            "extra": extra or {},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        vocab.save(tmp if isinstance(vocab, HFTokenizer) else tmp / "vocab.json")
        (tmp / "labels.json").write_text(json.dumps(list(labels)))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mmedge.models import build_model

    path = Path(path)
    if not path.is_dir():
        raise InputPathError(f"checkpoint folder {path} does not exist; pass a folder written by `mmedge train`.")
    missing = [f for f in FILES if not (path / f).is_file()]
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise InputPathError(
            f"checkpoint folder {path} lacks {', '.join(missing)}; pass a folder written by `mmedge train`."
        )
    try:
        config = json.loads((path / "config.json").read_text())
        labels = tuple(json.loads((path / "labels.json").read_text()))
        model = build_model(config["family"], config["options"], config["vocab_size"], config["num_classes"])
        state = load_file(path / "model.safetensors")
    except (json.JSONDecodeError, KeyError, SafetensorError, OSError) as exc:
        raise MmedgeError(
            f"checkpoint {path} is damaged ({type(exc).__name__}: {exc}); retrain or restore it."
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise MmedgeError(
            f"checkpoint {path} does not fit its model family '{config['family']}' ({detail}); "
            "retrain it or restore its config.json."
        ) from None
    model.eval()
    vocab = HFTokenizer.load(path) if (path / "tokenizer.json").is_file() else WordVocab.load(path / "vocab.json")
    return Checkpoint(model, config["family"], config["options"], vocab, labels, config.get("extra", {}))
