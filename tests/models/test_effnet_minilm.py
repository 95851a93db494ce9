"""effnet-minilm: EfficientNet-Lite0 + all-MiniLM-L6-v2 fused late, trained with each tower's frozen part cached."""

import itertools

import numpy as np
import pytest
import torch

from mmedge.data import DataConfig, load_dataset
from mmedge.models import build_model, family_config
from mmedge.models.minilm import minilm_tokenizer
from mmedge.train import TrainConfig, predict_split, train_model


@pytest.fixture(scope="module")
def easy():
    """easy-VQA cut to a few hundred questions per split (their pictures only are encoded)."""
    from dataclasses import replace

    data = load_dataset(DataConfig(name="easy-vqa"))
    rng = np.random.default_rng(0)

    def cut(split, n):
        return split.subset(np.sort(rng.choice(len(split), n, replace=False)))

    return replace(data, train=cut(data.train, 600), val=cut(data.val, 200), test=cut(data.test, 200))


def small(**options):
    """A random-weight model (no packaged weights read) at a small input size."""
    config = family_config("effnet-minilm", {"pretrained": False, "image_size": 32, **options})
    torch.manual_seed(0)
    return build_model("effnet-minilm", config, vocab_size=30522, num_classes=13)


def test_the_model_answers_13_classes_and_states_its_branches():
    model = small().eval()
    spec = model.spec()
    assert set(spec.branches) == {"image", "text", "fusion", "head"}
    assert spec.image.channels == 3 and spec.image.height == 32 and spec.text_max_length == 24
    ids, mask = minilm_tokenizer(24).encode(["what color is the shape?", "is there a circle?"])
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32), torch.from_numpy(ids), torch.from_numpy(mask))
    assert logits.shape == (2, 13) and torch.isfinite(logits).all()


def test_frozen_towers_leave_only_the_projections_fusion_and_head_to_train():
    model = small()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"image_proj", "text_proj", "fusion", "head"}
    partial = small(train_image_blocks=2, train_text_layers=1)
    names = [n for n, p in partial.named_parameters() if p.requires_grad]
    assert any(n.startswith("image_tower.blocks.15.") for n in names)
    assert any(n.startswith("image_tower.conv_head") for n in names)
    assert not any(n.startswith("image_tower.blocks.13.") for n in names)
    assert any(n.startswith("text_tower.layers.5.") for n in names)
    assert not any(n.startswith(("text_tower.layers.4.", "text_tower.word")) for n in names)


@pytest.mark.parametrize("options", [{}, {"train_image_blocks": 3, "train_text_layers": 2}])
def test_cached_prediction_equals_the_whole_forward_pass(easy, options):
    """Scoring through one encoding per picture and per question string is exact, frozen prefix or not."""
    model = small(**options).eval()
    vocab = minilm_tokenizer(24)
    split = easy.val
    cached = predict_split(model, split, vocab)
    rows = np.arange(40)
    ids, mask = vocab.encode([split.texts[i] for i in rows])
    with torch.no_grad():
        whole = model(
            torch.from_numpy(split.pixels(rows, model.spec().image)), torch.from_numpy(ids), torch.from_numpy(mask)
        )
    np.testing.assert_allclose(cached[rows], whole.numpy(), rtol=1e-4, atol=1e-5)
    blanked = predict_split(model, split, vocab, blank_image=True)
    with torch.no_grad():
        empty = model(torch.zeros(len(rows), 3, 32, 32), torch.from_numpy(ids), torch.from_numpy(mask))
    np.testing.assert_allclose(blanked[rows], empty.numpy(), rtol=1e-4, atol=1e-5)


def test_training_with_cached_towers_changes_only_what_trains_and_learns(easy):
    model = small(train_text_layers=1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = model.text_tower.layers[5].ffn[0].weight.detach().clone()
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, augment=False, patience=3)
    model, history = train_model(model, easy, minilm_tokenizer(24), cfg)
    assert len(history) == 3 and history[-1]["loss"] < history[0]["loss"]
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"{name} changed but is frozen"
    assert not torch.equal(model.text_tower.layers[5].ffn[0].weight, before)


def test_current_options_rebuild_the_model_with_the_same_shapes():
    model = small(text_layers=6)
    rebuilt = build_model("effnet-minilm", model.current_options(), vocab_size=30522, num_classes=13)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.slow
def test_pretrained_towers_with_a_trained_head_answer_easy_vqa(easy):
    """The packaged weights loaded, only the head trained, on 600 training questions: well past the text-only
    baseline (67 % on the whole test split)."""
    from mmedge.train import build_for_data

    _, vocab, model = build_for_data("effnet-minilm", {}, DataConfig(name="easy-vqa"))
    cfg = TrainConfig(epochs=8, batch_size=64, lr=1e-3, augment=False)
    model, _ = train_model(model, easy, vocab, cfg)
    from mmedge.runtime.evaluate import score

    assert score(predict_split(model, easy.test, vocab), easy.test).accuracy > 0.8


def test_a_data_set_with_paraphrases_gets_them_scored_and_reported_beside_the_missing_modalities(easy):
    from mmedge.report.markdown import robustness_section
    from mmedge.report.views import robustness
    from mmedge.results import Score, TrainMetrics
    from mmedge.train import evaluate_with_ablation

    assert easy.paraphrase is not None and len(easy.paraphrase) == len(load_dataset(DataConfig(name="easy-vqa")).test)
    scores = evaluate_with_ablation(small().eval(), easy, minilm_tokenizer(24))
    assert 0 <= scores["paraphrase"]["accuracy"] <= 1 and set(scores["paraphrase"]["per_family"]) == {
        "color",
        "shape",
        "yes/no",
    }
    row = {k: Score(**v) for k, v in scores.items()}
    steps = [("train", TrainMetrics.model_construct(**row))]
    rows = robustness(steps)
    assert rows[0]["paraphrase"] == scores["paraphrase"]["accuracy"]
    text = "\n".join(robustness_section(rows))
    assert "| artifact (step) | both | image missing | text missing | paraphrased |" in text
    assert "wordings training never saw" in text
    # a data set without paraphrases keeps the three columns
    plain = "\n".join(robustness_section([{k: v for k, v in rows[0].items() if k != "paraphrase"}]))
    assert "paraphrased" not in plain


# ---- pruning the real towers -----------------------------------------------------------------------------------


def test_vocabulary_pruning_keeps_frequent_pieces_and_spells_rare_words_from_smaller_ones():
    from mmedge.compress.vocab import trim_wordpiece
    from mmedge.errors import MmedgeError

    full = minilm_tokenizer(24)
    kept_texts = ["what color is the rectangle?"]
    small_vocab, old_ids = trim_wordpiece(full, 3000, kept_texts)
    assert 3000 < len(small_vocab) == len(old_ids) < 5000  # + one-character pieces + the texts' pieces
    assert old_ids[:3000] == list(range(3000))  # special tokens and frequent pieces keep their ids
    for text in kept_texts:  # the given texts tokenize to the same pieces
        ids, _ = small_vocab.encode([text])
        ref, _ = full.encode([text])
        assert [old_ids[i] for i in ids[0]] == ref[0].tolist()
    rare = "the kaleidoscope"  # 'kaleidoscope' is one piece of id > 3000 in the full vocabulary
    ids, mask = small_vocab.encode([rare])
    n = int(mask.sum())
    assert n > int(full.encode([rare])[1].sum())  # split into more, smaller pieces ...
    unk = small_vocab._tok.token_to_id("[UNK]")
    assert unk not in ids[0, :n].tolist()  # ... not [UNK]
    with pytest.raises(MmedgeError, match="keeps the whole"):
        trim_wordpiece(full, 40000, [])
    from mmedge.data.text import WordVocab

    with pytest.raises(MmedgeError, match="prunes WordPiece vocabularies"):
        trim_wordpiece(WordVocab.build(["a b"]), 1000, [])


def test_tower_fine_tuning_is_refused_for_a_model_that_trains_every_layer(tiny_checkpoints, data_cfg):
    from mmedge.compress.prune import StructuredPruneConfig, structured_prune
    from mmedge.errors import MmedgeError
    from mmedge.models.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoints["cnn-lstm"])
    cfg = StructuredPruneConfig(ratio=0.25, finetune_towers=["image"], iterative_steps=1)
    with pytest.raises(MmedgeError, match="drop the option"):
        structured_prune(ck.model, load_dataset(data_cfg), ck.vocab, cfg)


def test_grouped_order_keeps_each_pictures_questions_together():
    from mmedge.train_cache import _grouped_order

    image_row = torch.tensor([0, 1, 0, 2, 1, 2, 2, 0, 3])
    order = _grouped_order(image_row, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(9))
    runs = [int(image_row[i]) for i in order]
    changes = sum(a != b for a, b in itertools.pairwise(runs))
    assert changes == 3  # four pictures, each one contiguous run


def test_distillation_on_cached_towers_moves_the_student_to_its_teacher_with_modalities_removed_alike(easy):
    """Student and teacher answer from cached tower outputs; a question whose image modality dropout blanks is
    blank for the teacher too, and validation's distillation loss is recorded to break accuracy ties."""
    from mmedge.compress.distill import DistillConfig, distill_loss, teacher_caches
    from mmedge.train_cache import CachedBatch

    vocab = minilm_tokenizer(24)
    teacher, _ = train_model(small(), easy, vocab, TrainConfig(epochs=3, batch_size=64, lr=3e-3, augment=False))
    student = small(fusion_hidden=32)  # the same (random) towers, a narrower fusion
    cfg = DistillConfig(
        epochs=3, batch_size=64, lr=3e-3, augment=False, patience=3, modality_dropout=0.4, feature_weight=1.0
    )
    caches = teacher_caches(teacher, easy, vocab)
    loss_fn, extra = distill_loss(student, teacher, cfg, None, caches)
    seen: list[CachedBatch] = []

    def spy(logits, batch):
        seen.append(batch)
        return loss_fn(logits, batch)

    spy.cached = loss_fn.cached

    def agreement() -> float:
        ours, theirs = predict_split(student, easy.test, vocab), predict_split(teacher, easy.test, vocab)
        return float((ours.argmax(1) == theirs.argmax(1)).mean())

    projection = [p.detach().clone() for p in extra]
    before = agreement()
    student, history = train_model(student, easy, vocab, cfg, None, spy, extra)
    assert all(isinstance(b, CachedBatch) for b in seen) and {b.split for b in seen} == {"train", "val"}
    blank = caches["train"].blank_image
    assert any((b.image_rows == blank).any() for b in seen if b.split == "train")
    # the teacher answered the blanked questions from its own blank-image encoding
    b = next(b for b in seen if b.split == "train" and (b.image_rows == blank).any())
    with torch.no_grad():
        asked = caches["train"].logits(teacher, b.rows, b.image_rows, b.text_rows)
        whole = caches["train"].logits(teacher, b.rows)
    assert not torch.allclose(asked, whole)
    assert all(r["val_loss"] is not None for r in history)
    assert not all(torch.equal(a, p) for a, p in zip(projection, extra, strict=True))
    after = agreement()
    assert after > before + 0.3, (before, after)  # measured: 0.00 -> 0.53


def test_a_killed_training_on_cached_towers_resumes_as_an_uninterrupted_one(easy, tmp_path):
    from tests.test_train import resumed_equals_uninterrupted

    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, augment=False, patience=3, modality_dropout=0.2)
    history = resumed_equals_uninterrupted(
        lambda: small(train_text_layers=1), easy, minilm_tokenizer(24), cfg, tmp_path / "resume"
    )
    assert len(history) == 3
