"""How closely one model's outputs follow another's on the same inputs (device side, no torch).

A model with no data to score (a foreign ONNX model) is judged by its outputs: per output the max and mean absolute
difference, the cosine of each sample's flattened output, and argmax agreement where the output looks like scores.
The same figures tell whether a converted file (a .ort) or a bundle on another machine reproduces the model it
came from (``reproduces``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmedge.errors import MmedgeError

# A file reproduces a model when every sample's output keeps this cosine with the model's and (for outputs that look
# like scores) this share of answers. Kernels that round in another order (fused int8 ops in a .ort, another CPU's
# instruction set) move outputs far less: the int8 PP-OCRv4 recognizer's .ort against its .onnx keeps a worst cosine
# of 0.99997 with every answer the same, while differing by 0.021 on probabilities up to 1.
REPRODUCE_MIN_COSINE = 0.999
REPRODUCE_MIN_AGREEMENT = 0.99


def model_outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the model at ``path`` on ``feeds``, by name; run in chunks of the model's fixed batch size
    where its batch axis is fixed."""
    from mmedge.runtime.session import open_session

    return session_outputs(open_session(path, "cpu"), feeds)


def session_outputs(sess, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``model_outputs`` of an open session."""
    from mmedge.runtime.session import run

    names = [o.name for o in sess.get_outputs()]
    n = min(len(v) for v in feeds.values())
    fixed = [i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int)]
    step = fixed[0] if fixed and fixed[0] < n else n
    parts = [run(sess, {k: v[s : s + step] for k, v in feeds.items()}) for s in range(0, n, step)]
    return {
        name: np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i] for i, name in enumerate(names)
    }


def scores_like(out: np.ndarray) -> bool:
    """Whether argmax over the last axis of ``out`` is an answer: class scores (rank 2, more than one class), or a
    probability distribution at each position of a longer output (a text recognizer's [batch, positions, classes]
    softmax: values in [0, 1] that sum to 1 along the last axis)."""
    if out.ndim < 2 or out.shape[-1] < 2 or not np.issubdtype(out.dtype, np.floating) or not out.size:
        return False
    if out.ndim == 2:
        return True
    if out.min() < 0 or out.max() > 1:
        return False
    return bool(np.allclose(out.astype(np.float64).sum(-1), 1.0, atol=1e-3))


def output_fidelity(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict:
    """How closely ``candidate``'s outputs follow ``reference``'s (same inputs): per output the max and mean abs
    diff, the cosine of each sample's flattened output (mean and worst), and argmax agreement over the last axis for
    an output that looks like scores (``scores_like``; per position for a sequence of them). The figures of
    ``mmedge.results.Fidelity``."""
    outputs = []
    for name, want in reference.items():
        got = candidate[name]
        if got.shape != want.shape:
            raise MmedgeError(
                f"output '{name}' has shape {list(got.shape)} against the source model's {list(want.shape)}; the "
                "rewrite changed the model's interface, which no step may do."
            )
        r = want.astype(np.float64).reshape(len(want), -1) if want.ndim else want.astype(np.float64).reshape(1, 1)
        c = got.astype(np.float64).reshape(r.shape)
        diff = np.abs(c - r)
        norms = np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1)
        # two all-zero samples are identical; a zero against a non-zero one is as far apart as it gets
        cos = np.where(norms > 0, (c * r).sum(1) / np.maximum(norms, 1e-300), np.where(diff.max(1) == 0, 1.0, 0.0))
        entry = {
            "name": name,
            "shape": list(want.shape),
            "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "cosine": float(cos.mean()),
            "min_cosine": float(cos.min()),
        }
        if scores_like(want):
            entry["argmax_agreement"] = float((got.argmax(-1) == want.argmax(-1)).mean())
        outputs.append(entry)
    agreements = [o["argmax_agreement"] for o in outputs if "argmax_agreement" in o]
    return {
        "outputs": outputs,
        "min_cosine": min(o["cosine"] for o in outputs),
        "max_abs_diff": max(o["max_abs_diff"] for o in outputs),
        "argmax_agreement": min(agreements) if agreements else None,
    }


def reproduction_problems(fidelity: dict, answers: set[str] | None = None) -> list[str]:
    """What keeps outputs (``output_fidelity``'s figures) from reproducing the model they are checked against: one
    clause per output whose worst sample cosine or answer agreement falls short; empty when they reproduce it.
    ``answers`` names the outputs whose argmax is an answer (default: every output that looks like scores)."""
    problems = [
        f"output '{o['name']}' has a sample with cosine {o['min_cosine']:.5f} (required {REPRODUCE_MIN_COSINE:g})"
        for o in fidelity["outputs"]
        if o["min_cosine"] < REPRODUCE_MIN_COSINE
    ]
    problems += [
        f"output '{o['name']}' gives the same answers on {o['argmax_agreement']:.2%} (required "
        f"{REPRODUCE_MIN_AGREEMENT:.0%})"
        for o in fidelity["outputs"]
        if o.get("argmax_agreement") is not None
        and o["argmax_agreement"] < REPRODUCE_MIN_AGREEMENT
        and (answers is None or o["name"] in answers)
    ]
    return problems
