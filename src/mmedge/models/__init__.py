"""Models: the zoo (one file per family, registered with ``@register_model`` where it is defined) and models from
outside it (``hf:`` folders, ``py:`` factories).

    registry.py         the leaf: ModelFamily, register_model, FAMILY_TABLE (zoo name -> module, options class)
    options.py          every family's options (pydantic only), validated when a recipe is parsed
    external.py         hf:/py: names -> families, checked without torch; user code imported when built
    cnn_lstm.py, vit_transformer.py, hf.py    the PyTorch modules, imported only to build a model
    spec.py, checkpoint.py                    the export contract (torch-free); checkpoint folders

Looking a family up and validating its options (:func:`family_config`, what recipe parsing calls) import no torch;
building a model (:func:`build_model`, ``get_family(name).build``) imports the family's module and torch.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from mmedge.errors import RecipeError
from mmedge.models.external import external_family, is_external
from mmedge.models.options import FamilyConfig
from mmedge.models.registry import FAMILY_TABLE, MODELS, ModelFamily, get_zoo_family, register_model, zoo_decl

__all__ = [
    "FAMILY_TABLE",
    "MODELS",
    "FamilyConfig",
    "ModelFamily",
    "build_model",
    "family_config",
    "get_family",
    "options_class",
    "register_model",
]


def get_family(name: str) -> ModelFamily:
    """The family ``name`` names, ready to build: a zoo family (its module imported) or an hf:/py: source."""
    if is_external(name):
        return external_family(name)
    return get_zoo_family(name)


def options_class(name: str) -> type[FamilyConfig]:
    """The options class of ``name``, found without importing a model module, torch or user code."""
    if is_external(name):
        return external_family(name).config_cls  # checks the name, trust and an hf: folder; imports nothing
    return zoo_decl(name).options


def family_config(name: str, options: dict[str, Any] | None) -> FamilyConfig:
    """``options`` validated for the family ``name``; an unknown name or a bad option is one clear sentence."""
    cls = options_class(name)
    try:
        return cls(**(options or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise RecipeError(
            f"invalid options for model family '{name}': {problems}; fix them in the recipe's model.options."
        ) from exc


def build_model(name: str, options: dict[str, Any] | FamilyConfig | None, vocab_size: int, num_classes: int):
    fam = get_family(name)
    cfg = options if isinstance(options, FamilyConfig) else family_config(name, options)
    return fam.build(cfg, vocab_size=vocab_size, num_classes=num_classes)
