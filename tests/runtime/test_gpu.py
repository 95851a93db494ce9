"""CUDA execution provider checks: run where onnxruntime-gpu and an NVIDIA GPU are present, skip elsewhere."""

import numpy as np
import pytest

from mmedge.runtime.inputs import split_feeds
from mmedge.runtime.providers import available, unavailable_reason

# onnxruntime-gpu lists CUDA on a machine without a GPU or CUDA libraries; available() counts it only once a session
# has really started on it here, and unavailable_reason says what is missing.
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("cuda" not in available(), reason=f"needs a usable CUDA EP: {unavailable_reason('cuda')}"),
]


def test_cuda_bench_runs_on_cuda_with_io_binding(tiny_onnx):
    from mmedge.runtime.bench import bench_matrix

    path = tiny_onnx["cnn-lstm"]
    doc = bench_matrix(
        {"m": path}, {"m": split_feeds(path, n=16)}, ["cpu", "cuda"], [1], [1, 16], rounds=5, calls=5, warmup=5
    )
    cuda = [r for r in doc["results"] if r["ep"] == "cuda"]
    assert len(cuda) == 2 and all(r["providers"][0] == "CUDAExecutionProvider" and r["io_binding"] for r in cuda)
    assert doc["placement"]["m"]["cuda"]["share_on_ep"] > 0.5


def test_cuda_outputs_match_cpu_and_fp16_stays_close(tmp_path, tiny_onnx):
    from mmedge.compress.quantize.fp16 import Fp16Config, fp16_model
    from mmedge.runtime.session import open_session

    path = tiny_onnx["vit-transformer"]
    feeds = split_feeds(path, n=32)
    cpu = open_session(path, "cpu").run(None, feeds)[0]
    gpu = open_session(path, "cuda").run(None, feeds)[0]
    assert np.abs(cpu - gpu).max() < 1e-3
    fp16_model(path, tmp_path / "fp16.onnx", Fp16Config())
    half = open_session(tmp_path / "fp16.onnx", "cuda").run(None, feeds)[0]
    assert (half.argmax(1) == cpu.argmax(1)).mean() >= 0.95
