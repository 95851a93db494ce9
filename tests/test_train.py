import numpy as np
import pytest
import torch

from mmedge.data.text import WordVocab
from mmedge.models import build_model
from mmedge.models.checkpoint import load_checkpoint
from mmedge.train import augment, train_model
from tests.conftest import TINY, tiny_train_config


def test_augment_keeps_shape_and_moves_pixels():
    x = torch.zeros(4, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1
    y = augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)
    assert abs(float(y.sum() / x.sum()) - 1) < 0.35  # jitter, not destruction


def test_training_is_seeded_and_beats_chance(data_cfg):
    from mmedge.data import load_dataset

    data = load_dataset(data_cfg)
    vocab = WordVocab.build(data.train.texts)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("cnn-lstm", TINY["cnn-lstm"], len(vocab), 12)
        _, history = train_model(model, data, vocab, tiny_train_config(epochs=2))
        runs.append(history)
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[1]]
    assert runs[0][-1]["val_accuracy"] > 1 / 12 * 3  # chance is 1/12; the yes/no prior alone is ~0.4


def test_step_train_writes_checkpoint_with_metrics_and_ablation(tiny_checkpoints, data_cfg):
    from mmedge.data import load_dataset
    from mmedge.runtime.evaluate import score
    from mmedge.train import predict_split

    ck = load_checkpoint(tiny_checkpoints["cnn-lstm"])
    m = ck.extra["metrics"]
    assert {"val", "test", "image_blanked", "text_emptied", "history", "train_seconds"} <= set(m)
    assert np.isfinite(m["history"][0]["loss"]) and m["stopped"] == "epochs" and m["epochs_run"] == len(m["history"])
    # the recorded figures are the saved model's: re-scoring the checkpoint gives them again
    data = load_dataset(data_cfg)
    for split in ("val", "test"):
        again = score(predict_split(ck.model, getattr(data, split), ck.vocab), getattr(data, split)).accuracy
        assert again == pytest.approx(m[split]["accuracy"], abs=1e-9)
    assert m["val"]["accuracy"] == pytest.approx(m["best_val_accuracy"], abs=0.002)  # the best epoch was kept
    assert m["test"]["accuracy"] > 1 / 12  # above chance after one epoch


def test_modality_dropout_blanks_images_and_empties_texts_in_the_share_asked_for(data_cfg):
    import pytest

    from mmedge.data import load_dataset

    data = load_dataset(data_cfg)
    vocab = WordVocab.build(data.train.texts)
    for family in ("cnn-lstm", "vit-transformer"):
        torch.manual_seed(0)
        model = build_model(family, TINY[family], len(vocab), 12)
        seen = {"rows": 0, "no_text": 0, "no_image": 0}
        encode, forward = model.encode_image, model.forward_features

        def encode_spy(image, encode=encode, seen=seen, model=model):
            out = encode(image)
            if model.training:  # the zero image rides last in the batch
                assert float(image[-1].abs().sum()) == 0
                seen["blank"] = out[-1:].detach()
            return out

        def forward_spy(features, ids, mask, forward=forward, seen=seen, model=model):
            if model.training:
                seen["rows"] += len(ids)
                seen["no_text"] += int((mask.sum(1) == 0).sum())
                same = (features.detach() - seen["blank"]).flatten(1).abs().amax(1) == 0
                seen["no_image"] += int(same.sum())
            return forward(features, ids, mask)

        model.encode_image, model.forward_features = encode_spy, forward_spy
        train_model(model, data, vocab, tiny_train_config(epochs=1, modality_dropout=0.4))
        assert seen["rows"] > 1000
        assert seen["no_text"] / seen["rows"] == pytest.approx(0.2, abs=0.03)
        assert seen["no_image"] / seen["rows"] == pytest.approx(0.2, abs=0.03)


class Killed(Exception):
    """Stands for a kill between two epochs (the checkpoint of the epoch before is on disk)."""


def stop_at(epoch: int):
    """An on_epoch hook that interrupts training as epoch ``epoch`` (1-based) ends, before its checkpoint."""

    def hook(record: dict) -> None:
        if record["epoch"] == epoch:
            raise Killed

    return hook


def resumed_equals_uninterrupted(build, data, vocab, cfg, folder) -> list[dict]:
    """Train once straight through, and once interrupted as epoch 2 ends then resumed by a fresh model from the
    epoch checkpoint in ``folder``: the final weights and the history's figures are identical, bit for bit."""
    straight, history = train_model(build(), data, vocab, cfg)
    with pytest.raises(Killed):
        train_model(build(), data, vocab, cfg, on_epoch=stop_at(2), resume=folder)
    assert (folder / "epoch.safetensors").is_file()
    resumed, again = train_model(build(), data, vocab, cfg, resume=folder)
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    figures = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert figures(again) == figures(history)
    return again


def test_a_killed_training_resumes_from_its_last_epoch_and_ends_as_an_uninterrupted_one(data_cfg, tmp_path, capsys):
    """Augmentation, modality dropout (both from the loop's generator) and the cosine schedule all continue where
    they were; the note says where training resumed."""
    from mmedge.data import load_dataset

    data = load_dataset(data_cfg)
    vocab = WordVocab.build(data.train.texts)

    def build():
        torch.manual_seed(0)
        return build_model("cnn-lstm", TINY["cnn-lstm"], len(vocab), 12)

    cfg = tiny_train_config(epochs=3, modality_dropout=0.2)
    history = resumed_equals_uninterrupted(build, data, vocab, cfg, tmp_path / "resume")
    assert len(history) == 3
    assert "resuming after epoch 1 of 3" in capsys.readouterr().err


def test_a_damaged_epoch_checkpoint_is_said_and_training_starts_from_zero(data_cfg, tmp_path, capsys):
    from mmedge.data import load_dataset

    data = load_dataset(data_cfg)
    vocab = WordVocab.build(data.train.texts)
    folder = tmp_path / "resume"
    folder.mkdir()
    (folder / "epoch.safetensors").write_bytes(b"\x00" * 100)
    torch.manual_seed(0)
    _, history = train_model(
        build_model("cnn-lstm", TINY["cnn-lstm"], len(vocab), 12),
        data,
        vocab,
        tiny_train_config(epochs=1),
        resume=folder,
    )
    assert len(history) == 1
    assert "does not load" in capsys.readouterr().err
