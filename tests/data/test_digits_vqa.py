import hashlib
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest

from mmedge.data import DataConfig, digits_vqa
from mmedge.data.digits_vqa import FAMILIES, LABELS, MNIST_FILE, ask, build, load_digit_images
from mmedge.errors import MissingDependencyError

# sha256 of the shipped arrays' bytes: the first 500 images of each digit of MNIST's training set, sorted by digit
MNIST_IMAGES_SHA256 = "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f"
MNIST_LABELS_SHA256 = "41b7b0a9d94690a3a2f54a1d01a9f1cc1b9512e3954fb737ad5ed9f66972403d"
# sha256 of every array and question of build(seed=0); equal to the set built from the CSV the digits came from
DIGITS_VQA_SEED0_SHA256 = "c1a024f9c4276e7e3bf08854eb89e9a45725825dd11744f94d407e718aa276bd"


@pytest.fixture(scope="module")
def ds():
    return build(seed=0)


def test_shipped_mnist_file_holds_the_expected_5000_digits():
    with np.load(MNIST_FILE, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["images", "labels"]
        images, labels = npz["images"], npz["labels"]
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10 and (np.diff(labels) >= 0).all()  # sorted by digit
    assert hashlib.sha256(images.tobytes()).hexdigest() == MNIST_IMAGES_SHA256
    assert hashlib.sha256(labels.tobytes()).hexdigest() == MNIST_LABELS_SHA256
    assert MNIST_FILE.stat().st_size < 1_000_000  # compressed: about 0.8 MB


def test_digits_vqa_is_unchanged_for_seed_0(ds):
    h = hashlib.sha256()
    for split in (ds.train, ds.val, ds.test):
        for array in (split.images, split.digits, split.image_index, split.labels, split.families):
            h.update(array.tobytes())
        h.update("\n".join(split.texts).encode())
    assert h.hexdigest() == DIGITS_VQA_SEED0_SHA256


def test_digits_vqa_builds_when_mlxtend_pandas_and_sklearn_are_missing():
    code = (
        "import sys\n"
        "for name in ('mlxtend', 'pandas', 'scipy', 'sklearn'): sys.modules[name] = None\n"
        "from mmedge.data import DataConfig, load_dataset\n"
        "print(len(load_dataset(DataConfig()).test))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4000"


def test_sklearn_source_names_the_extra_when_scikit_learn_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingDependencyError, match=r"needs scikit-learn; run `pip install 'mmedge\[data\]'`"):
        digits_vqa.load_digit_images.__wrapped__("sklearn-digits")


def test_split_info_states_the_rule_and_counts(ds):
    info = ds.split_info
    assert info.rule.startswith("by image, seeded (seed 0)")
    assert info.images == {"train": 3750, "val": 250, "test": 1000}
    assert info.rows == {"train": 15000, "val": 1000, "test": 4000} and info.groups is None
    assert "test 1,000 images (4,000 questions)" in info.describe()
    assert info.to_json()["images"]["test"] == len(ds.test.images)


def test_images_are_real_mnist_digits_balanced_by_class():
    images, digits = load_digit_images("mnist")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(digits).tolist() == [500] * 10
    assert images.max() == 255 and (images == 0).mean() > 0.5  # light strokes on a dark background
    assert not images.flags.writeable  # the cached arrays are shared by every caller


def test_splits_are_disjoint_by_image(ds):
    def keys(split):
        return {split.images[i].tobytes() for i in range(len(split.images))}

    assert not keys(ds.train) & keys(ds.test)
    assert not keys(ds.val) & keys(ds.test)
    assert len(ds.test.images) == 1000 and len(ds.test) == 4000


def test_build_is_deterministic_for_a_seed_and_differs_across_seeds():
    a, b = build(seed=3), build(seed=3)
    assert a.test.texts == b.test.texts and np.array_equal(a.test.images, b.test.images)
    c = build(seed=4)
    assert not np.array_equal(a.test.images, c.test.images)


def test_every_family_has_several_paraphrases(ds):
    by_family = defaultdict(set)
    for text, fam in zip(ds.train.texts, ds.train.families, strict=True):
        words = [w for w in text.split() if not w.strip("?").isdigit()]
        by_family[FAMILIES[fam]].add(" ".join(words))
    assert all(len(v) >= 3 for v in by_family.values()), {k: len(v) for k, v in by_family.items()}


def test_yes_no_families_are_balanced(ds):
    for fam in range(3):
        labels = ds.test.labels[ds.test.families == fam]
        assert set(labels) <= {0, 1}
        assert 0.4 < labels.mean() < 0.6, FAMILIES[fam]


def test_text_alone_cannot_score_well(ds):
    # The best text-only classifier answers each distinct question with its most common training answer.
    answers = defaultdict(Counter)
    for text, label in zip(ds.train.texts, ds.train.labels, strict=True):
        answers[text][label] += 1
    hit = [
        answers[t].most_common(1)[0][0] == y if t in answers else False
        for t, y in zip(ds.test.texts, ds.test.labels, strict=True)
    ]
    assert np.mean(hit) < 0.6


@pytest.mark.parametrize("digit", range(10))
def test_answers_are_correct_for_each_family(digit):
    rng = np.random.default_rng(digit)
    for _ in range(50):
        text, label = ask(digit, FAMILIES.index("arithmetic"), rng)
        k = (
            next(int(w.strip("?")) for w in text.split() if w.strip("?").isdigit())
            if any(w.strip("?").isdigit() for w in text.split())
            else None
        )
        if k is None:
            continue
        want = (digit + k) % 10 if ("plus" in text or "more" in text or "add" in text) else (digit - k) % 10
        assert LABELS[label] == str(want), text
        text, label = ask(digit, FAMILIES.index("parity"), rng)
        even = "even" in text
        assert LABELS[label] == ("yes" if (digit % 2 == 0) == even else "no"), text


def test_sklearn_source_gives_28px_images():
    images, digits = load_digit_images("sklearn-digits")
    assert images.shape[1:] == (28, 28) and len(images) == len(digits) == 1797


def test_unknown_dataset_name_is_refused():
    with pytest.raises(ValueError, match="unknown dataset 'digit-vqa'.*did you mean 'digits-vqa'"):
        DataConfig(name="digit-vqa")
