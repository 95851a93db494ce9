import numpy as np
import pytest

from mmedge.errors import MmedgeError
from mmedge.runtime.evaluate import evaluate_model, parity


def test_parity_measures_diff_and_argmax_agreement():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    b = np.array([[1.0, 0.1], [0.5, 0.0], [2.0, 1.0]])
    p = parity(a, b)
    assert p["max_abs_diff"] == pytest.approx(1.0) and p["argmax_agreement"] == pytest.approx(2 / 3)


def test_parity_refuses_mismatched_shapes():
    with pytest.raises(MmedgeError, match="same model and samples"):
        parity(np.zeros((3, 2)), np.zeros((4, 2)))


def test_evaluate_model_matches_pytorch_accuracy_and_reports_ablation(tiny_onnx, tiny_checkpoints):
    from mmedge.models.checkpoint import load_checkpoint

    metrics, logits = evaluate_model(tiny_onnx["cnn-lstm"])
    torch_acc = load_checkpoint(tiny_checkpoints["cnn-lstm"]).extra["metrics"]["test"]["accuracy"]
    assert metrics["samples"] == 800 and logits.shape == (800, 12)
    assert abs(metrics["test"]["accuracy"] - torch_acc) <= 0.005
    assert {"image_blanked", "text_emptied"} <= set(metrics)
