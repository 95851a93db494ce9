"""easy-vqa: 5,000 real 64x64 colour pictures of one shape each, with the questions and answers of the easy-VQA set.

The pictures and questions ship inside the PyPI package ``easy-vqa`` (Victor Zhou, 2019; MIT licence;
``pip install "mmedge[pretrained]"``): 4,000 train and 1,000 test PNGs, each a circle, rectangle or triangle in
one of 8 colours on a light background, asked 38,575 + 9,673 questions of 107 distinct wordings (the same 107 in
train and test) with 13 answers. Nothing is downloaded. The package's train/test split is kept as it is: its
test split is fixed, so ``data.test_images`` does not apply. Validation is carved from train by image (every
question of a picture lies in one split), stratified by the picture's shape and seeded, ``data.val_images``
pictures of the 4,000 (400 unless the recipe says otherwise).

Each question belongs to one family, by its answer (which the wording always announces):

- color   "what color is the circle?", "what is the color of the shape?"            -> one of 8 colours
- shape   "what shape is in the image?", "what is the red shape?"                   -> circle / rectangle / triangle
- yes/no  "is there a red shape?", "does the image not contain a circle?", ...      -> yes / no

Since the test questions reuse the training wordings, a model may score by matching strings rather than reading
them; ``paraphrase`` asks the test pictures the same questions reworded (see ``paraphrase_text``) so that no
paraphrased wording is a training one, to measure that; ``val_paraphrase`` does the same for the validation
pictures in other wordings again, for choices made on reworded questions. The decoded pictures are cached per process.
numpy and Pillow only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from mmedge.data.digits_vqa import DigitsVQA, VQASplit, split_info
from mmedge.errors import InputPathError, MissingDependencyError, RecipeError

SOURCE = "easy-vqa"
FAMILIES: tuple[str, ...] = ("color", "shape", "yes/no")
SHAPES: tuple[str, ...] = ("circle", "rectangle", "triangle")
COLORS: tuple[str, ...] = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SIDE = 64  # every picture is 64x64 RGB
TRAIN_IMAGES, TEST_IMAGES = 4000, 1000
DEFAULT_VAL_IMAGES = 400  # a tenth of the 4,000 training pictures: about 3,900 questions to stop early on
MAX_VAL_IMAGES = 2000  # half of train: more would leave too little to train on


@dataclass(frozen=True)
class EasyVQA(DigitsVQA):
    """The splits (a DigitsVQA, as every dataset) plus ``paraphrase``: the test pictures and answers, with every
    question reworded into a wording no training question uses; and ``val_paraphrase``: the validation pictures
    asked in wordings neither training nor the test paraphrases use, for choices that depend on reworded
    questions."""

    paraphrase: VQASplit | None = None
    val_paraphrase: VQASplit | None = None


def _package():
    try:
        import easy_vqa
    except ImportError as exc:
        raise MissingDependencyError(
            'the easy-vqa dataset needs the easy-vqa package; run `pip install "mmedge[pretrained]"`.'
        ) from exc
    return easy_vqa


@functools.lru_cache(maxsize=1)
def load_pictures() -> tuple[np.ndarray, np.ndarray]:
    """The package's pictures, decoded once per process: train (4000, 64, 64, 3) and test (1000, 64, 64, 3) uint8
    RGB, row k the picture of image id k; read-only (they are cached)."""
    from PIL import Image

    pkg = _package()
    out = []
    for paths, count in ((pkg.get_train_image_paths(), TRAIN_IMAGES), (pkg.get_test_image_paths(), TEST_IMAGES)):
        if sorted(paths) != list(range(count)):
            raise InputPathError(
                f"the easy-vqa package holds {len(paths):,} pictures where {count:,} were expected; reinstall it "
                '(`pip install --force-reinstall "easy-vqa==1.0"`).'
            )
        pictures = np.empty((count, SIDE, SIDE, 3), np.uint8)  # (M, H, W, 3)
        for k in range(count):
            with Image.open(paths[k]) as im:
                pictures[k] = np.asarray(im.convert("RGB"), dtype=np.uint8)
        pictures.setflags(write=False)
        out.append(pictures)
    return out[0], out[1]


# The wordings of the package's 107 questions: 14 forms, {s} a subject (shape, circle, rectangle, triangle),
# {c} a colour, {x} a thing looked for (a shape name, or a colour and "shape").
_FORMS: dict[str, str] = {
    "what color is the {s}?": "color of",
    "what is the color of the {s}?": "color of",
    "what is the {c} shape?": "shape of",
    "what shape does the image contain?": "which shape",
    "what shape is in the image?": "which shape",
    "what shape is present?": "which shape",
    "does the image contain a {x}?": "present",
    "is a {x} present?": "present",
    "is there a {x} in the image?": "present",
    "is there a {x}?": "present",
    "does the image not contain a {x}?": "absent",
    "is no {x} present?": "absent",
    "is there not a {x} in the image?": "absent",
    "is there not a {x}?": "absent",
}
_SLOTS = {
    "s": "(?P<obj>shape|" + "|".join(SHAPES) + ")",
    "c": "(?P<obj>" + "|".join(COLORS) + ")",
    "x": "(?P<obj>" + "|".join(SHAPES) + "|(?:" + "|".join(COLORS) + ") shape)",
}
_PATTERNS = tuple(
    (re.compile(re.sub(r"\\\{(\w)\\\}", lambda m: _SLOTS[m.group(1)], re.escape(form))), kind)
    for form, kind in _FORMS.items()
)

# The rewrites of each kind of question: "colour" or "which" for "color" and "what", "picture" for "image",
# "show" / "have" / "see" / "visible" for "contain" and "present", "missing" / "no" / "not ... see" for the
# negations, and "is the shape C?" for "is there a C shape?" (every picture holds exactly one shape). Shape and
# colour names are kept, so each answer stays exactly what it was.
_REWRITES: dict[str, tuple[str, ...]] = {
    "color of": (
        "what colour is the {obj}?",
        "which colour is the {obj}?",
        "which color is the {obj}?",
        "what is the colour of the {obj}?",
        "what color does the {obj} have?",
    ),
    "shape of": (
        "which shape is {obj}?",
        "what shape is the {obj} one?",
        "what kind of shape is the {obj} one?",
        "what is the {obj} figure?",
    ),
    "which shape": (
        "what kind of shape is shown?",
        "which shape does the picture show?",
        "what shape is in the picture?",
        "what shape can you see?",
        "which shape is drawn?",
    ),
    "present": (
        "does the picture show a {obj}?",
        "is there a {obj} in the picture?",
        "can you see a {obj}?",
        "does the picture have a {obj} in it?",
        "is a {obj} visible?",
        "is the shape {named}?",
    ),
    "absent": (
        "does the picture not show a {obj}?",
        "is there no {obj} in the picture?",
        "is a {obj} missing from the picture?",
        "can you not see a {obj}?",
        "is the shape not {named}?",
    ),
}

# Validation paraphrases: other wordings again, so that a choice made on reworded validation questions (e.g. how
# far to cut the vocabulary) is never made on the test paraphrases' own wordings. No wording here is a training
# one or one of the test rewrites above (checked when the data set is built).
_VAL_REWRITES: dict[str, tuple[str, ...]] = {
    "color of": (
        "what's the color of the {obj}?",
        "in which colour is the {obj} drawn?",
        "what colour has the {obj}?",
        "which color has the {obj}?",
    ),
    "shape of": (
        "which figure is {obj}?",
        "what is the shape of the {obj} one?",
        "which shape is the {obj} one?",
        "what is the {obj} thing?",
    ),
    "which shape": (
        "what figure is drawn?",
        "which shape is shown in the picture?",
        "what shape appears?",
        "what is drawn in the picture?",
    ),
    "present": (
        "is there a {obj} drawn?",
        "does the picture contain a {obj}?",
        "do you see a {obj}?",
        "is a {obj} shown?",
        "is this shape {named}?",
    ),
    "absent": (
        "is there no {obj} drawn?",
        "does the picture lack a {obj}?",
        "do you not see a {obj}?",
        "is no {obj} shown?",
        "is this shape not {named}?",
    ),
}


def parse_question(text: str) -> tuple[str, str]:
    """(kind, object) of one of the package's questions: kind one of "color of", "shape of", "which shape",
    "present", "absent"; object the shape, colour or thing it names ("" for "which shape")."""
    for pattern, kind in _PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            return kind, m.groupdict().get("obj") or ""
    raise InputPathError(
        f"the easy-vqa question '{text}' has a wording this version of mmedge does not know; install easy-vqa 1.0 "
        '(`pip install "easy-vqa==1.0"`).'
    )


def paraphrase_text(text: str, rng: np.random.Generator, rewrites: dict[str, tuple[str, ...]] = _REWRITES) -> str:
    """One question reworded, the rewrite drawn from ``rng`` among those of its kind, every one keeping the answer:

    - color of     "what color is the S?", "what is the color of the S?" (S: shape, circle, rectangle, triangle)
                   -> "what colour is the S?", "which colour is the S?", "which color is the S?",
                      "what is the colour of the S?", "what color does the S have?"
    - shape of     "what is the C shape?" (C a colour)
                   -> "which shape is C?", "what shape is the C one?", "what kind of shape is the C one?",
                      "what is the C figure?"
    - which shape  "what shape does the image contain?", "what shape is in the image?", "what shape is present?"
                   -> "what kind of shape is shown?", "which shape does the picture show?",
                      "what shape is in the picture?", "what shape can you see?", "which shape is drawn?"
    - present      "does the image contain a X?", "is a X present?", "is there a X in the image?", "is there a X?"
                   (X a shape name, or "C shape")
                   -> "does the picture show a X?", "is there a X in the picture?", "can you see a X?",
                      "does the picture have a X in it?", "is a X visible?", "is the shape C?" / "is the shape a
                      circle?" (one shape per picture)
    - absent       "does the image not contain a X?", "is no X present?", "is there not a X in the image?",
                   "is there not a X?"
                   -> "does the picture not show a X?", "is there no X in the picture?",
                      "is a X missing from the picture?", "can you not see a X?", "is the shape not C?" /
                      "is the shape not a circle?"
    """
    kind, obj = parse_question(text)
    options = rewrites[kind]
    template = options[int(rng.integers(len(options)))]
    named = obj.removesuffix(" shape") if obj.endswith(" shape") else f"a {obj}"  # "is the shape red?" / "a circle"
    return template.format(obj=obj, named=named)


def family_of(answer: str) -> int:
    """The family (index into FAMILIES) of a question with this answer."""
    return 0 if answer in COLORS else 1 if answer in SHAPES else 2


def _shapes_from_questions(texts, answers, image_ids, count: int) -> np.ndarray:
    """(count,) int64 index into SHAPES of the shape each picture's questions state, -1 where none says: a shape
    answer names it, a yes/no about a shape affirms or excludes it (two exclusions name the third)."""
    named = np.full(count, -1, np.int64)
    excluded = np.zeros((count, len(SHAPES)), bool)
    for text, answer, k in zip(texts, answers, image_ids, strict=True):
        kind, obj = parse_question(text)
        if answer in SHAPES:
            named[k] = SHAPES.index(answer)
        elif kind in ("present", "absent") and obj in SHAPES:
            if (answer == "yes") == (kind == "present"):
                named[k] = SHAPES.index(obj)
            else:
                excluded[k, SHAPES.index(obj)] = True
    two_out = (named < 0) & (excluded.sum(1) == 2)
    named[two_out] = np.argmin(excluded[two_out], axis=1)
    return named


def _shapes_from_pixels(pictures: np.ndarray) -> np.ndarray:
    """(M,) int64 index into SHAPES from the pixels: the share of its bounding box a shape fills is about 1/2 for a
    triangle, pi/4 for a circle and 1 for a rectangle (it agrees with the questions on every picture they decide)."""
    x = pictures.astype(np.int16)  # (M, 64, 64, 3)
    background = np.median(np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1), axis=1)  # (M, 3)
    ink = np.abs(x - background[:, None, None].astype(np.int16)).sum(-1) > 60  # (M, 64, 64)
    rows, cols = ink.any(2), ink.any(1)  # (M, 64) each
    height = SIDE - rows.argmax(1) - rows[:, ::-1].argmax(1)
    width = SIDE - cols.argmax(1) - cols[:, ::-1].argmax(1)
    fill = ink.sum((1, 2)) / np.maximum(height * width, 1)
    triangle, circle, rectangle = (SHAPES.index(s) for s in ("triangle", "circle", "rectangle"))
    return np.where(fill < 0.7, triangle, np.where(fill < 0.915, circle, rectangle))


def image_shapes(texts, answers, image_ids, pictures: np.ndarray) -> np.ndarray:
    """(M,) int64 index into SHAPES: the shape each picture's questions state, else the one its pixels show."""
    shapes = _shapes_from_questions(texts, answers, image_ids, len(pictures))
    unknown = shapes < 0
    shapes[unknown] = _shapes_from_pixels(pictures[unknown])
    return shapes


def _draw_val(strata: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``count`` items drawn at random, each stratum in proportion to its size (largest
    remainders round the quotas to ``count``)."""
    values, sizes = np.unique(strata, return_counts=True)
    exact = count * sizes / sizes.sum()
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(-(exact - quota), kind="stable")[: count - quota.sum()]] += 1
    picked = [rng.permutation(np.flatnonzero(strata == v))[:q] for v, q in zip(values, quota, strict=True)]
    return np.sort(np.concatenate(picked))


def _objects(pictures: np.ndarray) -> np.ndarray:
    """(M,) object array of uint8 (64, 64, 3) views, as user datasets store decoded pictures for VQASplit."""
    out = np.empty(len(pictures), dtype=object)
    for k in range(len(pictures)):
        out[k] = pictures[k]
    return out


def _split(pictures, shapes, ids, keep: np.ndarray, texts, answers, classes, converted=None) -> VQASplit:
    """The questions (in the package's order) whose picture id is in ``keep`` (sorted), over those pictures."""
    rows = np.flatnonzero(np.isin(ids, keep))
    index = {a: i for i, a in enumerate(classes)}
    chosen = [answers[r] for r in rows]
    return VQASplit(
        _objects(pictures[keep]),
        np.asarray([index[SHAPES[s]] for s in shapes[keep]], np.int64),  # (M,) the class id of the shape shown
        np.searchsorted(keep, ids[rows]),
        tuple(texts[r] for r in rows),
        np.asarray([index[a] for a in chosen], np.int64),
        np.asarray([family_of(a) for a in chosen], np.int64),
        classes,
        FAMILIES,
        {} if converted is None else converted,
    )


def paraphrases(
    split: VQASplit, avoid, seed: int = 0, rewrites: dict[str, tuple[str, ...]] = _REWRITES, stream: int = 107
) -> VQASplit:
    """``split`` with every question reworded by ``paraphrase_text`` from ``rewrites`` (seeded), the same
    pictures, answers and families; no reworded question is one of the wordings ``avoid`` (checked)."""
    rng = np.random.default_rng([seed, stream])
    texts = tuple(paraphrase_text(t, rng, rewrites) for t in split.texts)
    clash = set(texts) & set(avoid)
    if clash:  # a rewrite rule above repeats a wording it must not
        raise AssertionError(f"paraphrases repeat wordings they must avoid: {sorted(clash)}")
    return VQASplit(
        split.images,
        split.digits,
        split.image_index,
        texts,
        split.labels,
        split.families,
        split.classes,
        split.family_names,
        split._converted,  # the same pictures: converted once for both splits
    )


@functools.lru_cache(maxsize=4)
def build(seed: int = 0, val_images: int = DEFAULT_VAL_IMAGES) -> EasyVQA:
    """The package's train/test split, ``val_images`` training pictures moved to val by image, stratified by shape,
    seeded; the paraphrased test questions and the paraphrased validation questions."""
    if not 1 <= val_images <= MAX_VAL_IMAGES:
        raise RecipeError(
            f"data.val_images is {val_images} but easy-vqa's validation split is carved from its {TRAIN_IMAGES:,} "
            f"training pictures; choose 1 to {MAX_VAL_IMAGES:,}."
        )
    pkg = _package()
    classes = tuple(pkg.get_answers())
    train_pics, test_pics = load_pictures()
    tr_texts, tr_answers, tr_ids = pkg.get_train_questions()
    te_texts, te_answers, te_ids = pkg.get_test_questions()
    tr_ids, te_ids = np.asarray(tr_ids, np.int64), np.asarray(te_ids, np.int64)  # (N,) picture id per question
    tr_shapes = image_shapes(tr_texts, tr_answers, tr_ids, train_pics)
    te_shapes = image_shapes(te_texts, te_answers, te_ids, test_pics)
    val = _draw_val(tr_shapes, val_images, np.random.default_rng(seed))
    train = np.setdiff1d(np.arange(TRAIN_IMAGES), val)
    splits = {
        "train": _split(train_pics, tr_shapes, tr_ids, train, tr_texts, tr_answers, classes),
        "val": _split(train_pics, tr_shapes, tr_ids, val, tr_texts, tr_answers, classes),
        "test": _split(test_pics, te_shapes, te_ids, np.arange(TEST_IMAGES), te_texts, te_answers, classes),
    }
    rule = (
        f"as the easy-vqa package splits train and test; validation: {val_images:,} of its {TRAIN_IMAGES:,} train "
        f"images, by image, stratified by shape, seeded (seed {seed})"
    )
    test_para = paraphrases(splits["test"], set(tr_texts), seed)
    return EasyVQA(
        **splits,
        source=SOURCE,
        seed=seed,
        split_info=split_info(rule, splits),
        paraphrase=test_para,
        val_paraphrase=paraphrases(splits["val"], {*tr_texts, *test_para.texts}, seed, _VAL_REWRITES, stream=108),
    )
