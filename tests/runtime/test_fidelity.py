"""Output fidelity: which outputs count answers (argmax), and when outputs reproduce the model they came from."""

import numpy as np

from mmedge.runtime.fidelity import output_fidelity, reproduction_problems, scores_like


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_scores_are_class_scores_or_a_distribution_per_position():
    rng = np.random.default_rng(0)
    assert scores_like(rng.normal(size=(4, 13)).astype(np.float32))  # logits
    assert scores_like(softmax(rng.normal(size=(4, 40, 30))))  # a recognizer's characters per position
    assert not scores_like(rng.normal(size=(4, 40, 30)).astype(np.float32))  # hidden states: argmax means nothing
    assert not scores_like(rng.random((4, 1, 32, 32), dtype=np.float32))  # a detector's probability map
    assert not scores_like(rng.normal(size=(4, 1)).astype(np.float32))  # one score per sample
    assert not scores_like(np.ones((4, 13), dtype=np.int64))


def test_answers_are_counted_per_position_and_a_moved_answer_is_a_problem():
    rng = np.random.default_rng(1)
    want = softmax(rng.normal(0, 3, (8, 10, 6)))
    got = want.copy()
    got[0, 0] = got[0, 0][::-1]  # one position of one sample answers otherwise
    fid = output_fidelity({"p": got}, {"p": want})
    (entry,) = fid["outputs"]
    assert entry["argmax_agreement"] == 1 - 1 / 80 and fid["argmax_agreement"] == entry["argmax_agreement"]
    assert entry["min_cosine"] < entry["cosine"] <= 1.0
    problems = reproduction_problems(fid)
    assert any("same answers on 98.75%" in p for p in problems)
    assert reproduction_problems(output_fidelity({"p": want}, {"p": want})) == []
