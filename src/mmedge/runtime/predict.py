"""Answer a question about an image with a shipped bundle: onnxruntime, numpy and Pillow only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmedge.bundle import load_bundle
from mmedge.data.images import ImagePreprocessing, load_image, looks_inverted
from mmedge.data.text import WordVocab, tokenize
from mmedge.runtime.session import open_session, run


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def predict_bundle(
    bundle_dir: str | Path, image: str | Path, text: str, invert: bool = False, top: int = 3, ep: str = "cpu"
) -> dict:
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    prep = ImagePreprocessing.from_json(m["preprocessing"]["image"])
    vocab = WordVocab.load(bundle.path(m["preprocessing"]["text"]["vocab_file"]))
    pixels = load_image(image, prep, invert=invert)  # (1, C, H, W)
    notes = []
    if not invert and prep.foreground == "light-on-dark" and looks_inverted(pixels):
        notes.append(
            "the image looks like a dark digit on a light background; the model expects light on dark, "
            "so pass --invert if the answer looks wrong"
        )
    ids, mask = vocab.encode([text])
    known = set(vocab.words)
    unknown = [w for w in tokenize(text, vocab.lowercase) if w not in known]
    if unknown:
        notes.append(f"words not in the vocabulary were read as <unk>: {', '.join(unknown)}")
    sess = open_session(bundle.model_path, ep)
    logits = run(sess, {"image": pixels, "input_ids": ids, "attention_mask": mask})[0][0]
    probs = softmax(logits.astype(np.float64))
    order = np.argsort(-probs)[:top]
    labels = m["labels"]
    return {
        "answer": labels[int(order[0])],
        "top": [{"label": labels[int(i)], "probability": float(probs[i])} for i in order],
        "providers": sess.get_providers(),
        "notes": notes,
    }
