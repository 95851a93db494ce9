import sys

import numpy as np
import pytest
from pydantic import ValidationError

from mmedge.data import DataConfig, load_dataset
from mmedge.data import easy_vqa as ev
from mmedge.data.digits_vqa import DigitsVQA
from mmedge.data.images import ImagePreprocessing
from mmedge.errors import MissingDependencyError

easy_vqa = pytest.importorskip("easy_vqa")  # the package (mmedge[pretrained]), not mmedge's module ``ev``


@pytest.fixture(scope="module")
def ds():
    return load_dataset(DataConfig(name="easy-vqa"))


def _pictures(split) -> set[bytes]:
    return {split.images[i].tobytes() for i in range(len(split.images))}


def _ids(split) -> set[int]:
    """The package's image ids of a train or val split's pictures, found by their pixels."""
    train, _ = ev.load_pictures()
    by_bytes = {train[k].tobytes(): k for k in range(len(train))}
    return {by_bytes[p] for p in _pictures(split)}


def test_easy_vqa_keeps_the_package_counts_and_carves_val_by_image(ds):
    assert isinstance(ds, DigitsVQA) and ds.source == "easy-vqa"
    assert ds.split_info.images == {"train": 3600, "val": 400, "test": 1000}
    assert len(ds.train) + len(ds.val) == 38_575 and len(ds.test) == 9_673
    assert ds.split_info.rows == {"train": len(ds.train), "val": len(ds.val), "test": 9_673}
    assert not _ids(ds.train) & _ids(ds.val) and len(_ids(ds.train) | _ids(ds.val)) == 4000
    for split in (ds.train, ds.val, ds.test):  # every picture is asked something, and only its own questions
        assert np.array_equal(np.unique(split.image_index), np.arange(len(split.images)))
    assert "seed 0" in ds.split_info.rule and "400" in ds.split_info.rule


def test_easy_vqa_questions_and_answers_are_the_package_ones(ds):
    texts, answers, _ = easy_vqa.get_train_questions()
    ours = sorted(
        zip(ds.train.texts + ds.val.texts, [ds.classes[i] for i in np.r_[ds.train.labels, ds.val.labels]], strict=True)
    )
    assert ours == sorted(zip(texts, answers, strict=True))
    texts, answers, ids = easy_vqa.get_test_questions()
    assert ds.test.texts == tuple(texts) and [ds.classes[i] for i in ds.test.labels] == answers
    _, test_pictures = ev.load_pictures()
    assert all(
        ds.test.images[m].tobytes() == test_pictures[k].tobytes() for m, k in zip(ds.test.image_index, ids, strict=True)
    )


def test_easy_vqa_has_the_13_answers_in_the_package_order(ds):
    assert ds.classes == tuple(easy_vqa.get_answers()) and len(ds.classes) == 13


def test_easy_vqa_val_is_seeded_and_stratified_by_shape():
    first, again, other = ev.build(seed=0), ev.build(seed=0), ev.build(seed=1)
    assert _ids(first.val) == _ids(again.val) and _ids(first.val) != _ids(other.val)
    shapes = np.bincount(first.val.digits, minlength=13)[[first.classes.index(s) for s in ev.SHAPES]]
    everyone = np.bincount(np.r_[first.train.digits, first.val.digits], minlength=13)
    expected = 400 * everyone[[first.classes.index(s) for s in ev.SHAPES]] / 4000
    assert np.abs(shapes - expected).max() < 1  # proportional to the shapes of the 4,000


def test_easy_vqa_val_images_set_the_validation_size():
    ds = load_dataset(DataConfig(name="easy-vqa", val_images=100))
    assert ds.split_info.images == {"train": 3900, "val": 100, "test": 1000}


def test_easy_vqa_pictures_convert_to_any_model_input(ds):
    assert ds.native_format().describe() == "64x64 colour" and ds.native_format().foreground == "natural"
    x = ds.test.pixels(np.arange(5), ImagePreprocessing(64, 64, 3))
    assert x.shape == (5, 3, 64, 64) and x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert ds.test.pixels(np.arange(5), ImagePreprocessing(96, 96, 3)).shape == (5, 3, 96, 96)
    gray = ds.test.pictures(np.arange(3), ImagePreprocessing(64, 64, 1))
    assert gray.shape == (3, 1, 64, 64) and gray.dtype == np.float32


def test_easy_vqa_training_stats_are_measured_on_train(ds):
    mean, std = ds.training_stats(ImagePreprocessing(64, 64, 3))
    train = np.stack(list(ds.train.images)) / 255.0  # (3600, 64, 64, 3)
    np.testing.assert_allclose(mean, train.mean((0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(std, train.std((0, 1, 2)), atol=1e-4)


def test_easy_vqa_families_follow_the_wording_and_cover_every_question(ds):
    assert ds.test.family_names == ("color", "shape", "yes/no")
    for split in (ds.train, ds.val, ds.test, ds.paraphrase):
        assert len(split.families) == len(split) and set(np.unique(split.families)) == {0, 1, 2}
    for text, family in zip(ds.test.texts, ds.test.families, strict=True):
        kind, _ = ev.parse_question(text)
        expected = {"color of": 0, "shape of": 1, "which shape": 1}.get(kind, 2)
        assert family == expected, text


def test_shape_from_pixels_agrees_with_every_shape_the_questions_state():
    train, test = ev.load_pictures()
    for pictures, (texts, answers, ids) in (
        (train, easy_vqa.get_train_questions()),
        (test, ev._package().get_test_questions()),
    ):
        said = ev._shapes_from_questions(texts, answers, np.asarray(ids), len(pictures))
        known = said >= 0
        assert known.mean() > 0.85
        assert np.array_equal(ev._shapes_from_pixels(pictures[known]), said[known])


def test_paraphrases_reword_every_test_question_into_an_unseen_wording(ds):
    train_texts = set(easy_vqa.get_train_questions()[0])
    para, test = ds.paraphrase, ds.test
    assert len(para) == len(test) and not set(para.texts) & train_texts
    assert all(p != t for p, t in zip(para.texts, test.texts, strict=True))
    assert para.images is test.images and np.array_equal(para.image_index, test.image_index)
    assert np.array_equal(para.labels, test.labels) and np.array_equal(para.families, test.families)
    assert len(set(para.texts)) > 150  # several rewrites of each of the 107 wordings


def test_validation_paraphrases_use_wordings_neither_training_nor_the_test_paraphrases_use(ds):
    train_texts = set(easy_vqa.get_train_questions()[0])
    para, val = ds.val_paraphrase, ds.val
    assert len(para) == len(val) and not set(para.texts) & (train_texts | set(ds.paraphrase.texts))
    assert para.images is val.images and np.array_equal(para.image_index, val.image_index)
    assert np.array_equal(para.labels, val.labels) and np.array_equal(para.families, val.families)
    assert len(set(para.texts)) > 150


def test_validation_rewrites_keep_the_meaning_of_a_question():
    rng = np.random.default_rng(0)
    seen = {ev.paraphrase_text("is there not a circle?", rng, ev._VAL_REWRITES) for _ in range(200)}
    assert "is this shape not a circle?" in seen and all(" not " in s or " no " in s or "lack" in s for s in seen)
    seen = {ev.paraphrase_text("what is the blue shape?", rng, ev._VAL_REWRITES) for _ in range(200)}
    assert all("blue" in s for s in seen) and len(seen) == len(ev._VAL_REWRITES["shape of"])


def test_paraphrases_keep_the_meaning_of_a_question():
    rng = np.random.default_rng(0)
    seen = {ev.paraphrase_text("is there a red shape?", rng) for _ in range(200)}
    assert "is the shape red?" in seen and "is there a red shape in the picture?" in seen
    seen = {ev.paraphrase_text("is there not a circle?", rng) for _ in range(200)}
    assert "is the shape not a circle?" in seen and all(" not " in s or " no " in s or "missing" in s for s in seen)
    seen = {ev.paraphrase_text("what color is the triangle?", rng) for _ in range(200)}
    assert all("triangle" in s and "colo" in s for s in seen)


def test_paraphrases_are_seeded():
    assert ev.build(seed=0).paraphrase.texts == ev.build(seed=0).paraphrase.texts
    assert ev.build(seed=0).paraphrase.texts != ev.build(seed=1).paraphrase.texts


def test_easy_vqa_config_refuses_test_images_in_one_sentence():
    with pytest.raises(ValidationError, match=r"data\.test_images does not apply to easy-vqa.*remove test_images"):
        DataConfig(name="easy-vqa", test_images=500)
    with pytest.raises(ValidationError, match="choose at most 2,000"):
        DataConfig(name="easy-vqa", val_images=3000)
    recorded = DataConfig(name="easy-vqa").model_dump(mode="json")  # as a model records it
    assert DataConfig(**recorded).val_images is None


def test_digits_vqa_keeps_its_250_validation_images():
    assert DataConfig().val_images is None
    assert load_dataset(DataConfig()).split_info.images["val"] == 250


def test_easy_vqa_names_the_extra_when_the_package_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "mmedge\[pretrained\]"'):
        load_dataset(DataConfig(name="easy-vqa", seed=5))  # not built yet: the package is looked up first
