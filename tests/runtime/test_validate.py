"""The accuracy gate of `mmedge validate` (``check_accuracy_drop``), on validate's figures."""

import pytest

from mmedge.errors import BudgetExceededError, MmedgeError
from mmedge.runtime.validate import check_accuracy_drop

FIGURES = {"accuracy_drop_points": 1.5, "reference": "teacher.onnx", "test": {"accuracy": 0.9}}


def test_accuracy_drop_within_or_at_the_budget_passes():
    check_accuracy_drop(FIGURES, 2)
    check_accuracy_drop(FIGURES, 1.5)
    check_accuracy_drop({"accuracy_drop_points": -0.3, "reference": "r"}, 0)  # better than the reference


def test_accuracy_drop_over_the_budget_raises_budget_exceeded_with_exit_1():
    with pytest.raises(BudgetExceededError) as info:
        check_accuracy_drop(FIGURES, 1)
    assert str(info.value) == "accuracy dropped 1.50 points against teacher.onnx, over the allowed 1."
    assert info.value.exit_code == 1


def test_accuracy_gate_without_a_reference_accuracy_is_a_usage_error():
    with pytest.raises(MmedgeError, match="--max-accuracy-drop needs a reference accuracy") as info:
        check_accuracy_drop({"test": {"accuracy": 0.9}}, 1)
    assert not isinstance(info.value, BudgetExceededError) and info.value.exit_code == 2


def test_no_budget_checks_nothing():
    check_accuracy_drop({}, None)
    check_accuracy_drop({"accuracy_drop_points": 50.0, "reference": "r"}, None)
