"""bench, report, mobile, predict, inspect, validate and providers must run where torch is not installed."""

import json
import subprocess
import sys
import textwrap

from tests.conftest import REFERENCE_BUNDLE

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")

    sys.meta_path.insert(0, NoTorch())
    # As when torch is not installed: `import torch` fails and importlib.util.find_spec("torch") is None.
    sys.modules["torch"] = None
    from typer.testing import CliRunner
    from mmedge_cli.main import app

    bundle, tmp = sys.argv[1], sys.argv[2]
    samples = json.load(open(bundle + "/samples/samples.json"))
    runner = CliRunner()
    codes = {
        "inspect": runner.invoke(app, ["inspect", bundle]).exit_code,
        "bench": runner.invoke(app, ["bench", bundle, bundle + "/model.onnx", "--ep", "cpu", "--ep", "xnnpack",
                                     "--allow-missing", "--threads", "1", "--threads", "2", "--batch", "1",
                                     "--batch", "2", "--rounds", "2", "--calls", "2", "--warmup", "1",
                                     "--out", tmp + "/bench"]).exit_code,
        "report": runner.invoke(app, ["report", tmp + "/bench/results.json", "--html"]).exit_code,
        "mobile": runner.invoke(app, ["mobile", bundle, "--out", tmp + "/mobile"]).exit_code,
        "predict": runner.invoke(app, ["predict", bundle, "--image", bundle + "/" + samples[0]["image"],
                                       "--text", samples[0]["text"]]).exit_code,
        "validate": runner.invoke(app, ["validate", bundle, "--no-ablation", "--json"]).exit_code,
        "providers": runner.invoke(app, ["providers", "--json"]).exit_code,
    }
    train = runner.invoke(app, ["train", "--epochs", "1"])
    loaded = sys.modules.get("torch") is not None
    print(json.dumps({"train": [train.exit_code, train.output], "codes": codes, "torch_loaded": loaded}))
""")


def test_onnx_only_commands_run_with_torch_blocked(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REFERENCE_BUNDLE), str(tmp_path)],
        cwd=tmp_path,  # what a command writes by default lands here, never in the working tree (not audited here)
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["codes"].values()) == {0}, result["codes"]
    assert result["torch_loaded"] is False
    assert (
        result["train"][0] == 2
        and "needs torch, which is not installed; pip install 'mmedge[torch]'" in result["train"][1]
    )
    doc = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len(doc["results"]) == 2 * 2 * 2 and doc["eps"]["xnnpack"]["status"] == "unavailable"
    assert (tmp_path / "bench" / "report.html").is_file() and (tmp_path / "bench" / "plots" / "latency.png").is_file()
    assert (tmp_path / "mobile" / "model.ort").is_file()
