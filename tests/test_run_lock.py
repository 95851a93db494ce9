"""Two runs on one working folder: the second waits for the first (saying whose run), or refuses with --no-wait;
runs of other recipes proceed; a killed run leaves the folder free."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from mmedge.errors import RunLockedError
from mmedge.pipeline import run_lock
from mmedge_cli.main import app

_HOLD = """
import sys, time
from pathlib import Path
from mmedge.pipeline import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root, seconds: float) -> subprocess.Popen:
    """Another process that holds ``root`` for ``seconds``, once it has said so."""
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_refuses_without_waiting_then_waits_for_the_first(tmp_path, capsys):
    root = tmp_path / "runs" / "tiny"
    holder = _holder(root, 2.0)
    try:
        refused = f"in use by another mmedge run \\(pid {holder.pid}, started "
        with pytest.raises(RunLockedError, match=refused), run_lock(root, wait=False):
            pass
        with run_lock(tmp_path / "runs" / "other", wait=False):  # another recipe's folder is free
            pass
        started = time.monotonic()
        with run_lock(root):  # waits until the holder is done
            assert holder.poll() is not None or time.monotonic() - started > 0.5
        assert f"waiting for the other mmedge run using {root} (pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert not (root / ".lock.owner").exists()  # the owner record goes with the lock


def test_a_killed_run_leaves_the_folder_free(tmp_path):
    root = tmp_path / "runs" / "tiny"
    holder = _holder(root, 60.0)
    holder.kill()  # SIGKILL: no clean-up runs; the operating system drops the lock with the process
    holder.wait()
    with run_lock(root, wait=False):
        pass


def test_cli_run_no_wait_names_the_run_that_holds_the_folder(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "model": {"family": "cnn-lstm"},
                "steps": [{"type": "train", "epochs": 1}],
                "workdir": str(tmp_path / "runs"),
                "output": str(tmp_path / "bundle"),
            }
        )
    )
    holder = _holder(tmp_path / "runs" / "tiny", 60.0)
    try:
        result = CliRunner().invoke(app, ["run", str(recipe), "--no-wait"])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2, result.output
    assert f"pid {holder.pid}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bundle").exists()
