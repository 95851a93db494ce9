"""Models defined outside the zoo: ``py:package.module:factory`` (any PyTorch module) and ``hf:PATH`` (a Hugging Face
folder, see ``mmedge.models.hf``). Each becomes a model family on the fly, so train, export, quantize, validate,
bench and bundle work on it unchanged.

Turning a name into a family imports no torch and no user code: the name, the trust rule and a Hugging Face folder's
config.json are checked here, so a recipe that names one is parsed (and dry-run) without torch, and the factory's
module or :mod:`mmedge.models.hf` is imported only when the model is built.

The factory is called as ``factory(vocab_size=..., num_classes=..., **options)`` and returns ``(module, spec)``:
a ``torch.nn.Module`` whose ``forward`` takes the spec's inputs in order and returns the logits, and the
:class:`~mmedge.models.spec.ModelSpec` (inputs, outputs, dynamic axes, image preprocessing, branch map).

Importing a module runs its code. A recipe that names a ``py:`` model, or a Hugging Face folder whose config asks
for its own code, is therefore refused unless code is trusted (``--trust-code``, which sets ``MMEDGE_TRUST_CODE=1``
for this process and the export subprocess) — as Hugging Face's ``trust_remote_code`` does.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from mmedge.errors import InputPathError, RecipeError, UntrustedCodeError, brief
from mmedge.models.options import ExternalOptions, HFOptions
from mmedge.models.registry import ModelFamily
from mmedge.models.trust import code_trusted

_FACTORY = re.compile(r"^py:([A-Za-z_][\w.]*):([A-Za-z_]\w*)$")
# Hugging Face model_type -> the transformers class that loads it: the image-text dual encoders mmedge supports
HF_ARCHITECTURES = {"clip": "CLIPModel", "vision-text-dual-encoder": "VisionTextDualEncoderModel"}


def require_trust(what: str) -> None:
    if not code_trusted():
        raise UntrustedCodeError(
            f"{what}; importing it runs its code, so mmedge refuses unless you pass --trust-code (as Hugging Face's "
            "trust_remote_code) — do so only for code you trust."
        )


def parse_factory(name: str) -> tuple[str, str]:
    match = _FACTORY.match(name)
    if not match:
        raise RecipeError(
            f"model '{name}' is not a factory reference; write py:package.module:function (for example "
            "py:mmedge.examples.bow_fusion:build)."
        )
    return match.group(1), match.group(2)


def py_family(name: str) -> ModelFamily:
    """The family of a factory reference: checked now, its module imported only when the model is built."""
    module_name, attr = parse_factory(name)
    require_trust(f"the recipe names the Python model {name}")

    def build(cfg: ExternalOptions, vocab_size: int, num_classes: int):
        factory = load_factory(name, module_name, attr)
        try:
            made = factory(vocab_size=vocab_size, num_classes=num_classes, **cfg.model_dump())
        except Exception as exc:  # the user's code: whatever it raises is reported as one sentence
            detail = brief(exc, 160) if str(exc) else ""
            raise RecipeError(
                f"the factory {name} failed ({type(exc).__name__}: {detail})"
                "; it is called as factory(vocab_size=..., num_classes=..., **model.options) and must return "
                "(module, ModelSpec)."
            ) from None
        return adopt(made, name, cfg.model_dump(), vocab_size, num_classes)

    return ModelFamily(name, ExternalOptions, build)


def load_factory(name: str, module_name: str, attr: str):
    """Import the factory's module (running its code: callers have checked trust) and return the factory."""
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
    return factory


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


def read_hf_config(path: Path) -> dict:
    """A Hugging Face folder's config.json; a missing folder or a broken file is one clear sentence."""
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InputPathError(
            f"Hugging Face model folder {path} does not exist or has no config.json; pass hf:PATH to a folder "
            "written by save_pretrained (nothing is downloaded)."
        )
    file = path / "config.json"
    try:
        config = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{file} is not UTF-8 text (byte {exc.start}); restore the model folder.") from None
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{file} is not valid JSON ({exc.msg}); restore the model folder.") from None
    except RecursionError:  # json recurses once per level of nesting
        raise RecipeError(f"{file} nests lists or objects too deeply to read; restore the model folder.") from None
    if not isinstance(config, dict):
        raise RecipeError(
            f"{file} holds a {type(config).__name__}, not an object of settings; restore the model folder."
        )
    return config


def asks_for_code(path: Path, config: dict) -> str | None:
    """Which file of the Hugging Face folder ``path`` asks transformers to import the folder's own code (an
    ``auto_map`` entry), or None. config.json's is followed when the model is built; tokenizer_config.json's when
    there is no tokenizer.json and transformers makes the tokenizer. An unreadable tokenizer_config.json asks for
    nothing here: transformers refuses it later, and mmedge says so in a sentence."""
    if config.get("auto_map"):
        return "config.json"
    tokenizer_config = path / "tokenizer_config.json"
    if (path / "tokenizer.json").is_file() or not tokenizer_config.is_file():
        return None
    try:
        settings = json.loads(tokenizer_config.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return "tokenizer_config.json" if isinstance(settings, dict) and settings.get("auto_map") else None


def hf_family(path: Path) -> ModelFamily:
    """The family of a Hugging Face folder: its config is checked now, transformers and torch load when built."""
    config = read_hf_config(path)
    asking = asks_for_code(path, config)
    if asking:
        require_trust(f"the Hugging Face model {path} asks to run its own code (auto_map in {asking})")
    remote = bool(config.get("auto_map"))
    kind = config.get("model_type")
    if not remote and (not isinstance(kind, str) or kind not in HF_ARCHITECTURES):
        raise RecipeError(
            f"the Hugging Face model {path} is a '{kind}'; mmedge loads image-text dual encoders: "
            f"{', '.join(HF_ARCHITECTURES.values())}."
        )
    # remote code names its own class in auto_map, which transformers' AutoModel follows
    architecture = "AutoModel" if remote else HF_ARCHITECTURES[kind]

    def build(cfg: HFOptions, vocab_size: int, num_classes: int):
        from mmedge.models.hf import HFDualEncoder

        model = HFDualEncoder.from_folder(path, cfg, num_classes, kind, architecture, remote)
        model.family, model.vocab_size = f"hf:{path}", vocab_size
        return model

    def tokenizer(cfg: HFOptions):
        from mmedge.models.hf import load_tokenizer

        return load_tokenizer(path, cfg.text_max_length)

    return ModelFamily(f"hf:{path}", HFOptions, build, tokenizer)


def is_external(name: str) -> bool:
    """Whether ``name`` is a ``py:`` or ``hf:`` source rather than a zoo family."""
    return name.startswith(("py:", "hf:"))


def external_family(name: str) -> ModelFamily | None:
    """The family behind a ``py:`` or ``hf:`` name, or None for zoo names. Imports no torch and no user code."""
    if name.startswith("py:"):
        return py_family(name)
    if name.startswith("hf:"):
        return hf_family(Path(name[3:]))
    return None
