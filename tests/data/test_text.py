import numpy as np
import pytest

from mmedge.data.text import PAD, UNK, WordVocab
from mmedge.errors import BundleError


def test_vocab_is_built_from_training_texts_with_pad_and_unk_first():
    v = WordVocab.build(["is this even?", "is this a 7?"], max_length=5)
    assert v.words[:2] == (PAD, UNK) and v.words[2] == "is"
    assert set(v.words[2:]) == {"is", "this", "even", "a", "7"}


def test_encode_pads_truncates_and_masks():
    v = WordVocab.build(["a b c d e f"], max_length=4)
    ids, mask = v.encode(["a b", "a b c d e f", "zzz a"])
    assert ids.dtype == np.int64 and ids.shape == (3, 4)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert ids[2, 0] == v.unk_id and ids[0, 2] == v.pad_id


def test_encode_lowercases_and_drops_punctuation():
    v = WordVocab.build(["is this even"])
    a, _ = v.encode(["Is THIS even?!"])
    b, _ = v.encode(["is this even"])
    assert np.array_equal(a, b)


def test_vocab_round_trips_through_json(tmp_path):
    v = WordVocab.build(["one two three"], max_length=7)
    v.save(tmp_path / "vocab.json")
    assert WordVocab.load(tmp_path / "vocab.json") == v


def test_damaged_vocab_file_is_a_clear_error(tmp_path):
    (tmp_path / "vocab.json").write_text('{"words": ["x"]}')
    with pytest.raises(BundleError):
        WordVocab.load(tmp_path / "vocab.json")
