import copy
import dataclasses

import numpy as np
import pytest
import torch

from mmedge.compress.distill import DistillConfig, OnnxTeacher, distill_loss, id_map
from mmedge.compress.prune import StructuredPruneConfig, structured_prune
from mmedge.data import load_dataset
from mmedge.errors import MmedgeError, RecipeError
from mmedge.models.checkpoint import load_checkpoint
from mmedge.recipe import parse_recipe
from mmedge.runtime.evaluate import score
from mmedge.train import predict_split, train_model


def _noisy(data, share: float, seed: int = 0):
    """The same data with ``share`` of the training images given a wrong digit (so every question about them
    gets a wrong answer): label noise a good teacher sees through."""
    rng = np.random.default_rng(seed)
    digits = data.train.digits.copy()
    wrong = rng.random(len(digits)) < share
    digits[wrong] = (digits[wrong] + rng.integers(1, 10, wrong.sum())) % 10
    return dataclasses.replace(data, train=dataclasses.replace(data.train, digits=digits))


@pytest.mark.slow
def test_step_distill_beats_training_the_same_student_without_a_teacher(trained_checkpoint, data_cfg):
    teacher = load_checkpoint(trained_checkpoint)
    data = load_dataset(data_cfg)
    student = copy.deepcopy(teacher.model)  # the pipeline's case: a pruned copy of the teacher
    structured_prune(student, data, teacher.vocab, StructuredPruneConfig(ratio=0.5, finetune_epochs=0))
    noisy = _noisy(data, 0.6)
    cfg = DistillConfig(epochs=1, seed=0, alpha=0.9, augment=False)
    accuracy = {}
    for use_teacher in (False, True):
        torch.manual_seed(0)
        s = copy.deepcopy(student)
        loss, extra = distill_loss(s, teacher.model, cfg) if use_teacher else (None, ())
        s, _ = train_model(s, noisy, teacher.vocab, cfg, loss_fn=loss, extra_params=extra)
        accuracy[use_teacher] = score(predict_split(s, data.test, teacher.vocab), data.test).accuracy
    assert accuracy[True] > accuracy[False] + 0.03


def test_distillation_feature_loss_trains_a_projection(tiny_checkpoints):
    teacher = load_checkpoint(tiny_checkpoints["cnn-lstm"]).model
    student = copy.deepcopy(teacher)
    _, extra = distill_loss(student, teacher, DistillConfig(feature_weight=1.0))
    assert [p.shape for p in extra] == [torch.Size([32, 32]), torch.Size([32])]  # fused width 32 -> 32


def test_onnx_teacher_reads_the_students_words_with_its_own_ids(tiny_checkpoints, tiny_onnx, data_cfg):
    from mmedge.data.text import WordVocab

    ck = load_checkpoint(tiny_checkpoints["cnn-lstm"])
    teacher = OnnxTeacher(tiny_onnx["cnn-lstm"])
    shuffled = WordVocab(words=(*ck.vocab.words[:2], *reversed(ck.vocab.words[2:])))  # same words, other ids
    ids = id_map(shuffled, teacher.vocab)
    text_ids, _ = shuffled.encode(["is the digit even"])
    assert teacher.vocab.encode(["is the digit even"])[0].tolist() == ids[torch.from_numpy(text_ids)].tolist()
    with pytest.raises(MmedgeError, match="feature loss needs a PyTorch teacher"):
        distill_loss(ck.model, teacher, DistillConfig(feature_weight=1.0))


@pytest.mark.parametrize(
    ("step", "match"),
    [
        ({"type": "distill", "alpha": 1.5}, "alpha"),
        ({"type": "distill", "temperature": 0}, "temperature"),
        ({"type": "distill", "feature_weight": -1}, "feature_weight"),
    ],
)
def test_distill_config_errors_are_recipe_errors(step, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"name": "d", "steps": [{"type": "train"}, step]})


@pytest.mark.slow
def test_distill_step_trains_a_fresh_smaller_student_from_another_family(tmp_path, tiny_checkpoints):
    from mmedge.pipeline import run_recipe

    recipe = parse_recipe(
        {
            "name": "fresh-student",
            "model": {"family": "cnn-lstm"},
            "data": {"test_images": 200, "val_images": 100},
            "steps": [
                {"type": "load", "path": str(tiny_checkpoints["cnn-lstm"])},
                {
                    "type": "distill",
                    "epochs": 1,
                    "batch_size": 256,
                    "student_family": "vit-transformer",
                    "student": {"dim": 8, "heads": 2, "image_layers": 0, "text_layers": 1},
                },
            ],
            "workdir": str(tmp_path / "runs"),
        }
    )
    records = run_recipe(recipe, progress="off")
    m = records[1].result.metrics
    assert m.family == "vit-transformer" and m.parameters < records[0].result.metrics.parameters
    student = load_checkpoint(records[1].result.artifact.path)
    assert student.family == "vit-transformer" and student.options["dim"] == 8 and student.options["image_layers"] == 0
