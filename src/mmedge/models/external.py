"""Models defined outside the zoo: ``py:package.module:factory`` (any PyTorch module) and ``hf:PATH`` (a Hugging Face
folder, see ``mmedge.models.hf``). Each becomes a model family on the fly, so train, export, quantize, validate,
bench and bundle work on it unchanged.

The factory is called as ``factory(vocab_size=..., num_classes=..., **options)`` and returns ``(module, spec)``:
a ``torch.nn.Module`` whose ``forward`` takes the spec's inputs in order and returns the logits, and the
:class:`~mmedge.models.spec.ModelSpec` (inputs, outputs, dynamic axes, image preprocessing, branch map).

Importing a module runs its code. A recipe that names a ``py:`` model, or a Hugging Face folder whose config asks
for its own code, is therefore refused unless code is trusted (``--trust-code``, which sets ``MMEDGE_TRUST_CODE=1``
for this process and the export subprocess) — as Hugging Face's ``trust_remote_code`` does.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from mmedge.errors import RecipeError, UntrustedCodeError
from mmedge.models import FamilyConfig, ModelFamily

TRUST_ENV = "MMEDGE_TRUST_CODE"
_FACTORY = re.compile(r"^py:([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")


def code_trusted() -> bool:
    return os.environ.get(TRUST_ENV) == "1"


def trust_code(enabled: bool = True) -> None:
    """Allow (or forbid again) importing user code, here and in the subprocesses mmedge starts."""
    if enabled:
        os.environ[TRUST_ENV] = "1"
    else:
        os.environ.pop(TRUST_ENV, None)


def require_trust(what: str) -> None:
    if not code_trusted():
        raise UntrustedCodeError(
            f"{what}; importing it runs its code, so mmedge refuses unless you pass --trust-code (as Hugging Face's "
            "trust_remote_code) — do so only for code you trust."
        )


class ExternalOptions(FamilyConfig):
    """Keyword arguments passed to the factory as they are."""

    model_config = ConfigDict(frozen=True, extra="allow")


def parse_factory(name: str) -> tuple[str, str]:
    match = _FACTORY.match(name)
    if not match:
        raise RecipeError(
            f"model '{name}' is not a factory reference; write py:package.module:function (for example "
            "py:mmedge.examples.bow_fusion:build)."
        )
    return match.group(1), match.group(2)


def py_family(name: str) -> ModelFamily:
    module_name, attr = parse_factory(name)
    require_trust(f"the recipe names the Python model {name}")
    if os.getcwd() not in sys.path:  # a factory next to the recipe imports as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(
            f"cannot import {module_name} for the model {name} ({exc}); install the package or run mmedge from "
            "the folder that holds it."
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise RecipeError(f"{module_name} has no function '{attr}'; name the factory that returns (module, spec).")

    def build(cfg: ExternalOptions, vocab_size: int, num_classes: int):
        try:
            made = factory(vocab_size=vocab_size, num_classes=num_classes, **cfg.model_dump())
        except Exception as exc:  # the user's code: whatever it raises is reported as one sentence
            detail = str(exc).splitlines()[0][:160] if str(exc) else ""
            raise RecipeError(
                f"the factory {name} failed ({type(exc).__name__}: {detail})"
                "; it is called as factory(vocab_size=..., num_classes=..., **model.options) and must return "
                "(module, ModelSpec)."
            ) from None
        return adopt(made, name, cfg.model_dump(), vocab_size, num_classes)

    return ModelFamily(name, ExternalOptions, build)


def adopt(made: Any, family: str, options: dict, vocab_size: int, num_classes: int):
    """Give a factory's module what mmedge's steps ask of a model: its family, options, sizes and spec."""
    import torch

    from mmedge.models.spec import ModelSpec

    if not (isinstance(made, tuple) and len(made) == 2):
        raise RecipeError(
            f"the factory of {family} must return (module, ModelSpec); it returned {type(made).__name__}."
        )
    module, spec = made
    if not isinstance(module, torch.nn.Module) or not isinstance(spec, ModelSpec):
        raise RecipeError(
            f"the factory of {family} returned ({type(module).__name__}, {type(spec).__name__}); it must return "
            "(torch.nn.Module, mmedge.models.spec.ModelSpec)."
        )
    if not spec.outputs or spec.outputs[0].name != "logits":
        raise RecipeError(f"the spec of {family} must name 'logits' as its first output (batch, classes).")
    module.family = family
    module.vocab_size = vocab_size
    module.num_classes = num_classes
    module.spec = lambda: spec
    module.current_options = lambda: dict(options)
    return module


def external_family(name: str) -> ModelFamily | None:
    """The family behind a ``py:`` or ``hf:`` name, or None for zoo names."""
    if name.startswith("py:"):
        return py_family(name)
    if name.startswith("hf:"):
        from mmedge.models.hf import hf_family

        return hf_family(Path(name[3:]))
    return None
