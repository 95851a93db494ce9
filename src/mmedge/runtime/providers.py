"""Execution provider registry: short name -> ONNX Runtime provider, default options, availability.

Availability is read from this installation, never assumed. ``onnxruntime.get_available_providers()`` only says
which EPs the wheel was built with: onnxruntime-gpu lists CUDA and TensorRT on a machine without a GPU or CUDA
libraries, and a session asked for them there only warns and runs on the CPU EP. So an EP other than the CPU one
counts as available only once a one-node session has been made on it here (once per process, see ``probe``).
After a session is made, the providers it really uses are read back (``session.get_providers()``) and a
number is only ever reported under an EP that ran it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import platform
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
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


def listed() -> list[str]:
    """Short names of the EPs this onnxruntime installation was built with (it may be unable to start some here)."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [ep.name for ep in PROVIDERS.values() if ep.ort_name in have]


def available() -> list[str]:
    """Short names of the EPs this onnxruntime installation has and can start on this machine."""
    return [name for name in listed() if probe(name)[0]]


def unavailable_reason(name: str) -> str | None:
    """None if the EP is available here; else one clause saying why not and how to get it."""
    ep = resolve(name)
    if ep.name not in listed():
        return f"not in this onnxruntime installation; to get it, {ep.how_to_get}"
    usable, why = probe(ep.name)
    if usable:
        return None
    return f"this onnxruntime lists it, but it cannot start on this machine ({why}); to use it, {ep.how_to_get}"


def require(name: str) -> ExecutionProvider:
    """The EP, if it is installed and starts here; else an error naming what is available and how to get it."""
    ep = resolve(name)
    have = available()
    if ep.name in have:
        return ep
    if ep.name in listed():
        raise MmedgeError(f"execution provider '{ep.name}' cannot be used: {unavailable_reason(ep.name)}.")
    unusable = [n for n in listed() if n not in have]
    also = f"; listed but unable to start here: {', '.join(unusable)}" if unusable else ""
    raise MmedgeError(
        f"execution provider '{ep.name}' is not in this onnxruntime installation (it has: "
        f"{', '.join(have)}{also}); to get it, {ep.how_to_get}."
    )


# Options that make a probe session write files (a TensorRT engine cache in the working folder): left out of probes.
_PROBE_SKIPS = frozenset({"trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable"})


@functools.cache
def probe(name: str) -> tuple[bool, str]:
    """Whether onnxruntime can start the EP here, and if not, why: a session on a one-node model (y = relu(x)) is
    made with the EP's default options and the providers it registered are read back. The CPU EP always starts.
    The answer is kept for the process (a CUDA start-up costs about a second)."""
    import onnxruntime as ort

    ep = resolve(name)
    if ep.name == "cpu":
        return True, ""
    from mmedge.runtime.options import session_options

    opts = session_options()
    options = {k: v for k, v in ep.options.items() if k not in _PROBE_SKIPS}
    with _captured_output() as log, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        try:
            sess = ort.InferenceSession(relu_model(), opts, providers=[(ep.ort_name, options)])
            started = ep.ort_name in sess.get_providers()
            error = ""
        except Exception as exc:  # ORT raises several private exception types
            started, error = False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if started:
        return True, ""
    said = [str(w.message).strip().splitlines()[0] for w in warned if str(w.message).strip()]
    why = error or _first_failure(log.getvalue()) or "; ".join(said)[:400]
    return False, why or "onnxruntime could not create it and fell back to the CPU EP (no usable device or drivers)"


def relu_model() -> bytes:
    """y = relu(x), x float32 of shape [1], at IR 8 / opset 13 so that every onnxruntime mmedge supports loads it."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


@contextlib.contextmanager
def _captured_output() -> Iterator[io.StringIO]:
    """What onnxruntime writes while the block runs, kept out of the user's terminal: its C++ log lines (file
    descriptors 1 and 2, for the whole process while the block runs) and what it prints from Python when it falls
    back to the CPU EP. A descriptor that is not open (no console) is left alone."""
    text = io.StringIO()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = {}
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            saved[fd] = os.dup(fd)
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield text
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.write(sink.read().decode(errors="replace"))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_failure(log: str) -> str:
    """The telling part of onnxruntime's start-up failure, e.g. ``libcublasLt.so.13: cannot open shared object file:
    No such file or directory; Failed to create CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*``."""
    lines = [_ANSI.sub("", line).strip() for line in log.splitlines()]
    parts = []
    for line in lines:
        missing = re.search(r"with error: (.+)$", line)
        if missing and missing.group(1) not in parts:
            parts.append(missing.group(1).strip())
    for line in lines:
        failed = re.search(r"(Failed to create \w+\.(?: Require .*?\.(?= |$))?)", line) or re.search(
            r"(Please install .*?\.(?= |$))", line
        )
        if failed and failed.group(1) not in parts:
            parts.append(failed.group(1).strip())
    return "; ".join(parts)[:400]


def eps_running(ops: Iterable[tuple[str, str]]) -> list[str]:
    """Short names of the registered EPs that have a kernel for every (domain, op type) in ``ops``: all of them for a
    graph of standard ONNX ops, the CPU and CUDA EPs for ORT's transformer fusions, the CPU EP alone for its other
    contrib ops (NCHWc layouts, quantized kernels)."""
    special = {(domain, op) for domain, op in ops if domain not in STANDARD_DOMAINS}

    def runs(ep: ExecutionProvider) -> bool:
        return all({op, "*"} & ep.extra_ops.get(domain, frozenset()) for domain, op in special)

    return [ep.name for ep in PROVIDERS.values() if runs(ep)]


def listing() -> list[dict]:
    """Every registered EP with its onnxruntime name, whether this installation lists it (``listed``) and can start
    it here (``available``), and if not, why (``reason``) and how to get it (``how_to_get``, which also carries the
    reason for a listed EP that cannot start)."""
    import onnxruntime as ort

    built, have = listed(), available()
    rows = []
    for ep in PROVIDERS.values():
        reason = None if ep.name in have else unavailable_reason(ep.name)
        how = None
        if ep.name not in have:
            how = reason if ep.name in built else ep.how_to_get
        rows.append(
            {
                "name": ep.name,
                "ort_name": ep.ort_name,
                "listed": ep.name in built,
                "available": ep.name in have,
                "reason": reason,
                "how_to_get": how,
                "default_options": dict(ep.options),
                "onnxruntime": ort.__version__,
            }
        )
    return rows
