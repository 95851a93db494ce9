from collections import Counter, defaultdict

import numpy as np
import pytest

from mmedge.data import DataConfig
from mmedge.data.digits_vqa import FAMILIES, LABELS, ask, build, load_digit_images


@pytest.fixture(scope="module")
def ds():
    return build(seed=0)


def test_images_are_real_mnist_digits_balanced_by_class():
    images, digits = load_digit_images("mnist")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(digits).tolist() == [500] * 10
    assert images.max() == 255 and (images == 0).mean() > 0.5  # light strokes on a dark background


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
