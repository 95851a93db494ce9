"""The typed metrics of every step: what a step measured, as a pydantic model (device side: no torch).

A step returns one of these models; the pipeline writes ``results.json`` from it and reads a cached step's
``result.json`` back into it, so a metric that is renamed or mistyped fails where the step makes it, not later in a
report. The models live here rather than beside their steps because the reports that read them run on the device
side, which imports nothing from the build side. :data:`METRICS` maps each step type to its model.

Field names and shapes are those of ``results.json`` (schema version 2). Nested figures that reports read field by
field are models of their own; free-form tables (the mobile analysis, export checks) stay JSON objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# An infinite figure (the SQNR of identical outputs) stays a float through results.json, as JSON's Infinity.
_CONFIG = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


class StepMetrics(BaseModel):
    """Base of every step's measured figures. Reports and bundles read these fields, never key lists."""

    model_config = _CONFIG


class _Part(BaseModel):
    model_config = _CONFIG


class Score(_Part):
    accuracy: float
    per_family: dict[str, float]


class Parity(_Part):
    """How close two logit arrays are (``runtime.evaluate.parity``)."""

    max_abs_diff: float
    mean_abs_diff: float
    mean_cosine: float
    sqnr_db: float
    argmax_agreement: float
    samples: int


class Gate(_Part):
    """A decision on the validation split: the accuracy it compared and, for a rewrite, the agreement it required."""

    split: Literal["val"]
    accuracy: float
    accuracy_drop_points: float
    input_accuracy: float | None = None  # a rewrite's gate: its input model's validation accuracy
    reference_accuracy: float | None = None  # validate's budget: the first model's validation accuracy
    agreement: float | None = None


class OutputFidelity(_Part):
    """One output of a model against the same output of the model it is compared with, on the same inputs."""

    name: str
    shape: list[int]  # of the compared output, (samples, ...)
    max_abs_diff: float
    mean_abs_diff: float
    cosine: float  # mean over samples of the cosine between the two flattened outputs of each sample
    min_cosine: float  # the worst sample's cosine
    argmax_agreement: float | None = None  # outputs that look like scores (runtime.fidelity.scores_like)


class Fidelity(_Part):
    """How closely a model reproduces the source model of a chain that has no data to score on (a foreign ONNX
    model): every output compared on the chain's inputs, the user's or synthetic ones."""

    against: str  # the step that made the model compared with: load.onnx, the source model
    inputs: Literal["user", "synthetic"]
    inputs_source: str  # the user's .npz, or how the synthetic inputs were drawn
    samples: int
    outputs: list[OutputFidelity]
    min_cosine: float  # over every output
    max_abs_diff: float  # over every output
    argmax_agreement: float | None = None  # the least over the outputs that look like class scores
    required_cosine: float | None = None  # a rewrite's gate: the cosine it had to reach
    required_agreement: float | None = None


class ChainInputs(_Part):
    """The inputs a chain from a foreign ONNX model is judged and timed on, kept in the load.onnx step folder."""

    kind: Literal["user", "synthetic"]
    source: str  # the .npz the user gave, or how the synthetic inputs were drawn
    file: str  # inside the load.onnx step folder
    samples: int
    shapes: dict[str, list[int]]
    dims: dict[str, int]  # sizes given for the model's named dynamic dimensions (--dim)


class SkippedRows(_Part):
    count: int
    rows: list[Any]


class EpochRecord(_Part):
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float
    val_loss: float | None = None  # distillation: the loss on validation, which breaks ties of val_accuracy
    stopped: Literal["early_stopping", "time_cap"] | None = None


class Scored(StepMetrics):
    """A model scored on the data set: validation (what decisions compare), test (reported) and the modality
    ablation on test."""

    val: Score | None = None
    test: Score | None = None
    image_blanked: Score | None = None
    text_emptied: Score | None = None
    paraphrase: Score | None = None  # the test pictures asked in wordings never seen in training (easy-vqa)
    val_paraphrase: Score | None = None  # the validation pictures in other unseen wordings again (easy-vqa)


class ImageFormat(_Part):
    """The image input a zoo model was built for: from the recipe where it sets it, else from the training data."""

    height: int
    width: int
    channels: int
    mean: list[float]
    std: list[float]
    foreground: str
    data_images: str  # what the training pictures are, e.g. "64x64 colour"
    source: dict[str, str]  # setting -> "recipe" or "training split" / "data"
    notes: list[str]  # settings the recipe forced against the data, and sizes that were cut


class ModelMetrics(Scored):
    """The model a chain starts from (train, load, load.model)."""

    family: str | None = None
    parameters: int | None = None
    data: dict[str, Any] | None = None
    data_split: dict[str, Any] | None = None  # the split rule and the images and questions per split
    skipped_rows: SkippedRows | None = None
    # the image input a zoo model was fitted to (size, channels, mean/std, where each came from, forced mismatches)
    image_format: ImageFormat | None = None  # what the model takes, and where each setting came from


class DataParallel(_Part):
    """How many processes trained the step (``mmedge.distributed``): 1, or the ranks of a torchrun world."""

    world_size: int = 1
    dist_backend: str | None = None  # gloo in a distributed run


class TrainMetrics(ModelMetrics, DataParallel):
    epochs_run: int
    stopped: Literal["epochs", "early_stopping", "time_cap"]
    train_seconds: float
    best_val_accuracy: float
    history: list[EpochRecord]


class DistillMetrics(Scored, DataParallel):
    family: str
    parameters: int
    teacher: str
    teacher_test_accuracy: float
    epochs_run: int
    stopped: Literal["epochs", "early_stopping", "time_cap"]
    train_seconds: float
    best_val_accuracy: float
    history: list[EpochRecord]


class MagnitudePruneMetrics(Scored):
    target_sparsity: float
    sparsity_reached: float
    model_sparsity: float
    pruned_tensors: list[str]
    per_branch: dict[str, dict[str, float]]
    note: str


class StructuredPruneMetrics(Scored, DataParallel):
    ratio: float
    branch_ratios: dict[str, float]
    importance: str
    parameters_before: int
    parameters_after: int
    parameter_ratio: float
    macs_before: int
    macs_after: int
    per_branch: dict[str, dict[str, int]]
    options_before: dict[str, Any]
    options_after: dict[str, Any]
    dropped_blocks: dict[str, Any]
    vocabulary: dict[str, int] | None = None  # vocabulary pruning: pieces before and after
    history: list[dict[str, Any]]


class Evaluated(Scored):
    """An ONNX model scored with ONNX Runtime (``runtime.evaluate.evaluate_model``)."""

    split: str | None = None
    samples: int | None = None
    data: dict[str, Any] | None = None
    providers: list[str] | None = None


class TensorInfo(_Part):
    name: str
    type: str
    shape: list[Any]


class LoadOnnxMetrics(Evaluated):
    source: str
    size_bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    mmedge_metadata: bool
    chain_inputs: ChainInputs | None = None  # a model without mmedge metadata: what fidelity is judged on
    constants_to_initializers: int | None = None  # its Constant-node tensors stored as initializers in the copy


class ReferenceOnnx(_Part):
    """The fp32 ONNX of the chain's first (PyTorch) model, exported once: what size and latency are compared with."""

    file: str  # in the export step's folder: model.onnx itself when the exported model is the first model
    size_bytes: int
    same_as_export: bool


class ExportMetrics(StepMetrics):
    checks: list[dict[str, Any]]
    max_abs_diff: float
    atol: float
    rtol: float
    opset: int
    inputs: list[Any]
    outputs: list[Any]
    size_bytes: int
    zip_bytes: int
    reference_onnx: ReferenceOnnx | None = None


class ReferenceRatios(_Part):
    """The benched model against the reference ONNX, timed in the same alternating rounds (``compare_latency``)."""

    file: str  # the reference's path relative to the run folder
    size_bytes: int
    size_ratio: float  # benched / reference
    ep: str
    threads: int
    latency_ratio: dict[str, tuple[float, float, float]]  # batch -> p10, p50, p90 of benched / reference per round
    rounds: dict[str, int]  # batch -> rounds timed


class RewriteMetrics(Evaluated):
    """An ONNX-to-ONNX rewrite after its gate (``compress.onnx_check.check_rewrite``): the gate's decision on
    validation, then the test figures and the parity with its input, reported. A rewrite of a foreign ONNX model has
    no data to score: its gate is ``fidelity`` to the source model, and the accuracy figures are None."""

    gate: Gate | None = None
    parity: Parity | None = None
    input_accuracy: float | None = None
    accuracy_drop_points: float | None = None
    fidelity: Fidelity | None = None
    size_bytes: int
    input_size_bytes: int
    ops: dict[str, int]


class OptimizeMetrics(RewriteMetrics):
    transformer_fusions: bool
    num_heads: int | None
    residual_sums: int
    level: str
    nodes_before: int
    nodes_after: int
    portable: bool
    non_standard_ops: list[str]
    loads_on: list[str]


class DynamicQuantMetrics(RewriteMetrics):
    gemm_rewritten: int
    pre_process: str
    saturation_free_weights: int
    float_matmuls: list[str] | None = None
    smoothing: dict[str, Any] | None = None
    nothing_quantized: str | None = None  # why the model went on unchanged (no node of the op types quantized)


class StaticQuantMetrics(RewriteMetrics):
    static_nodes: int
    riding_nodes: int = 0  # activations and residual Adds quantized with their Convs (plan.riding_nodes)
    dynamic_nodes: int
    calibration: dict[str, Any]
    calibration_ranges: str


class Fp16Metrics(RewriteMetrics):
    pass


class Candidate(_Part):
    """One candidate of ``quantize.auto``: chosen on validation; its test accuracy scored after the choice."""

    name: str
    val_accuracy: float
    test_accuracy: float
    drop_points: float
    agreement: float
    size_bytes: int
    p50_ms: float | None = None
    latency_ratio: list[float] | None = None  # p10, p50, p90 of its per-round time over the fastest's
    within_budget: bool
    float_nodes: list[str] | None = None


class Choice(_Part):
    objective: Literal["size", "latency"]
    latency_tolerance: float
    rule: str
    fastest: str
    latency_ratio: list[float] | None
    timing: dict[str, Any]


class NodeSensitivity(_Part):
    node: str
    op: str
    branch: str
    scheme: str
    drop_points: float


class BranchSensitivity(_Part):
    branch: str
    scheme: str
    nodes: int
    drop_points: float


class Sensitivity(_Part):
    """Accuracy drop when only one node, or one modality branch, is quantized with a scheme."""

    split: Literal["val"]
    input_val_accuracy: float
    nodes: list[NodeSensitivity]
    branches: list[BranchSensitivity]


class AutoQuantMetrics(RewriteMetrics):
    chosen: str
    selection_split: Literal["val"]
    choice: Choice
    within_budget: bool
    budget_points: float
    reference_val_accuracy: float
    input_val_accuracy: float
    input_test_accuracy: float
    ep: str
    threads: int
    batch_size: int
    candidates: list[Candidate]
    plan: dict[str, str]
    sensitivity: Sensitivity
    quantizable_nodes: int
    branch_sizes: dict[str, int]
    latency_share: dict[str, float]


class ValidateMetrics(Evaluated):
    parity: Parity | None = None
    gate: Gate | None = None
    reference_accuracy: float | None = None
    accuracy_drop_points: float | None = None
    within_budget: bool | None = None
    embeddings: dict[str, Any] | None = None
    fidelity: Fidelity | None = None  # a foreign ONNX model: the shipped model against the source model


class LatencyStats(_Part):
    """One batch size on one EP: latency percentiles over every timed call, and throughput."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    std_ms: float
    runs: int
    throughput_per_s: float
    warmup_rss_growth_mb: float


class MemoryStats(_Part):
    rss_before_mb: float
    rss_after_load_mb: float
    peak_rss_mb: float
    process_peak_rss_mb: float | None


class BenchTarget(_Part):
    """One model timed on one EP (`runtime.bench.bench_model`)."""

    model: str
    ep: str
    providers: list[str]
    threads: int | Literal["default"]
    session_load_ms: float
    batches: dict[str, LatencyStats]
    memory: MemoryStats
    size_bytes: int
    machine: dict[str, Any]


class BenchMetrics(StepMetrics):
    targets: dict[str, BenchTarget]  # EP -> its figures
    unavailable: dict[str, str]
    inputs: str
    within_budget: bool
    reference: ReferenceRatios | None = None  # a chain from a PyTorch model: against its fp32 ONNX


class MobileMetrics(StepMetrics):
    source: str
    source_sha256: str
    optimization_style: str
    optimization_level: str  # "all", or "basic" where onnxruntime could not replay the fusions it saved
    optimization_note: str | None
    target_platform: str
    session_config: dict[str, str]
    fixed_dims: dict[str, int]
    files: dict[str, dict[str, int]]
    parity: dict[str, dict[str, Any]]
    analysis: dict[str, Any]
    verdicts: dict[str, dict[str, str]]
    inputs: str


class BundleMetrics(StepMetrics):
    path: str
    files: list[str]


# Step type -> the model of its metrics. A test checks that every registered step returns its model.
METRICS: dict[str, type[StepMetrics]] = {
    "train": TrainMetrics,
    "load": ModelMetrics,
    "load.model": ModelMetrics,
    "load.onnx": LoadOnnxMetrics,
    "prune.magnitude": MagnitudePruneMetrics,
    "prune.structured": StructuredPruneMetrics,
    "distill": DistillMetrics,
    "export": ExportMetrics,
    "optimize": OptimizeMetrics,
    "quantize.dynamic": DynamicQuantMetrics,
    "quantize.static": StaticQuantMetrics,
    "quantize.fp16": Fp16Metrics,
    "quantize.auto": AutoQuantMetrics,
    "validate": ValidateMetrics,
    "bench": BenchMetrics,
    "mobile": MobileMetrics,
    "bundle": BundleMetrics,
}


def step_metrics(step_type: str, data: dict[str, Any]) -> StepMetrics:
    """The typed metrics of one step of a results document."""
    return METRICS[step_type].model_validate(data)
