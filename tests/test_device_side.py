"""The device-side commands in a virtualenv with `pip install ".[cpu]"` alone: no torch, no training-data packages.

`make test` builds that virtualenv and names its python in MMEDGE_CPU_PYTHON. The commands run on a copy of the
shipped digits-vqa bundle, and an ONNX-only recipe takes its model.onnx down to a new bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.isolation import frozen

ROOT = Path(__file__).resolve().parents[1]
CPU_PYTHON = os.environ.get("MMEDGE_CPU_PYTHON")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CPU_PYTHON, reason="needs the [cpu]-only virtualenv that `make test` builds"),
]


def _mmedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(CPU_PYTHON).parent / "mmedge"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    dest = tmp_path_factory.mktemp("device") / "digits-vqa"
    shutil.copytree(ROOT / "exported" / "digits-vqa", dest)
    with frozen(dest, what="bundle"):  # the commands read it; what they write goes to each test's tmp_path
        yield dest


def test_cpu_virtualenv_has_no_torch_and_no_training_data_packages():
    for name in ("torch", "mlxtend", "pandas", "sklearn", "transformers"):
        r = subprocess.run([CPU_PYTHON, "-c", f"import {name}"], capture_output=True, text=True)
        assert r.returncode != 0, f"{name} is importable in the [cpu] virtualenv"
    r = subprocess.run([CPU_PYTHON, "-c", "import onnxruntime, mmedge; print('ok')"], capture_output=True, text=True)
    assert r.stdout.strip() == "ok", r.stderr


def test_inspect_predict_and_validate_run_on_a_bundle_without_torch(bundle, tmp_path):
    info = json.loads(_ok(_mmedge("inspect", str(bundle), "--json", cwd=tmp_path)))
    assert info["name"] == "digits-vqa"
    sample = json.loads((bundle / "samples" / "samples.json").read_text())[0]
    answer = json.loads(
        _ok(
            _mmedge(
                "predict",
                str(bundle),
                "--image",
                str(bundle / sample["image"]),
                "--text",
                sample["text"],
                "--json",
                cwd=tmp_path,
            )
        )
    )
    assert answer["answer"] == sample["predicted"]
    scored = json.loads(_ok(_mmedge("validate", str(bundle), "--json", "--no-ablation", cwd=tmp_path)))
    assert scored["test"]["accuracy"] > 0.9  # the built-in digits ship inside the package


def test_bench_and_mobile_run_on_a_model_without_torch(bundle, tmp_path):
    timed = json.loads(
        _ok(
            _mmedge(
                "bench",
                str(bundle / "model.onnx"),
                "--batch",
                "1",
                "--rounds",
                "3",
                "--calls",
                "3",
                "--warmup",
                "2",
                "--json",
                cwd=tmp_path,
            )
        )
    )
    assert timed["results"] and all(r["p50_ms"] > 0 for r in timed["results"])
    _ok(_mmedge("mobile", str(bundle / "model.onnx"), "--out", str(tmp_path / "mobile"), "--json", cwd=tmp_path))
    assert (tmp_path / "mobile" / "model.ort").is_file()


def test_onnx_only_recipe_runs_to_a_bundle_and_reports_without_torch(bundle, tmp_path):
    recipe = tmp_path / "onnx-only.yaml"
    recipe.write_text(
        f"""
name: onnx-only
model: {{source: "onnx:{bundle / "model.onnx"}"}}
steps:
  - type: quantize.dynamic
  - type: validate
    ablation: false
  - type: bench
    runs: 20
    warmup: 2
    batch_sizes: [1]
  - type: mobile
  - type: bundle
output: {tmp_path / "out"}
workdir: {tmp_path / "runs"}
"""
    )
    assert "quantize.dynamic" in _ok(_mmedge("run", str(recipe), "--dry-run", cwd=tmp_path))
    assert "type: train" in _ok(_mmedge("run", "--dry-run", cwd=tmp_path))  # the default recipe parses too
    run = _mmedge("run", str(recipe), cwd=tmp_path)
    _ok(run)
    assert "Plots not drawn" in run.stderr  # no matplotlib in [cpu]: the bundle ships without PNGs and says so
    assert "Plots not drawn" in (tmp_path / "out" / "report.md").read_text()
    scored = json.loads(_ok(_mmedge("validate", str(tmp_path / "out"), "--json", "--no-ablation", cwd=tmp_path)))
    assert scored["test"]["accuracy"] > 0.9
    results = tmp_path / "runs" / "onnx-only" / "results.json"
    _ok(_mmedge("report", str(results), "--out", str(tmp_path / "report"), cwd=tmp_path))
    assert "quantize.dynamic" in (tmp_path / "report" / "report.md").read_text()
