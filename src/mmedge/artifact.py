"""Artifact: what a step produces — a path, what it is, the model spec it follows and the steps that made it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ArtifactKind = Literal["torch-checkpoint", "onnx", "ort", "bundle"]


@dataclass(frozen=True)
class Artifact:
    path: Path
    kind: ArtifactKind
    spec: dict[str, Any]  # ModelSpec.to_json(): inputs, outputs, dynamic axes, preprocessing, branches
    lineage: tuple[str, ...] = ()  # the steps that made it, oldest first

    def to_json(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "spec": self.spec, "lineage": list(self.lineage)}

    @classmethod
    def from_json(cls, d: dict) -> Artifact:
        return cls(Path(d["path"]), d["kind"], d["spec"], tuple(d["lineage"]))
