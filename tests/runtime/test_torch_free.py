"""bench, predict, inspect, validate and providers must run where torch is not installed."""

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
    from typer.testing import CliRunner
    from mmedge_cli.main import app

    bundle = sys.argv[1]
    samples = json.load(open(bundle + "/samples/samples.json"))
    runner = CliRunner()
    codes = {
        "inspect": runner.invoke(app, ["inspect", bundle]).exit_code,
        "bench": runner.invoke(app, ["bench", bundle, "--runs", "5", "--warmup", "1", "--json"]).exit_code,
        "predict": runner.invoke(app, ["predict", bundle, "--image", bundle + "/" + samples[0]["image"],
                                       "--text", samples[0]["text"]]).exit_code,
        "validate": runner.invoke(app, ["validate", bundle, "--no-ablation", "--json"]).exit_code,
        "providers": runner.invoke(app, ["providers", "--json"]).exit_code,
    }
    print(json.dumps({"codes": codes, "torch_loaded": "torch" in sys.modules}))
""")


def test_onnx_only_commands_run_with_torch_blocked():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REFERENCE_BUNDLE)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["codes"] == {"inspect": 0, "bench": 0, "predict": 0, "validate": 0, "providers": 0}
    assert result["torch_loaded"] is False
