"""The CI-sized kill battery (benchmarks/reliability.py runs the long one): a tiny recipe killed inside training, in
the export and in the bundle step, and interrupted with SIGINT once; after each kill nothing partial is visible,
the re-run reuses every finished step and resumes training from its last epoch, and the final bundle equals an
uninterrupted run's."""

from __future__ import annotations

import pytest

from tests.benchmarks.test_peers import BENCHMARKS, _load

pytestmark = pytest.mark.slow

reliability = _load("benchmarks_reliability", BENCHMARKS / "reliability.py")

RECIPE = """\
version: 1
name: tiny
model:
  family: cnn-lstm
  options: {conv_channels: [8, 16], embed_dim: 16, hidden_size: 24, fusion_dim: 32}
data: {test_images: 200, val_images: 100}
budgets: {max_accuracy_drop: 100}
steps:
  - {type: train, epochs: 4, batch_size: 256}
  - {type: export, batch_sizes: [1, 3], text_lengths: [5, 12]}
  - {type: quantize.dynamic, tolerance: {max_accuracy_drop: 100, min_agreement: 0}}
  - {type: validate}
  - {type: bundle, samples: 4}
"""


def test_killed_runs_leave_nothing_partial_and_finish_as_an_uninterrupted_run(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    reference = reliability.reference_run(str(recipe), "tiny", tmp_path)
    chain = [
        {"step": 1, "fraction": 0.75, "signal": "SIGKILL"},  # after a few epochs: the re-run resumes from one
        {"step": 2, "fraction": 0.5, "signal": "SIGINT"},  # Ctrl-C in the export: one line, exit 130
        {"step": 5, "fraction": 0.5, "signal": "SIGKILL"},  # while the bundle is written
    ]
    result = reliability.kills_section(str(recipe), "tiny", tmp_path, reference, [chain])
    sent = [a for a in result["attempts"] if a["sent"]]
    assert len(sent) >= 2, result["attempts"]
    assert result["partial_artifacts_seen"] == 0, result["attempts"]
    assert result["reruns_reused_every_finished_step"], result
    assert result["sigint_one_line_exit_130"], result["attempts"]
    assert result["bundles_identical"], result["finals"]
    print(*(dict((k, a[k]) for k in ("signal", "sent", "step_running", "exit_code")) for a in result["attempts"]))
    if result["attempts"][0]["step_running"] == 1:  # killed in training: the next attempt resumed from an epoch
        assert result["resumed_from_an_epoch"] >= 1, result["attempts"]
