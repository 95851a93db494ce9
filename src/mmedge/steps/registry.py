"""The step registry: what a step is, and where each step lives.

This module is the leaf that step modules, the recipe and the pipeline all import. It imports no step module and
no torch, so that parsing a recipe costs only the step modules the recipe names. A step is defined in one file::

    class TrainConfig(StepConfig):            # frozen, extra keys refused, every field described
        type: Literal["train"] = "train"

    class TrainMetrics(StepMetrics): ...      # what the step measured, typed (in mmedge.results, see there why)

    @register_step(TrainConfig, TrainMetrics)
    def train_step(cfg: TrainConfig, ctx: StepContext) -> StepResult[TrainMetrics]: ...

and named once in :data:`STEP_TABLE` below, with the module that defines it and the artifact kinds it consumes and
produces (the chain check needs those before any step module is imported). A test checks that the table and the
decorators agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmedge.artifact import Artifact
from mmedge.results import METRICS, StepMetrics


@dataclass(frozen=True)
class StepDecl:
    """Where a step lives and how it chains, known without importing it."""

    module: str
    consumes: str | None  # artifact kind it needs as input (None: starts a chain)
    produces: str | None  # artifact kind it writes (None: passes its input through and adds metrics)
    torch: bool = False  # needs PyTorch to run (left out of a chain that starts from an ONNX file)
    parallel: bool = False  # trains data-parallel on every rank of a distributed run (``mmedge.distributed``)


# Every step mmedge knows: type tag -> declaration. One line per step; the module registers it with @register_step.
STEP_TABLE: dict[str, StepDecl] = {
    "train": StepDecl("mmedge.train", None, "torch-checkpoint", torch=True, parallel=True),
    "load": StepDecl("mmedge.train", None, "torch-checkpoint", torch=True),
    "load.model": StepDecl("mmedge.train", None, "torch-checkpoint", torch=True),
    "load.onnx": StepDecl("mmedge.sources", None, "onnx"),
    "prune.magnitude": StepDecl("mmedge.compress.prune", "torch-checkpoint", "torch-checkpoint", torch=True),
    "prune.structured": StepDecl(
        "mmedge.compress.prune", "torch-checkpoint", "torch-checkpoint", torch=True, parallel=True
    ),
    "distill": StepDecl("mmedge.compress.distill", "torch-checkpoint", "torch-checkpoint", torch=True, parallel=True),
    "export": StepDecl("mmedge.export.onnx", "torch-checkpoint", "onnx", torch=True),
    "optimize": StepDecl("mmedge.compress.optimize", "onnx", "onnx"),
    "quantize.dynamic": StepDecl("mmedge.compress.quantize.dynamic", "onnx", "onnx"),
    "quantize.static": StepDecl("mmedge.compress.quantize.static", "onnx", "onnx"),
    "quantize.fp16": StepDecl("mmedge.compress.quantize.fp16", "onnx", "onnx"),
    "quantize.auto": StepDecl("mmedge.compress.auto", "onnx", "onnx"),
    "validate": StepDecl("mmedge.steps.check", "onnx", None),
    "bench": StepDecl("mmedge.steps.check", "onnx", None),
    "mobile": StepDecl("mmedge.export.mobile", "onnx", None),
    "bundle": StepDecl("mmedge.bundle.writer", "onnx", "bundle"),
}


class StepConfig(BaseModel):
    """Base of every step's config. Subclasses set ``type`` to their tag in :data:`STEP_TABLE`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: str
    version: int = Field(1, ge=1, description="Config schema version of this step type.")
    type_tag: ClassVar[str] = ""


M = TypeVar("M", bound=StepMetrics)


@dataclass(frozen=True)
class StepResult(Generic[M]):
    """What a step returns: the artifact the chain continues with, and what the step measured."""

    artifact: Artifact
    metrics: M

    def __post_init__(self):
        if not isinstance(self.metrics, StepMetrics):
            raise TypeError(f"a step's metrics must be its StepMetrics model, not {type(self.metrics).__name__}")

    def to_json(self) -> dict:
        return {"artifact": self.artifact.to_json(), "metrics": self.metrics.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: dict, metrics_cls: type[StepMetrics]) -> StepResult:
        return cls(Artifact.from_json(data["artifact"]), metrics_cls.model_validate(data["metrics"]))


@dataclass(frozen=True)
class StepEntry:
    tag: str
    config_cls: type[StepConfig]
    metrics_cls: type[StepMetrics]
    run: Callable[[Any, StepContext], StepResult]
    decl: StepDecl

    @property
    def consumes(self) -> str | None:
        return self.decl.consumes

    @property
    def produces(self) -> str | None:
        return self.decl.produces


_REGISTERED: dict[str, StepEntry] = {}


def register_step(config_cls: type[StepConfig], metrics_cls: type[StepMetrics]):
    """Register the decorated ``run(cfg, ctx) -> StepResult`` under the config's ``type`` tag; its result carries a
    ``metrics_cls`` (the model ``mmedge.results.METRICS`` names for the tag)."""
    tag = config_cls.model_fields["type"].default
    if tag not in STEP_TABLE:
        raise TypeError(f"step type {tag!r} ({config_cls.__name__}) is not declared in STEP_TABLE")
    if METRICS.get(tag) is not metrics_cls:
        raise TypeError(
            f"step type {tag!r} registers {metrics_cls.__name__}, but mmedge.results.METRICS says otherwise"
        )

    def wrap(fn):
        _REGISTERED[tag] = StepEntry(tag, config_cls, metrics_cls, fn, STEP_TABLE[tag])
        config_cls.type_tag = tag
        return fn

    return wrap


def get_step(tag: str) -> StepEntry:
    """The step registered under ``tag``, importing only its module. ``KeyError`` for an undeclared tag."""
    if tag not in _REGISTERED:
        decl = STEP_TABLE[tag]
        importlib.import_module(decl.module)
        if tag not in _REGISTERED:
            raise TypeError(f"{decl.module} does not register step {tag!r} as STEP_TABLE says")
    return _REGISTERED[tag]


def step_tags() -> list[str]:
    return sorted(STEP_TABLE)


@dataclass
class StepRecord:
    """One step of a run: its config, where it ran, what it returned, and whether that came from the cache."""

    index: int
    config: StepConfig
    key: str
    folder: Path
    result: StepResult
    seconds: float
    cached: bool

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "type": self.config.type,
            "config": self.config.model_dump(mode="json"),
            "key": self.key,
            "folder": str(self.folder),
            "seconds": self.seconds,
            "cached": self.cached,
            **self.result.to_json(),
        }


@dataclass
class StepContext:
    """What a running step may read: the recipe, its input artifact, a fresh output folder and the steps before."""

    recipe: Any  # the mmedge.recipe.Recipe being run (the recipe imports this module, not the other way)
    artifact: Artifact | None  # the current model artifact (None before the first model step)
    out_dir: Path  # fresh, empty folder for this step's outputs
    records: list[StepRecord] = field(default_factory=list)
    progress: str = "bar"  # how training reports: bar, lines or off
    allow_over_budget: bool = False  # keep the best result when no candidate meets the budget
    resume_dir: Path | None = None  # where a long step keeps the state a killed run resumes from (kept across runs)

    def reference(self) -> StepRecord | None:
        """The step that made the model this chain started from (train, load, load.model or load.onnx)."""
        return next((r for r in self.records if STEP_TABLE[r.config.type].consumes is None), None)

    def reference_logits(self) -> np.ndarray | None:
        ref = self.reference()
        path = ref.folder / "reference_logits.npy" if ref else None
        return np.load(path) if path and path.is_file() else None

    def latest(self, step_type: str) -> StepRecord | None:
        """The latest record of ``step_type`` so far, or None."""
        return next((r for r in reversed(self.records) if r.config.type == step_type), None)
