"""Datasets. A dataset is chosen by name in the recipe's ``data`` section: the built-in ones are built in code from
data that ship inside installed packages or the system (nothing is downloaded); ``user`` reads the user's own."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmedge.data import digits_vqa
from mmedge.errors import UnknownNameError, closest

DATASETS = ("digits-vqa", "easy-vqa", "fashion-vqa", "user")
# data.val_images when the recipe leaves it out: a tenth of the pictures validation is drawn from (digits-vqa: of
# the 4,000 left after test; easy-vqa: of the package's 4,000 train pictures). One default could not serve both
# without changing the digits split, and a model records its data config as written (null stays null).
VAL_IMAGES = {"digits-vqa": 250, "easy-vqa": 400}
EASY_VQA_TEST_IMAGES = 1000  # easy-vqa's test split is the package's own 1,000 pictures


class DataConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        "digits-vqa",
        description="'digits-vqa' (built-in: 5,000 MNIST digits shipped inside mmedge), 'easy-vqa' (built-in "
        "when the easy-vqa package is installed, mmedge[pretrained]; MIT: 4,000 + 1,000 64x64 colour pictures of one "
        "shape each, 38,575 + 9,673 questions, 13 answers, the package's train/test split), 'fashion-vqa' (built-in "
        "when Debian's dataset-fashion-mnist is installed) or 'user' (your data, at `path`).",
    )
    source: Literal["mnist", "sklearn-digits"] = Field(
        "mnist",
        description="digits-vqa only: the 5,000 real MNIST digits shipped inside mmedge, or scikit-learn's 1,797 "
        "8x8 digits upscaled to 28x28 (needs scikit-learn: mmedge[data]).",
    )
    path: Path | None = Field(
        None,
        description="user only: a JSONL/CSV manifest (image, text, label; optional split: train/val/test), a "
        "folder of <label>/<image> files with a captions file, or a folder of MNIST-format IDX files (questions "
        "are generated as for fashion-vqa).",
    )
    labels: tuple[str, ...] | None = Field(
        None,
        description="user only: the closed set of labels (a row with another label is bad); for IDX files, the "
        "name of class 0, 1, ... (default: the numbers).",
    )
    skip_bad_rows: bool = Field(
        False, description="Leave out rows whose image does not decode or whose label is unknown, and count them."
    )
    seed: int = Field(0, description="Seeds the splits and the questions; same seed, same data.")
    test_images: int = Field(
        1000,
        ge=10,
        description="digits-vqa: images held out for the test split (easy-vqa's test split is fixed: its 1,000).",
    )
    val_images: int | None = Field(
        None,
        ge=10,
        description="Built-in sets: images held out of train for early stopping; by default 250 for digits-vqa and "
        "400 (of 4,000) for easy-vqa, a tenth of the pictures each draws from.",
    )
    max_images: int = Field(
        6000, ge=30, description="IDX sets: a stratified subset of this many images (fashion-mnist has 70,000)."
    )
    group_by: str | None = Field(
        None,
        description="user manifests only: a column whose rows stay in one split (a patient, scene or photo "
        "session), so that near-identical pictures are not both trained and tested on; by default each image "
        "file (identical files count as one) is its own group.",
    )
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=0.5,
        description="user and IDX sets: share of the images (or groups) of each label held out for test; "
        "ignored when a manifest has a split column.",
    )
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="user and IDX sets: share of the images (or groups) of each label held out for early "
        "stopping; drawn from train when a split column has no val rows.",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.name not in DATASETS:
            hint = closest(self.name, list(DATASETS))
            raise ValueError(f"unknown dataset '{self.name}'{hint}; choose one of: {', '.join(DATASETS)}")
        if (self.name == "user") != (self.path is not None):
            raise ValueError(
                "data.path is needed for the 'user' dataset (and only for it); name your manifest or folder"
            )
        # A recorded config repeats test_images at its default, so only another value is refused.
        if self.name == "easy-vqa" and self.test_images != EASY_VQA_TEST_IMAGES:
            raise ValueError(
                "data.test_images does not apply to easy-vqa, whose test split is the package's fixed 1,000 "
                "pictures; remove test_images"
            )
        if self.name == "easy-vqa" and self.val_images is not None and self.val_images > 2000:
            raise ValueError(
                f"data.val_images is {self.val_images} but easy-vqa draws validation from its 4,000 training "
                "pictures; choose at most 2,000"
            )
        if self.group_by is not None and self.name != "user":
            raise ValueError(
                f"data.group_by names a manifest column, and the '{self.name}' dataset has none; remove group_by"
            )
        return self


# manifest stems that say nothing about the data: the folder's name goes first ("shapes-train", not "train")
_GENERIC_STEMS = {"train", "test", "val", "data", "dataset", "manifest", "labels", "index", "captions", "all", "model"}


def data_name(path: str | Path) -> str:
    """A run and bundle name for a user dataset: the manifest's stem, or the folder's name, in the characters a
    recipe name allows (letters, digits, '.', '_', '-')."""
    path = Path(path).resolve()
    stem = path.name if path.is_dir() or not path.suffix else path.stem
    if stem.lower() in _GENERIC_STEMS and path.parent.name and path.parent.name.lower() not in _GENERIC_STEMS:
        stem = f"{path.parent.name}-{stem}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip("._-")
    return name or "user-data"


def load_dataset(cfg: DataConfig) -> digits_vqa.DigitsVQA:
    if cfg.name not in DATASETS:
        raise UnknownNameError(
            f"unknown dataset '{cfg.name}'{closest(cfg.name, list(DATASETS))}; choose one of: {', '.join(DATASETS)}."
        )
    val_images = cfg.val_images if cfg.val_images is not None else VAL_IMAGES.get(cfg.name)
    if cfg.name == "digits-vqa":
        return digits_vqa.build(seed=cfg.seed, source=cfg.source, test_images=cfg.test_images, val_images=val_images)
    if cfg.name == "easy-vqa":
        from mmedge.data import easy_vqa

        return easy_vqa.build(seed=cfg.seed, val_images=val_images)  # cached per (seed, val_images)
    from mmedge.data import user

    path = user.FASHION_MNIST_DIR if cfg.name == "fashion-vqa" else Path(cfg.path)
    return _load_user(cfg, _stamp(path))


def _stamp(path: Path) -> tuple:
    """Changes when the data on disk change, so the cache below never serves stale rows."""
    if path.is_file():
        return (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size)
    if path.is_dir():
        return (str(path.resolve()), max((p.stat().st_mtime_ns for p in path.rglob("*")), default=0))
    return (str(path),)


@functools.lru_cache(maxsize=4)
def _load_user(cfg: DataConfig, stamp: tuple) -> digits_vqa.DigitsVQA:
    from mmedge.data import user

    return user.build_splits(cfg)
