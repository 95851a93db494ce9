"""The model registry: what a model family is, and where each zoo family lives.

This module is the leaf that the family modules and :mod:`mmedge.models` import. It imports no family module and no
torch, so that looking a family up, and validating its options while a recipe is parsed, costs no model code. A zoo
family is defined in one file::

    @register_model("cnn-lstm", CnnLstmConfig)     # options class from mmedge.models.options (torch-free)
    class CnnLstm(nn.Module): ...

and named once in :data:`FAMILY_TABLE` below, with the module that defines it and its options class (recipe parsing
needs that class before any family module is imported). A test checks that the table and the decorators agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmedge.errors import UnknownNameError, closest
from mmedge.models.options import CnnLstmConfig, EffnetMiniLMConfig, FamilyConfig, VitTransformerConfig


@dataclass(frozen=True)
class FamilyDecl:
    """Where a zoo family lives and what options it takes, known without importing it."""

    module: str
    options: type[FamilyConfig]


# Every zoo family: name -> declaration. One line per family; the module registers it with @register_model.
FAMILY_TABLE: dict[str, FamilyDecl] = {
    "cnn-lstm": FamilyDecl("mmedge.models.cnn_lstm", CnnLstmConfig),
    "vit-transformer": FamilyDecl("mmedge.models.vit_transformer", VitTransformerConfig),
    "effnet-minilm": FamilyDecl("mmedge.models.effnet_minilm", EffnetMiniLMConfig),
}


@dataclass(frozen=True)
class ModelFamily:
    name: str
    config_cls: type[FamilyConfig]
    build: Callable[..., Any]  # (config, vocab_size, num_classes) -> nn.Module with .spec()
    # (config) -> the model's own tokenizer; None: a word vocabulary is built from the training texts
    tokenizer: Callable[..., Any] | None = None


# The zoo families registered so far (filled as their modules are imported, by get_zoo_family).
MODELS: dict[str, ModelFamily] = {}


def register_model(name: str, config_cls: type[FamilyConfig], tokenizer: Callable[..., Any] | None = None):
    """Register the decorated ``nn.Module`` class as the zoo family ``name`` declared in :data:`FAMILY_TABLE`;
    ``tokenizer(config)`` gives a family's own tokenizer (a pretrained text tower's), else a word vocabulary is
    built from the training texts."""
    decl = FAMILY_TABLE.get(name)
    if decl is None or decl.options is not config_cls:
        # a programming error, not a user's: the table is what recipe parsing reads, so it must not disagree
        raise TypeError(f"model family {name!r} ({config_cls.__name__}) is not declared so in FAMILY_TABLE")

    def wrap(cls):
        MODELS[name] = ModelFamily(name, config_cls, cls, tokenizer)
        cls.family = name
        return cls

    return wrap


def zoo_decl(name: str) -> FamilyDecl:
    """The declaration of a zoo family; an unknown name is a clear error naming the closest one."""
    if name not in FAMILY_TABLE:
        names = sorted(FAMILY_TABLE)
        raise UnknownNameError(
            f"unknown model family '{name}'{closest(name, names)}; choose one of: {', '.join(names)}."
        )
    return FAMILY_TABLE[name]


def get_zoo_family(name: str) -> ModelFamily:
    """The zoo family ``name``, importing only its module (and through it torch)."""
    decl = zoo_decl(name)
    if name not in MODELS:
        importlib.import_module(decl.module)
        if name not in MODELS:
            raise TypeError(f"{decl.module} does not register model family {name!r} as FAMILY_TABLE says")
    return MODELS[name]


def family_names() -> list[str]:
    return sorted(FAMILY_TABLE)
