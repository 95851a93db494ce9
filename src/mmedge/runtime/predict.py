"""Answer a question about an image with a shipped bundle: onnxruntime, numpy and Pillow only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmedge.bundle.manifest import load_bundle
from mmedge.data.images import ImagePreprocessing, load_image, looks_inverted
from mmedge.data.text import HFTokenizer, WordVocab, tokenize
from mmedge.errors import BundleError
from mmedge.runtime.session import open_session, run


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def polarity_note(prep: ImagePreprocessing, pixels: np.ndarray, invert: bool) -> str | None:
    """The --invert hint, for models trained on light-on-dark digits only (MNIST-format data): a photo or a
    drawing with a bright border is what such a model was trained on, not a reason to invert it."""
    if invert or prep.foreground != "light-on-dark" or not looks_inverted(pixels):
        return None
    return (
        "the image looks like a dark digit on a light background; the model expects light on dark, "
        "so pass --invert if the answer looks wrong"
    )


def predict_bundle(
    bundle_dir: str | Path, image: str | Path, text: str, invert: bool = False, top: int = 3, ep: str = "cpu"
) -> dict:
    """The answer, the top labels and notes for one image and question. Manifest, tokenizer and model are read
    from one snapshot of the bundle, so a run that replaces the bundle meanwhile cannot mix two versions."""
    with load_bundle(bundle_dir) as bundle:
        return _predict(bundle, image, text, invert, top, ep)


def _text(bundle, name: str) -> str:
    """A text file of the bundle (a tokenizer or vocabulary), refused in a sentence when it is not UTF-8."""
    try:
        return bundle.read(name).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{bundle.path(name)} is not UTF-8 text (byte {exc.start}); rebuild the bundle.") from None


def _vocab(bundle, name: str) -> WordVocab:
    """The bundle's word vocabulary (vocab.json)."""
    try:
        return WordVocab.from_json(json.loads(_text(bundle, name)))
    except json.JSONDecodeError as exc:
        raise BundleError(f"cannot read the vocabulary {bundle.path(name)}: {exc}; re-export the model.") from None


def _predict(bundle, image: str | Path, text: str, invert: bool, top: int, ep: str) -> dict:
    m = bundle.manifest
    prep = ImagePreprocessing.from_json(m["preprocessing"]["image"])
    text_cfg = m["preprocessing"]["text"]
    takes_text = any(i["name"] == "input_ids" for i in m["inputs"])
    pixels = load_image(image, prep, invert=invert)  # (1, C, H, W)
    notes = [n for n in (polarity_note(prep, pixels, invert),) if n]
    feeds = {"image": pixels}
    if takes_text and text_cfg["tokenizer"] == "huggingface":  # tokenizer.json, run by the tokenizers package
        tokenizer = HFTokenizer(
            _text(bundle, text_cfg["tokenizer_file"]), int(text_cfg["max_length"]), int(text_cfg["pad_id"])
        )
        feeds["input_ids"], feeds["attention_mask"] = tokenizer.encode([text])
    elif takes_text:
        vocab = _vocab(bundle, text_cfg["vocab_file"])
        feeds["input_ids"], feeds["attention_mask"] = vocab.encode([text])
        known = set(vocab.words)
        unknown = [w for w in tokenize(text, vocab.lowercase) if w not in known]
        if unknown:
            notes.append(f"words not in the vocabulary were read as <unk>: {', '.join(unknown)}")
    elif text:
        notes.append("this zero-shot model classifies the image against its labels; the text was not used")
    sess = open_session(bundle.model_path, ep, model=bundle.model_bytes)
    logits = run(sess, feeds)[0][0]
    probs = softmax(logits.astype(np.float64))
    order = np.argsort(-probs)[:top]
    labels = m["labels"]
    return {
        "answer": labels[int(order[0])],
        "top": [{"label": labels[int(i)], "probability": float(probs[i])} for i in order],
        "providers": sess.get_providers(),
        "notes": notes,
    }
