"""benchmarks/denormals.py: the summary of paired processes, and one small run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.benchmarks.test_peers import BENCHMARKS, _load

denormals = _load("benchmarks_denormals", BENCHMARKS / "denormals.py")


def _child(mode: str, softmax: float, b1: float, flushes: bool | None = None) -> dict:
    return {
        "mode": mode,
        "flushes": (mode == "flushed") if flushes is None else flushes,
        "softmax_ms": softmax,
        "latency_ms": {"1": {"m": b1}},
    }


def test_summary_pairs_each_flushed_process_with_its_kept_one():
    children = [_child("flushed", 0.2, 1.0), _child("kept", 2.0, 2.0), _child("kept", 1.0, 4.0)]
    children.append(_child("flushed", 0.4, 1.0))  # the second pair in the other order
    s = denormals.summarize(children)
    assert s["softmax"]["ratio"] == {"median": 0.25, "min": 0.1, "max": 0.4}
    assert s["models"]["m"]["1"]["ratio"] == {"median": 0.375, "min": 0.25, "max": 0.5}
    assert s["models"]["m"]["1"]["kept_ms"] == 3.0 and s["models"]["m"]["1"]["flushed_ms"] == 1.0
    assert s["settings_took_effect"]
    children[0] = _child("flushed", 0.2, 1.0, flushes=False)  # a process whose setting did not hold
    assert not denormals.summarize(children)["settings_took_effect"]


@pytest.mark.slow
def test_a_small_run_times_a_model_in_both_settings_and_checks_each(tmp_path, tiny_onnx):
    cmd = [sys.executable, str(BENCHMARKS / "denormals.py"), "--model", f"tiny={tiny_onnx['cnn-lstm']}"]
    cmd += ["--data", "digits-vqa", "--pairs", "1", "--rounds", "2", "--out-name", "d", "--results-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "d.json").read_text())
    assert sorted(c["mode"] for c in data["children"]) == ["flushed", "kept"]
    assert data["summary"]["settings_took_effect"]
    assert data["provenance"]["cpu"]["flags"]  # the CPU with its instruction-set flags
    assert "| tiny, batch 32 |" in (tmp_path / "d.md").read_text()
