"""Execution provider registry: short name -> ONNX Runtime provider, default options, availability.

Availability is read from this installation (``onnxruntime.get_available_providers()``), never assumed.
After a session is made, the providers it really uses are read back (``session.get_providers()``) and a
number is only ever reported under an EP that ran it.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass, field

from mmedge.errors import MmedgeError, UnknownNameError, closest

# Standard ONNX op domains: every EP may be handed these (whether it takes a given node is for a session to say).
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
ANY_OP = frozenset({"*"})  # in ExecutionProvider.extra_ops: every op of the domain
# ORT's contrib ops that onnxruntime.transformers' fusions write, all with a CUDA kernel as well as a CPU one.
TRANSFORMER_CONTRIB_OPS = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "EmbedLayerNormalization",
        "BiasGelu",
        "FastGelu",
        "Gelu",
        "QuickGelu",
        "BiasAdd",
        "FusedMatMul",
    }
)


def qnn_backend_path(system: str | None = None) -> str:
    """The QNN Hexagon (HTP) backend library as onnxruntime-qnn ships it on ``system`` (``platform.system()``
    spelling; default this machine): a DLL on Windows on Arm, a shared object on Linux and Android."""
    return "QnnHtp.dll" if (system or platform.system()) == "Windows" else "libQnnHtp.so"


@dataclass(frozen=True)
class ExecutionProvider:
    name: str  # short name used on the command line and in recipes
    ort_name: str
    how_to_get: str
    options: dict = field(default_factory=dict)
    # Ops beyond standard ONNX the EP has kernels for, as {domain: op types}.
    extra_ops: dict[str, frozenset[str]] = field(default_factory=dict)


PROVIDERS: dict[str, ExecutionProvider] = {
    ep.name: ep
    for ep in (
        ExecutionProvider(
            "cpu",
            "CPUExecutionProvider",
            "it ships with every onnxruntime wheel",
            # ORT's contrib ops (fusions, quantized kernels) and the NCHWc layout ops of its level-3 optimizations
            extra_ops={"com.microsoft": ANY_OP, "com.microsoft.nchwc": ANY_OP},
        ),
        ExecutionProvider(
            "cuda",
            "CUDAExecutionProvider",
            "install the GPU wheel: pip install 'mmedge[gpu]' "
            "(onnxruntime-gpu, on a machine with an NVIDIA GPU and CUDA)",
            # the first GPU; cuDNN's exhaustive search picks the fastest conv kernels once, at load
            {"device_id": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"},
            extra_ops={"com.microsoft": TRANSFORMER_CONTRIB_OPS},
        ),
        ExecutionProvider(
            "tensorrt",
            "TensorrtExecutionProvider",
            "install onnxruntime-gpu with TensorRT libraries",
            # building an engine takes seconds to minutes: keep it for the next session
            {"device_id": 0, "trt_engine_cache_enable": True, "trt_engine_cache_path": ".mmedge/tensorrt-cache"},
        ),
        ExecutionProvider(
            "openvino", "OpenVINOExecutionProvider", "pip install onnxruntime-openvino", {"device_type": "CPU"}
        ),
        ExecutionProvider(
            "xnnpack",
            "XnnpackExecutionProvider",
            "use an onnxruntime build with XNNPACK (the Android/iOS packages, or a source build with --use_xnnpack)",
            {"intra_op_num_threads": 1},  # XNNPACK's own pool; one thread is the usual phone setting at batch 1
        ),
        ExecutionProvider("nnapi", "NnapiExecutionProvider", "run on Android with the onnxruntime-android package"),
        ExecutionProvider(
            "coreml",
            "CoreMLExecutionProvider",
            "run on macOS/iOS with the onnxruntime package for Apple platforms",
            {"ModelFormat": "MLProgram"},  # the newer format takes more operators than NeuralNetwork
        ),
        ExecutionProvider(
            "qnn",
            "QNNExecutionProvider",
            "pip install onnxruntime-qnn on a Qualcomm device",
            {"backend_path": qnn_backend_path()},  # the Hexagon NPU backend of the onnxruntime-qnn package
        ),
        ExecutionProvider(
            "dml", "DmlExecutionProvider", "pip install onnxruntime-directml on Windows", {"device_id": 0}
        ),
    )
}


def resolve(name: str) -> ExecutionProvider:
    """The registry entry for a short EP name; an unknown name is an error suggesting the closest."""
    key = name.strip().lower()
    if key not in PROVIDERS:
        raise UnknownNameError(
            f"unknown execution provider '{name}'{closest(key, list(PROVIDERS))}; "
            f"known providers: {', '.join(PROVIDERS)}."
        )
    return PROVIDERS[key]


def available() -> list[str]:
    """Short names of the EPs this onnxruntime installation has."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [ep.name for ep in PROVIDERS.values() if ep.ort_name in have]


def require(name: str) -> ExecutionProvider:
    """The EP, if it is installed; else an error naming what is installed and how to get it."""
    ep = resolve(name)
    if ep.name not in available():
        raise MmedgeError(
            f"execution provider '{ep.name}' is not in this onnxruntime installation (it has: "
            f"{', '.join(available())}); to get it, {ep.how_to_get}."
        )
    return ep


def eps_running(ops: Iterable[tuple[str, str]]) -> list[str]:
    """Short names of the registered EPs that have a kernel for every (domain, op type) in ``ops``: all of them for a
    graph of standard ONNX ops, the CPU and CUDA EPs for ORT's transformer fusions, the CPU EP alone for its other
    contrib ops (NCHWc layouts, quantized kernels)."""
    special = {(domain, op) for domain, op in ops if domain not in STANDARD_DOMAINS}

    def runs(ep: ExecutionProvider) -> bool:
        return all({op, "*"} & ep.extra_ops.get(domain, frozenset()) for domain, op in special)

    return [ep.name for ep in PROVIDERS.values() if runs(ep)]


def listing() -> list[dict]:
    """Every registered EP with its onnxruntime name, whether this installation has it, and how to get it."""
    import onnxruntime as ort

    have = available()
    return [
        {
            "name": ep.name,
            "ort_name": ep.ort_name,
            "available": ep.name in have,
            "how_to_get": None if ep.name in have else ep.how_to_get,
            "default_options": dict(ep.options),
            "onnxruntime": ort.__version__,
        }
        for ep in PROVIDERS.values()
    ]
