"""A disk that fills up while mmedge writes: one sentence naming what was being written and the fix, a non-zero exit,
nothing half-written left behind, and what was there before left byte for byte as it was.

The fault is real: each case runs mmedge in a child process under a file-size limit (``RLIMIT_FSIZE``), with
``SIGXFSZ`` ignored so that the kernel answers a write past the limit with EFBIG instead of killing the process — the
same path a full disk (ENOSPC) or a used-up quota (EDQUOT) takes.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, relu_onnx


def limited(limit: int):
    """A ``preexec_fn``: files of the child may not grow past ``limit`` bytes, and passing it is an error (EFBIG)
    rather than the signal that kills the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # ignored signals stay ignored across exec
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_child(args: list[str], cwd: Path, limit: int | None = None, timeout: float = 120):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", NO_COLOR="1", COLUMNS="400")
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limited(limit) if limit else None,
    )


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(stderr: str) -> str:
    """The single line a failed command prints: no traceback, no second error."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith(("error:", "internal error:"))]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr
    return errors[0]


# write_bundle called as the bundle step calls it, its errors turned into a line and an exit code as by the CLI
WRITE_BUNDLE = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import typer

    from mmedge.bundle.writer import write_bundle
    from mmedge_cli.main import guarded

    model, out, report_bytes = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    write = guarded(lambda: write_bundle(out, "relu", model, None, {}, ("load.onnx",), "x" * report_bytes, 4))
    try:
        write()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    """
)


def test_bundle_written_over_a_full_disk_leaves_the_previous_bundle_as_it_was(tmp_path):
    model = relu_onnx(tmp_path / "relu.onnx")
    out = tmp_path / "bundles" / "relu"
    first = run_child([sys.executable, "-c", WRITE_BUNDLE, str(model), str(out), "1000"], REPO)
    assert first.returncode == 0, first.stderr
    before, listed = files_of(out), sorted(p.name for p in out.parent.iterdir())

    # the new report.md (200 kB) passes the 100 kB limit part-way through the new bundle
    second = run_child([sys.executable, "-c", WRITE_BUNDLE, str(model), str(out), "200000"], REPO, limit=100_000)

    assert second.returncode == 2, second.stderr
    line = one_error_line(second.stderr)
    assert f"bundle {out}" in line and "file-size limit" in line and "--out" in line, line
    assert files_of(out) == before  # the previous bundle, byte for byte
    assert sorted(p.name for p in out.parent.iterdir()) == listed  # no temporary folder left beside it


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained tiny cnn-lstm checkpoint (no training: the export only needs the weights and the vocabulary)."""
    from mmedge.data import DataConfig
    from mmedge.models.checkpoint import save_checkpoint
    from mmedge.train import build_for_data

    data_cfg = DataConfig(test_images=200, val_images=100)
    data, vocab, model = build_for_data("cnn-lstm", TINY["cnn-lstm"], data_cfg, 0)
    extra = {"metrics": {"data": data_cfg.model_dump(mode="json")}}
    return save_checkpoint(model, vocab, data.classes, folder / "ckpt", extra=extra)


def recipe(tmp_path: Path, checkpoint: Path, steps: list[dict]) -> Path:
    path = tmp_path / f"recipe-{len(steps)}.json"
    data = {
        "name": "tiny",
        "model": {"family": "cnn-lstm", "options": TINY["cnn-lstm"]},
        "data": {"test_images": 200, "val_images": 100},
        "steps": [{"type": "load", "path": str(checkpoint)}, *steps],
        "output": str(tmp_path / "bundle"),
        "workdir": str(tmp_path / "runs"),
    }
    path.write_text(json.dumps(data))
    return path


@pytest.mark.slow
def test_export_step_on_a_full_disk_leaves_no_step_folder_and_the_results_as_they_were(tmp_path):
    """The export runs in a worker process: its full disk reaches the user as the same one sentence, not as an
    exporter failure, and the run keeps nothing of the step."""
    checkpoint = tiny_checkpoint(tmp_path)
    mmedge = [sys.executable, "-c", "from mmedge_cli.main import app; app()"]
    first = run_child([*mmedge, "run", str(recipe(tmp_path, checkpoint, []))], tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "tiny"
    results, listed = (run_dir / "results.json").read_bytes(), sorted(p.name for p in run_dir.iterdir())

    export = {"type": "export", "batch_sizes": [1, 3], "text_lengths": [5, 12]}
    # the ONNX model (~50 kB) passes the 20 kB limit; the run's lock and records stay under it
    second = run_child([*mmedge, "run", str(recipe(tmp_path, checkpoint, [export]))], tmp_path, limit=20_000)

    assert second.returncode == 2, second.stderr
    line = one_error_line(second.stderr)
    assert f"ONNX export of {checkpoint}" in line and str(run_dir) in line and "workdir" in line, line
    assert (run_dir / "results.json").read_bytes() == results
    assert sorted(p.name for p in run_dir.iterdir()) == listed  # no export step folder, finished or hidden


def test_a_full_disk_anywhere_is_one_sentence_and_exit_2_not_an_internal_error(tmp_path):
    """Where no step said what it was writing (a report, a checkpoint), the CLI still names the file and the fix;
    libraries that wrap the OSError in their own exception (safetensors, torch) keep the system's message, which
    is recognized too."""
    import typer

    from mmedge_cli.main import err, guarded

    def fails(exc: Exception):
        def command():
            raise exc

        return guarded(command)

    report = tmp_path / "out" / "report.md"
    cases = [  # (the failure, what the sentence says, the file it names)
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(report)), "the disk is full", str(report)),
        (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "the disk quota is used up", "mmedge's output"),
        (RuntimeError('Error while serializing: IoError(Os { code: 27, message: "File too large" })'), "file-size", ""),
    ]
    for exc, said, named in cases:
        with err.capture() as captured, pytest.raises(typer.Exit) as info:
            fails(exc)()
        assert info.value.exit_code == 2
        line = one_error_line(captured.get())
        assert said in line and named in line and "--out or the recipe's workdir" in line, line
