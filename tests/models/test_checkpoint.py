import json

import pytest
import torch

from mmedge.data.text import WordVocab
from mmedge.errors import InputPathError, MmedgeError
from mmedge.models import build_model
from mmedge.models.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import TINY


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, family):
    torch.manual_seed(0)
    model = build_model(family, TINY[family], 20, 12).eval()
    vocab = WordVocab.build(["is this a digit"])
    save_checkpoint(model, vocab, tuple("abcdefghijkl"), tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "labels.json",
        "model.safetensors",
        "vocab.json",
    ]
    ck = load_checkpoint(tmp_path / "ck")
    x = (torch.rand(2, 1, 28, 28), torch.randint(0, 20, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(model(*x), ck.model(*x))
    assert ck.vocab == vocab and ck.family == family


def test_missing_checkpoint_folder_is_refused(tmp_path):
    with pytest.raises(InputPathError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_checkpoint_with_foreign_weights_is_refused(tmp_path):
    model = build_model("cnn-lstm", TINY["cnn-lstm"], 20, 12)
    save_checkpoint(model, WordVocab.build(["a"]), ("x",) * 12, tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["options"]["hidden_size"] = 99
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MmedgeError, match="does not fit"):
        load_checkpoint(tmp_path / "ck")


def test_truncated_weights_file_is_refused(tmp_path):
    model = build_model("cnn-lstm", TINY["cnn-lstm"], 20, 12)
    save_checkpoint(model, WordVocab.build(["a"]), ("x",) * 12, tmp_path / "ck")
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(MmedgeError, match="damaged"):
        load_checkpoint(tmp_path / "ck")


def test_the_same_weights_give_the_same_file_whatever_order_safetensors_wrote_its_metadata_in(tmp_path):
    """safetensors writes metadata from a hash map, in an order that changes between processes; checkpoints sort it."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save

    from mmedge.models.checkpoint import canonical_safetensors

    data = save({"w": torch.arange(6.0).reshape(2, 3)}, metadata={"format": "pt", "mmedge": "1", "z": "2"})
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    meta = header.pop("__metadata__")
    for order in (list(meta.items()), list(reversed(meta.items()))):
        written = json.dumps({"__metadata__": dict(order), **header}, separators=(",", ":")).encode()
        other = data[:8] + written.ljust(size) + data[8 + size :]
        assert canonical_safetensors(other) == canonical_safetensors(data)
    (tmp_path / "w.safetensors").write_bytes(canonical_safetensors(data))
    with safe_open(tmp_path / "w.safetensors", framework="pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("w"), torch.arange(6.0).reshape(2, 3))
