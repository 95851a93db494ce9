"""What `mmedge run` prints at the end (``pipeline.summary_lines``), from the records of a run."""

from __future__ import annotations

from pathlib import Path

from mmedge.artifact import Artifact
from mmedge.pipeline import summary_lines
from mmedge.recipe import load_recipe, overrides
from mmedge.results import Gate, Score, StepMetrics, ValidateMetrics
from mmedge.steps.registry import StepRecord, StepResult, get_step


def record(i: int, tag: str, metrics: StepMetrics) -> StepRecord:
    result = StepResult(Artifact(Path(f"{tag}.onnx"), "onnx", {}), metrics)
    return StepRecord(i, get_step(tag).config_cls(), "k", Path(f"{i:02d}-{tag}"), result, 1.0, False)


def score(accuracy: float) -> Score:
    return Score(accuracy=accuracy, per_family={})


def test_summary_lines_give_test_accuracy_with_ablation_and_the_bundle(tmp_path):
    recipe = load_recipe(None, overrides(output=tmp_path / "b"))
    val = ValidateMetrics(test=score(0.9812), image_blanked=score(0.4412), text_emptied=score(0.3701))
    records = [record(1, "validate", val), record(2, "bundle", StepMetrics())]
    assert summary_lines(records, recipe) == [
        "test accuracy 98.12% (image blanked 44.12%, text emptied 37.01%)",
        f"bundle: {tmp_path / 'b'}",
    ]


def test_summary_lines_say_a_model_over_budget_was_kept_and_read_the_last_validate(tmp_path):
    recipe = load_recipe(None, overrides(output=tmp_path / "b"))
    gate = Gate(split="val", accuracy=0.9, accuracy_drop_points=2.346)
    first = ValidateMetrics(test=score(0.5))
    last = ValidateMetrics(test=score(0.9), gate=gate, within_budget=False)
    lines = summary_lines([record(1, "validate", first), record(2, "validate", last)], recipe)
    assert lines == [
        "test accuracy 90.00%",
        "over the accuracy budget: 2.35 validation points below the reference, kept because of --allow-over-budget",
    ]


def test_summary_lines_are_empty_without_validate_or_bundle(tmp_path):
    recipe = load_recipe(None)
    assert summary_lines([], recipe) == []
    assert summary_lines([record(1, "validate", ValidateMetrics())], recipe) == []  # no test split scored
