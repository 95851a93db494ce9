"""Recipe: the pydantic model of a pipeline file (YAML or TOML).

A recipe is an ordered list of step configs plus the model, the data, the target execution providers,
the budgets and the output folder. Every step config is frozen, forbids unknown keys and carries a
``type`` tag and a ``version``. A step's config class is found through the step registry
(``mmedge.steps.registry``), which imports only the modules of the steps a recipe names: parsing a recipe of
ONNX steps needs no torch.
"""

from __future__ import annotations

import importlib.resources
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from mmedge.data import DataConfig
from mmedge.errors import InputPathError, MmedgeError, RecipeError, closest
from mmedge.steps.registry import STEP_TABLE, StepConfig, get_step

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUILTIN_RECIPES = {
    "digits-vqa": "digits-vqa.yaml",
    "vit-transformer": "vit-transformer.yaml",
    "easy-vqa": "easy-vqa.yaml",
}
DEFAULT_RECIPE = "digits-vqa"


class ModelSection(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    family: str = Field("cnn-lstm", description="Zoo family: 'cnn-lstm', 'vit-transformer' or 'effnet-minilm'.")
    source: str | None = Field(
        None,
        description="Start from a model outside the zoo: 'onnx:PATH' (an existing ONNX file; the PyTorch steps are "
        "left out), 'hf:PATH' (a Hugging Face CLIP / VisionTextDualEncoder folder) or 'py:package.module:factory' "
        "(any PyTorch module; needs --trust-code). Default: the recipe trains the zoo family.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Family hyper-parameters (see the zoo), or the options of the source."
    )

    @model_validator(mode="after")
    def _check_family(self):
        from mmedge.models import family_config

        if self.source is not None:
            from mmedge.sources import parse_source

            parse_source(self.source)
        family_config(self.family_name, self.options)  # raises a clear error for unknown names or options
        return self

    @property
    def family_name(self) -> str:
        """The family steps build: the zoo family, or the hf:/py: source (onnx: sources build none)."""
        return self.source if self.source and self.source.startswith(("hf:", "py:")) else self.family


class Budgets(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    max_accuracy_drop: float | None = Field(
        1.0,
        ge=0,
        description="Largest accepted accuracy drop, in points, of the shipped ONNX model against the model the "
        "chain started from, measured on the validation split (every decision is; the test split is only "
        "reported). 1 point is the usual edge deployment budget.",
    )
    max_latency_ms: float | None = Field(
        None,
        gt=0,
        description="Largest accepted p50 latency at batch 1 on the first target, in milliseconds; none by default.",
    )
    max_size_mb: float | None = Field(None, gt=0, description="Largest accepted model file size in MB.")


class Recipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    _skipped: tuple[str, ...] = PrivateAttr(default=())  # steps the model source left out of the chain

    version: int = Field(1, ge=1, le=1, description="Recipe schema version.")
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Bundle name.")
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataConfig = Field(default_factory=DataConfig)
    targets: tuple[str, ...] = Field(("cpu",), min_length=1, description="Execution providers to measure on.")
    budgets: Budgets = Field(default_factory=Budgets)
    steps: tuple[SerializeAsAny[StepConfig], ...] = Field(..., min_length=1)
    output: Path | None = Field(None, description="Bundle folder; default bundles/<name>.")
    workdir: Path = Field(Path(".mmedge/runs"), description="Where step outputs are cached.")

    @field_validator("steps", mode="before")
    @classmethod
    def _parse_steps(cls, value: Any) -> tuple[StepConfig, ...]:
        if not isinstance(value, list | tuple):
            raise ValueError("steps must be a list of step tables")
        known = ", ".join(sorted(STEP_TABLE))
        parsed = []
        for i, raw in enumerate(value):
            if isinstance(raw, StepConfig):
                parsed.append(raw)
                continue
            if not isinstance(raw, dict) or "type" not in raw:
                raise ValueError(f"step {i + 1} needs a 'type' (one of: {known})")
            tag = raw["type"]
            if tag not in STEP_TABLE:
                raise ValueError(
                    f"step {i + 1} has unknown type '{tag}'{closest(str(tag), list(STEP_TABLE))}; known types: {known}"
                )
            try:
                parsed.append(get_step(tag).config_cls(**raw))
            except ValidationError as exc:
                raise ValueError(f"step {i + 1} ({tag}): {_describe(exc, get_step(tag).config_cls)}") from None
        return tuple(parsed)

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from mmedge.runtime.providers import resolve

        for name in value:
            resolve(name)
        return value

    @model_validator(mode="after")
    def _check_chain(self):
        kind: str | None = None
        for i, step in enumerate(self.steps):
            entry = STEP_TABLE[step.type]
            if entry.consumes != kind and not (entry.consumes is None and kind is None):
                have = f"gives a {kind}" if kind else "has no model yet"
                raise ValueError(
                    f"step {i + 1} ({step.type}) needs a {entry.consumes or 'fresh start'} input but "
                    f"the chain so far {have}; reorder the steps"
                )
            kind = entry.produces or kind
        return self

    @property
    def skipped_steps(self) -> tuple[str, ...]:
        """Steps of the recipe file that the model source left out (PyTorch steps for an onnx: source)."""
        return self._skipped

    @property
    def output_dir(self) -> Path:
        return self.output or Path("bundles") / self.name

    def dump(self, fmt: str = "yaml") -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        if fmt == "json":
            return json.dumps(data, indent=2)
        return yaml.safe_dump(data, sort_keys=False)


def _describe(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Pydantic's errors in mmedge's words: where (``model.family``), what is wrong, and for an unknown key the
    closest known key of ``model`` (the class that was validated) at that place."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "recipe"
        if err["type"] == "extra_forbidden":
            known = _known_keys(model, err["loc"][:-1]) if model is not None else []
            parts.append(f"'{loc}' is not a known key{closest(str(err['loc'][-1]), known)}")
        elif err["type"] == "value_error" and err["loc"] in ((), ("steps",)):
            # our own validators' sentences (a step's problem names the step): shown as written
            parts.append(str(err.get("ctx", {}).get("error") or err["msg"].removeprefix("Value error, ")))
        else:
            got = err.get("input")
            shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg[0].lower() + msg[1:]}{shown}")
    return "; ".join(parts)


def _known_keys(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys of the section at ``path`` inside ``model`` (e.g. ('model',) -> ModelSection's), or []."""
    for part in path:
        field = model.model_fields.get(str(part))
        kind = field.annotation if field is not None else None
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return []
        model = kind
    return list(model.model_fields)


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source} must be a mapping of keys (name, model, data, steps, ...); it is a {type(data).__name__}."
        )
    skipped: list[str] = []
    model = data.get("model")
    if isinstance(model, dict) and model.get("source") and isinstance(data.get("steps"), list):
        from mmedge.sources import resolve_steps

        data = dict(data)
        task = (model.get("options") or {}).get("task", "zero-shot")
        data["steps"], skipped = resolve_steps(model["source"], data["steps"], task)
    try:
        recipe = Recipe(**data)
        recipe._skipped = tuple(skipped)
        return recipe
    except ValidationError as exc:
        raise RecipeError(
            f"{source} is invalid: {_describe(exc, Recipe)}; fix it and check with `mmedge run RECIPE --dry-run`."
        ) from None
    except MmedgeError as exc:  # a check of a section's value (an unknown model family, ...): name the recipe too
        if source in str(exc):
            raise
        try:
            named = type(exc)(f"{source}: {exc}")
        except TypeError:  # an error type whose constructor takes more than the sentence
            named = RecipeError(f"{source}: {exc}")
        raise named from None


def overrides(
    *,
    model: str | None = None,
    task: str | None = None,
    data_path: str | Path | None = None,
    skip_bad_rows: bool = False,
    output: str | Path | None = None,
    name: str | None = None,
) -> Callable[[dict], dict]:
    """The edit ``load_recipe`` applies for ``mmedge run``'s options, to the raw recipe data before it is parsed.

    ``model`` replaces the model source (a recipe that had none keeps its zoo options only for another zoo model:
    an hf:/py: source starts from no options); ``task`` (hf: sources only) is set among the model options;
    ``data_path`` replaces the data section by a user dataset, keeping the split seed; ``skip_bad_rows`` and
    ``output`` set those keys; ``name`` renames the run and its bundle, and without it a run on other data is named
    after the data, and one from an ONNX file or Hugging Face folder after that model. Options left at None (False)
    leave the recipe as it is."""

    def edit(data: dict) -> dict:
        section = dict(data.get("model") or {})
        if model is not None:
            if model.startswith(("hf:", "py:")) and not section.get("source"):
                section["options"] = {}  # the recipe's options are for its zoo family
            section["source"] = model
        if task is not None:
            if not str(section.get("source") or "").startswith("hf:"):
                raise MmedgeError("--task applies to Hugging Face models; add --model hf:PATH or leave --task out.")
            section["options"] = {**(section.get("options") or {}), "task": task}
        data = {**data, "model": section}
        if data_path is not None:
            seed = (data.get("data") or {}).get("seed", 0)
            data["data"] = {"name": "user", "path": str(data_path), "seed": seed}
        if skip_bad_rows:
            data["data"] = {**(data.get("data") or {}), "skip_bad_rows": True}
        if output is not None:
            data["output"] = str(output)
        named_after = data_path
        if named_after is None and model is not None and model.startswith(("onnx:", "hf:")):
            named_after = model.split(":", 1)[1]
        if name is not None or named_after is not None:
            data = _renamed(data, name, named_after, output is not None)
        return data

    return edit


def _renamed(data: dict, name: str | None, source: str | Path | None, keep_output: bool) -> dict:
    """The recipe named ``name``, or after ``source``, the path of its new data or model (the default recipe: that
    file's or folder's name; another: that name then the recipe's), so that every recipe + data (or model) pair has
    its own run folder and bundle. A bundle folder named after the old name follows the new one: a run on other
    data or another model never overwrites the old bundle."""
    from mmedge.data import data_name

    old = str(data.get("name") or "")
    if name is None:
        rest = old.removeprefix(DEFAULT_RECIPE).lstrip("-_.")
        name = data_name(source) + (f"-{rest}" if rest else "")
    output = data.get("output")
    renamed = {**data, "name": name}
    if not keep_output and output is not None and Path(str(output)).name == old:
        renamed.pop("output")
    return renamed


def load_recipe(path: str | Path | None = None, edit: Callable[[dict], dict] | None = None) -> Recipe:
    """A recipe from a YAML/TOML/JSON file, or a built-in one by name (default: digits-vqa).

    ``edit`` changes the raw data before it is parsed (command-line overrides), so that what depends on the model
    source — which steps run — is decided on the final recipe."""
    edit = edit or (lambda data: data)
    if path is None or str(path) in BUILTIN_RECIPES:
        name = BUILTIN_RECIPES[str(path or DEFAULT_RECIPE)]
        text = importlib.resources.files("mmedge.recipes").joinpath(name).read_text()
        return parse_recipe(edit(yaml.safe_load(text)), f"built-in recipe {name}")
    path = Path(path)
    if not path.is_file():
        raise InputPathError(
            f"recipe file {path} does not exist; pass a YAML or TOML recipe, or one of the "
            f"built-in names: {', '.join(BUILTIN_RECIPES)}."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(
            f"recipe {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'} "
            f"({str(exc).splitlines()[0]}); fix its syntax."
        ) from None
    except RecursionError:  # both parsers recurse once per level of nesting
        raise RecipeError(
            f"recipe {path} nests lists or mappings too deeply to read; a recipe needs a few levels at most."
        ) from None
    return parse_recipe(edit(data) if isinstance(data, dict) else data, f"recipe {path}")
