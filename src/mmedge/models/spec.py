"""ModelSpec: the export contract and the modality map of a model family (torch-free).

The spec says what the graph takes and gives (names, dtypes, shapes with named dynamic axes), how close
the exported graph must stay to PyTorch, and which modules belong to which modality branch. The branch
map is what later makes per-modality compression and per-branch reports possible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmedge.data.images import ImagePreprocessing
from mmedge.runtime.branches import BRANCHES


def check_branches(names):
    """Validator for config fields keyed by branch: every name must be one of BRANCHES."""
    for branch in names:
        if branch not in BRANCHES:
            raise ValueError(f"unknown branch {branch!r}; branches are {', '.join(BRANCHES)}")
    return names


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple[int | str, ...]  # a str is a named dynamic axis

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "dynamic_axes": {str(k): v for k, v in self.dynamic_axes().items()},
        }

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class ModelSpec:
    family: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # branch -> module-name prefixes (as in model.named_modules()) that belong to it
    branches: dict[str, tuple[str, ...]]
    image: ImagePreprocessing = field(default_factory=ImagePreprocessing)
    text_max_length: int = 12
    # Exported-vs-PyTorch tolerance on the logits: |onnx - torch| <= atol + rtol * |torch|
    atol: float = 1e-4
    rtol: float = 1e-3

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def branch_of(self, module_name: str) -> str | None:
        for branch, prefixes in self.branches.items():
            if any(module_name == p or module_name.startswith(p + ".") for p in prefixes):
                return branch
        return None

    def to_json(self) -> dict:
        return {
            "family": self.family,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "branches": {k: list(v) for k, v in self.branches.items()},
            "image": self.image.to_json(),
            "text_max_length": self.text_max_length,
            "atol": self.atol,
            "rtol": self.rtol,
        }

    @classmethod
    def from_json(cls, d: dict) -> ModelSpec:
        return cls(
            family=d["family"],
            inputs=tuple(TensorSpec.from_json(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in d["outputs"]),
            branches={k: tuple(v) for k, v in d["branches"].items()},
            image=ImagePreprocessing.from_json(d["image"]),
            text_max_length=int(d["text_max_length"]),
            atol=float(d["atol"]),
            rtol=float(d["rtol"]),
        )


def image_text_spec(
    family: str,
    image: ImagePreprocessing,
    text_max_length: int,
    num_classes: int,
    branches: dict[str, tuple[str, ...]],
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ModelSpec:
    """The contract every zoo model shares: (image, input_ids, attention_mask) -> logits."""
    return ModelSpec(
        family=family,
        inputs=(
            TensorSpec("image", "float32", ("batch", image.channels, image.height, image.width)),
            TensorSpec("input_ids", "int64", ("batch", "text_length")),
            TensorSpec("attention_mask", "int64", ("batch", "text_length")),
        ),
        outputs=(TensorSpec("logits", "float32", ("batch", num_classes)),),
        branches=branches,
        image=image,
        text_max_length=text_max_length,
        atol=atol,
        rtol=rtol,
    )
