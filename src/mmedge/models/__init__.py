"""Model zoo: one file per family, each registered with ``@register_model`` where it is defined."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mmedge.errors import RecipeError, UnknownNameError, closest


class FamilyConfig(BaseModel):
    """Base of every family's hyper-parameters. Sizes that come from the data are filled in by the caller."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class ModelFamily:
    name: str
    config_cls: type[FamilyConfig]
    build: Callable[..., Any]  # (config, vocab_size, num_classes) -> nn.Module with .spec()
    # (config) -> the model's own tokenizer; None: a word vocabulary is built from the training texts
    tokenizer: Callable[..., Any] | None = None


MODELS: dict[str, ModelFamily] = {}


def register_model(name: str, config_cls: type[FamilyConfig]):
    def wrap(cls):
        MODELS[name] = ModelFamily(name, config_cls, cls)
        cls.family = name
        return cls

    return wrap


def _load_zoo() -> None:
    from mmedge.models import cnn_lstm, vit_transformer  # noqa: F401  (registers the families)


def get_family(name: str) -> ModelFamily:
    _load_zoo()
    if name.startswith(("py:", "hf:")):
        from mmedge.models.external import external_family

        return external_family(name)
    if name not in MODELS:
        raise UnknownNameError(
            f"unknown model family '{name}'{closest(name, list(MODELS))}; choose one of: {', '.join(sorted(MODELS))}."
        )
    return MODELS[name]


def family_config(name: str, options: dict[str, Any] | None) -> FamilyConfig:
    fam = get_family(name)
    try:
        return fam.config_cls(**(options or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors())
        raise RecipeError(f"invalid options for model family '{name}': {problems}.") from exc


def build_model(name: str, options: dict[str, Any] | FamilyConfig | None, vocab_size: int, num_classes: int):
    fam = get_family(name)
    cfg = options if isinstance(options, FamilyConfig) else family_config(name, options)
    return fam.build(cfg, vocab_size=vocab_size, num_classes=num_classes)
