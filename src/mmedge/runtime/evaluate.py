"""Accuracy, modality ablation and output parity of ONNX models with ONNX Runtime (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmedge.data import DataConfig, load_dataset
from mmedge.data.digits_vqa import VQASplit
from mmedge.data.images import ImagePreprocessing
from mmedge.data.text import Tokenizer, tokenizer_from_json
from mmedge.errors import MmedgeError
from mmedge.runtime.session import metadata_json, open_session, run


@dataclass(frozen=True)
class Score:
    accuracy: float
    per_family: dict[str, float]

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "per_family": self.per_family}


def score(logits: np.ndarray, split: VQASplit) -> Score:
    hit = logits.argmax(1) == split.labels
    per_family = {
        name: float(hit[split.families == i].mean())
        for i, name in enumerate(split.family_names)
        if (split.families == i).any()
    }
    return Score(float(hit.mean()), per_family)


def parity(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """How close two logit arrays (N, classes) are: max/mean abs diff and argmax agreement."""
    if candidate.shape != reference.shape:
        raise MmedgeError(
            f"cannot compare outputs of shape {list(candidate.shape)} with a reference of shape "
            f"{list(reference.shape)}; the reference must come from the same model and samples."
        )
    c, r = candidate.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(c - r)
    norms = np.linalg.norm(c, axis=1) * np.linalg.norm(r, axis=1)
    cosine = (c * r).sum(1) / np.maximum(norms, 1e-12)
    # signal-to-quantization-noise ratio of the logits, in dB (higher is closer; 20 dB = 1% of the energy)
    noise = float((diff**2).sum())
    sqnr = float(10 * np.log10((r**2).sum() / noise)) if noise > 0 else float("inf")
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "mean_cosine": float(cosine.mean()),
        "sqnr_db": sqnr,
        "argmax_agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
        "samples": len(candidate),
    }


def model_vocab(sess) -> Tokenizer:
    tok = metadata_json(sess, "mmedge.tokenizer")
    if tok is None:
        raise MmedgeError(
            "this ONNX model carries no mmedge tokenizer metadata, so its test split cannot be "
            "built; validate a model written by `mmedge export`."
        )
    return tokenizer_from_json(tok)


@dataclass(frozen=True)
class ModelInputs:
    """What it takes to feed a model from a dataset: its tokenizer, image preprocessing and input names."""

    tokenizer: Tokenizer
    prep: ImagePreprocessing
    names: tuple[str, ...]
    image: str = "image"  # the model's image input: its one float input of rank 4, whatever it is called

    @classmethod
    def of(cls, sess) -> ModelInputs:
        prep = metadata_json(sess, "mmedge.preprocessing")
        inputs = sess.get_inputs()
        images = [i.name for i in inputs if i.type == "tensor(float)" and len(i.shape) == 4]
        return cls(
            model_vocab(sess),
            ImagePreprocessing.from_json(prep) if prep else ImagePreprocessing(),
            tuple(i.name for i in inputs),
            images[0] if len(images) == 1 else "image",
        )


def model_data_config(sess, override: DataConfig | None = None) -> DataConfig:
    if override is not None:
        return override
    return DataConfig(**(metadata_json(sess, "mmedge.data") or {}))


def feeds_for(
    split: VQASplit,
    vocab: Tokenizer | ModelInputs,
    rows: np.ndarray,
    blank_image: bool = False,
    empty_text: bool = False,
    length: int | None = None,
) -> dict[str, np.ndarray]:
    """The model's inputs for some questions of a split; a ModelInputs also sizes the image and drops unused inputs."""
    spec = vocab if isinstance(vocab, ModelInputs) else None
    tokenizer = spec.tokenizer if spec else vocab
    image = split.pixels(rows, spec.prep if spec else None)
    if blank_image:
        image = np.zeros_like(image)
    texts = [""] * len(rows) if empty_text else [split.texts[i] for i in rows]
    ids, mask = tokenizer.encode(texts, length)
    feeds = {spec.image if spec else "image": image, "input_ids": ids, "attention_mask": mask}
    return {k: v for k, v in feeds.items() if k in spec.names} if spec else feeds


def predict(
    sess, split: VQASplit, vocab: Tokenizer | ModelInputs | None = None, batch_size: int = 256, **ablation
) -> np.ndarray:
    """Logits (N, classes) for a whole split. The model is fed as its own metadata says (tokenizer, image size,
    inputs); a ModelInputs already read from it saves reading it again, and a bare tokenizer is not enough."""
    vocab = vocab if isinstance(vocab, ModelInputs) else ModelInputs.of(sess)
    out = []
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(start + batch_size, len(split)))
        out.append(run(sess, feeds_for(split, vocab, rows, **ablation))[0])
    return np.concatenate(out)


def evaluate_model(
    path: str | Path, data: DataConfig | None = None, ep: str = "cpu", ablation: bool = True, split_name: str = "test"
) -> tuple[dict, np.ndarray]:
    """Accuracy (and the modality ablation) of an exported model on a split; returns (metrics, logits)."""
    sess = open_session(path, ep)
    vocab = ModelInputs.of(sess)
    cfg = model_data_config(sess, data)
    dataset = load_dataset(cfg)
    split = getattr(dataset, split_name)
    logits = predict(sess, split, vocab)
    metrics: dict = {
        "split": split_name,
        "samples": len(split),
        "data": cfg.model_dump(mode="json"),
        "providers": sess.get_providers(),
        # validation accuracy is what gates and budgets compare; the test figure is only reported
        "val": score(predict(sess, dataset.val, vocab), dataset.val).to_json(),
        "test": score(logits, split).to_json(),
    }
    if ablation:
        metrics["image_blanked"] = score(predict(sess, split, vocab, blank_image=True), split).to_json()
        metrics["text_emptied"] = score(predict(sess, split, vocab, empty_text=True), split).to_json()
        reworded = getattr(dataset, "paraphrase", None) if split_name == "test" else None
        if reworded is not None:  # the same test pictures, asked in wordings training never saw
            metrics["paraphrase"] = score(predict(sess, reworded, vocab), reworded).to_json()
    return metrics, logits


def split_logits(path: str | Path, data: DataConfig | None = None, split_name: str = "val", ep: str = "cpu"):
    """(logits, split) of a model on one split of its data set."""
    sess = open_session(path, ep)
    split = getattr(load_dataset(model_data_config(sess, data)), split_name)
    return predict(sess, split), split


def embedding_fidelity(path: str | Path, reference: str | Path, data: DataConfig | None = None) -> dict:
    """How close a compressed dual encoder's embeddings stay to the fp32 export's, per ``*_embeds`` output.

    On the test split (each distinct image or text once): mean cosine between the two models' embeddings, and
    nearest-neighbour agreement — the share of items whose closest other item is the same under both models, which
    is what a retrieval or zero-shot app sees."""
    sess, ref = open_session(path), open_session(reference)
    names = [o.name for o in sess.get_outputs() if o.name.endswith("_embeds")]
    if not names:
        return {}
    cfg = model_data_config(sess, data)
    split = load_dataset(cfg).test
    first = {t: i for i, t in reversed(list(enumerate(split.texts)))}
    picks = {
        "image_embeds": np.unique(split.image_index, return_index=True)[1],
        "text_embeds": np.asarray(sorted(first.values())),
    }
    out = {}
    for name in names:
        rows = picks.get(name, np.arange(len(split)))
        got, want = (_outputs(s, split, rows)[name] for s in (sess, ref))
        out[name] = {**_embedding_parity(got, want), "items": len(rows)}
    return out


def _outputs(sess, split: VQASplit, rows: np.ndarray, batch_size: int = 128) -> dict[str, np.ndarray]:
    inputs = ModelInputs.of(sess)
    names = [o.name for o in sess.get_outputs()]
    parts = [run(sess, feeds_for(split, inputs, rows[s : s + batch_size])) for s in range(0, len(rows), batch_size)]
    return {n: np.concatenate([p[i] for p in parts]) for i, n in enumerate(names)}


def _embedding_parity(got: np.ndarray, want: np.ndarray) -> dict:
    def unit(x):
        x = x.astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    g, w = unit(got), unit(want)
    sim_g, sim_w = g @ g.T, w @ w.T
    np.fill_diagonal(sim_g, -np.inf)
    np.fill_diagonal(sim_w, -np.inf)
    return {
        "mean_cosine": float((g * w).sum(1).mean()),
        "min_cosine": float((g * w).sum(1).min()),
        "nn_agreement": float((sim_g.argmax(1) == sim_w.argmax(1)).mean()) if len(g) > 2 else None,
    }


def per_answer(logits: np.ndarray, split: VQASplit) -> dict:
    """Accuracy per true answer and the confusion table (rows: true answer, columns: predicted), by label name."""
    labels = list(split.classes)
    pred = logits.argmax(1)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (split.labels, pred), 1)
    accuracy = {labels[i]: float(confusion[i, i] / confusion[i].sum()) for i in range(n) if confusion[i].sum() > 0}
    return {"labels": labels, "accuracy": accuracy, "confusion": confusion.tolist()}


def validate_model(
    path: str | Path,
    data: DataConfig | None = None,
    ep: str = "cpu",
    ablation: bool = True,
    reference: str | Path | None = None,
) -> dict:
    """What `mmedge validate` reports for an .onnx file: test accuracy (with the modality ablation), accuracy per
    answer and the confusion table, and parity with a reference (another .onnx, or a .npy of logits on the same
    split). ``data`` scores on another data set than the one the model's metadata names (e.g. a user's)."""
    metrics, logits = evaluate_model(path, data, ep=ep, ablation=ablation)
    sess = open_session(path, ep)
    split = load_dataset(model_data_config(sess, data)).test
    metrics["per_answer"] = per_answer(logits, split)
    ref_acc = metadata_json(sess, "mmedge.reference_accuracy")
    ref_name = "the PyTorch model at export" if ref_acc is not None else None
    if reference is not None:
        reference = Path(reference)
        if reference.suffix == ".npy":
            if not reference.is_file():
                raise MmedgeError(
                    f"reference file {reference} does not exist; pass an .onnx model or a .npy of logits."
                )
            ref_logits = np.load(reference, allow_pickle=False)
        else:
            _, ref_logits = evaluate_model(reference, data, ep=ep, ablation=False)
        metrics["parity"] = parity(logits, ref_logits)
        ref_acc, ref_name = score(ref_logits, split).accuracy, str(reference)
    if ref_acc is not None:
        metrics["reference"] = ref_name
        metrics["reference_accuracy"] = ref_acc
        metrics["accuracy_drop_points"] = round((ref_acc - metrics["test"]["accuracy"]) * 100, 4)
    return metrics


def validate_samples(bundle, ep: str = "cpu") -> dict:
    """A bundle (a ``Bundle`` snapshot) checked against its own samples, with nothing but the bundle: each sample's
    recorded inputs are run and the answers and logits compared with those recorded when the bundle was built."""
    manifest = bundle.manifest
    info = manifest.get("samples") or {}
    if info.get("tensors") and info.get("outputs"):
        return _validate_recorded_outputs(bundle, info, ep)
    if not info.get("tensors") or not info.get("file"):
        raise MmedgeError(f"bundle {bundle.root} ships no samples; validate it on a data set with --data PATH.")
    rows = bundle.read_json(info["file"])
    feeds = bundle.read_arrays(info["tensors"])
    sess = open_session(bundle.model_path, ep, model=bundle.model_bytes)
    names = {i.name for i in sess.get_inputs()}
    logits = run(sess, {k: v for k, v in feeds.items() if k in names})[0]
    want = np.asarray([r["logits"] for r in rows], dtype=np.float64)
    labels = manifest.get("labels") or []
    answers = [labels[i] if i < len(labels) else str(i) for i in logits.argmax(1)]
    return {
        "samples": len(rows),
        "providers": sess.get_providers(),
        "same_answers": float(np.mean([a == r["predicted"] for a, r in zip(answers, rows, strict=True)])),
        "correct": float(np.mean([a == r["answer"] for a, r in zip(answers, rows, strict=True)])),
        "max_abs_diff": float(np.abs(logits.astype(np.float64) - want).max()),
    }


def _validate_recorded_outputs(bundle, info: dict, ep: str) -> dict:
    """A bundle of a model mmedge did not write: its recorded inputs run again, every output compared with the one
    recorded at build time (``runtime.fidelity``); ``problems`` lists what keeps them from reproducing it."""
    from mmedge.runtime.fidelity import output_fidelity, reproduction_problems, session_outputs

    feeds = bundle.read_arrays(info["tensors"])
    want = bundle.read_arrays(info["outputs"])
    sess = open_session(bundle.model_path, ep, model=bundle.model_bytes)
    fidelity = output_fidelity(session_outputs(sess, feeds), want)
    return {
        "samples": min(len(v) for v in feeds.values()),
        "providers": sess.get_providers(),
        "inputs": info.get("inputs"),
        "fidelity": fidelity,
        "max_abs_diff": fidelity["max_abs_diff"],
        "problems": reproduction_problems(fidelity),
    }
