"""User datasets: (image, text, label) rows from a JSONL or CSV manifest, or MNIST-format IDX files (no torch).

A manifest names one row per line (JSONL) or per record (CSV with a header) with the columns ``image``,
``text`` and ``label``; image paths are relative to the manifest's folder and may not lead outside it.
Every image is decoded with Pillow when the manifest is read, so a bad row is reported by its row number
at once — or skipped with ``skip_bad_rows`` and counted — rather than failing in the middle of training.
An empty dataset, or one with a single class, is refused. Evaluation and calibration subsets are drawn
stratified by label and seeded.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmedge.data.digits_vqa import DigitsVQA, VQASplit
from mmedge.errors import InputPathError, MmedgeError

COLUMNS = ("image", "text", "label")


class DataError(MmedgeError):
    """A dataset that cannot be used as given (bad rows, escaping paths, too few classes)."""


@dataclass(frozen=True)
class UserDataset:
    root: Path
    images: tuple[Path, ...]  # resolved, inside root, decodable
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    rows: tuple[int, ...]  # the manifest row each example came from (1 = first data row)
    classes: tuple[str, ...]  # sorted label names; a label's index is its class id
    skipped: tuple[dict, ...] = field(default=())  # {"row", "reason"} for rows left out with skip_bad_rows

    def __len__(self) -> int:
        return len(self.images)

    def label_ids(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([index[x] for x in self.labels], dtype=np.int64)


def _read_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append({"__error__": f"is not valid JSON ({exc.msg})", "__row__": n})
                continue
            rows.append(
                {**row, "__row__": n} if isinstance(row, dict) else {"__error__": "is not an object", "__row__": n}
            )
        return rows
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            have = ", ".join(reader.fieldnames or []) or "none"
            raise DataError(
                f"{path} has no {', '.join(missing)} column(s) (it has: {have}); the header must name image, text "
                "and label."
            )
        return [{**row, "__row__": n} for n, row in enumerate(reader, start=1)]
    raise DataError(f"{path} is neither .jsonl nor .csv; write the manifest as JSON lines or CSV with a header.")


def _check_row(row: dict, root: Path, known: set[str] | None) -> tuple[Path, str, str]:
    """(image path, text, label) of a row, or a DataError naming what is wrong with it."""
    if "__error__" in row:
        raise DataError(row["__error__"])
    missing = [c for c in COLUMNS if row.get(c) in (None, "")]
    if "text" in missing and row.get("text") == "":
        missing.remove("text")  # an empty question is a valid (missing-text) example
    if missing:
        raise DataError(f"has no {', '.join(missing)}")
    image = (root / str(row["image"])).resolve()
    if not image.is_relative_to(root):
        raise DataError(f"names the image '{row['image']}', which lies outside the dataset folder {root}")
    if not image.is_file():
        raise DataError(f"names the image '{row['image']}', which does not exist")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"names the image '{row['image']}', which does not decode ({type(exc).__name__})") from None
    label = str(row["label"])
    if known is not None and label not in known:
        raise DataError(f"has the label '{label}', which is not one of the known labels ({', '.join(sorted(known))})")
    return image, str(row["text"]), label


def read_manifest(path: str | Path, skip_bad_rows: bool = False, labels: list[str] | None = None) -> UserDataset:
    """A dataset from a JSONL/CSV manifest; ``labels`` (optional) is the closed set every row must use."""
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"dataset manifest {path} does not exist; pass a .jsonl or .csv file.")
    return _from_rows(_read_rows(path), path, path.parent.resolve(), skip_bad_rows, labels)


def _from_rows(
    rows_in: list[dict], path: Path, root: Path, skip_bad_rows: bool, labels: list[str] | None
) -> UserDataset:
    known = set(labels) if labels is not None else None
    images, texts, names, rows, skipped = [], [], [], [], []
    for row in rows_in:
        try:
            image, text, label = _check_row(row, root, known)
        except DataError as exc:
            if not skip_bad_rows:
                raise DataError(
                    f"row {row['__row__']} of {path.name} {exc}; fix the row, or pass --skip-bad-rows to leave bad "
                    "rows out (they are counted in the results)."
                ) from None
            skipped.append({"row": row["__row__"], "reason": str(exc)})
            continue
        images.append(image)
        texts.append(text)
        names.append(label)
        rows.append(row["__row__"])
    return _checked(UserDataset(root, tuple(images), tuple(texts), tuple(names), tuple(rows), (), tuple(skipped)), path)


def _checked(ds: UserDataset, source: Path) -> UserDataset:
    if len(ds) == 0:
        extra = f" ({len(ds.skipped)} bad rows were skipped)" if ds.skipped else ""
        raise DataError(f"{source} has no usable examples{extra}; a dataset needs rows with an image, text and label.")
    classes = tuple(sorted(set(ds.labels)))
    if len(classes) < 2:
        raise DataError(
            f"{source} has a single class ('{classes[0]}'); a classifier needs examples of at least two labels."
        )
    return UserDataset(ds.root, ds.images, ds.texts, ds.labels, ds.rows, classes, ds.skipped)


def read_idx(path: str | Path) -> np.ndarray:
    """An MNIST-format IDX array (optionally .gz): uint8 images (N, H, W) or labels (N,)."""
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"IDX file {path} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); pass MNIST-format files.")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {body.size} values but its header says {dims}; the file is truncated.")
    return body.reshape(dims)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row indices of a seeded subset of about ``n`` rows with every label in its share (at least one each)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    share = np.maximum(1, np.round(counts / counts.sum() * n).astype(int))
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=min(k, cnt), replace=False)
        for c, k, cnt in zip(classes, share, counts, strict=True)
    ]
    return np.sort(np.concatenate(picked))


CAPTION_FILES = ("captions.jsonl", "captions.csv", "captions.tsv")


def read_image_folder(folder: str | Path, skip_bad_rows: bool = False, labels: list[str] | None = None) -> UserDataset:
    """A dataset from ``FOLDER/<label>/<image>`` plus a captions file in FOLDER that gives each image its text.

    The captions file is ``captions.jsonl`` ({"image": "cat/1.png", "text": "..."} per line), ``captions.csv``
    (header image,text) or ``captions.tsv`` (image<TAB>text, no header). The label is the image's sub-folder.
    """
    folder = Path(folder)
    found = [folder / n for n in CAPTION_FILES if (folder / n).is_file()]
    if not found:
        raise DataError(
            f"image folder {folder} has no captions file; add one of {', '.join(CAPTION_FILES)} that maps each "
            "image path (relative to the folder) to its text."
        )
    path = found[0]
    if path.suffix == ".tsv":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip():
                image, sep, text = line.partition("\t")
                rows.append(
                    {"image": image, "text": text, "__row__": n} if sep else {"__error__": "has no tab", "__row__": n}
                )
    else:
        rows = _read_rows(path) if path.suffix == ".jsonl" else _read_csv_rows(path, ("image", "text"))
    for row in rows:  # the label is the first folder of the image path
        parts = Path(str(row.get("image") or "")).parts
        if "__error__" not in row and len(parts) < 2:
            row["__error__"] = f"names the image '{row.get('image')}', which is not inside a label sub-folder"
        elif "__error__" not in row:
            row["label"] = parts[0]
    return _from_rows(rows, path, folder.resolve(), skip_bad_rows, labels)


def _read_csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    reader = csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines())
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)} column(s); its header must name {', '.join(columns)}.")
    return [{**row, "__row__": n} for n, row in enumerate(reader, start=1)]


def decode_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) pixels of an image file (already checked to decode)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_folder(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All images (N, H, W) uint8 and labels (N,) of an MNIST-format folder (train and t10k files, .gz or not)."""
    folder = Path(folder)
    images, labels = [], []
    for images_name, labels_name in IDX_NAMES.values():
        ip, lp = find_idx(folder, images_name), find_idx(folder, labels_name)
        if ip is None or lp is None:
            continue
        im, lb = read_idx(ip), read_idx(lp)
        if im.ndim != 3 or lb.ndim != 1 or len(im) != len(lb):
            raise DataError(f"{ip.name} and {lp.name} in {folder} do not pair up (shapes {im.shape} and {lb.shape}).")
        images.append(im)
        labels.append(lb.astype(np.int64))
    if not images:
        raise DataError(
            f"{folder} holds no MNIST-format files; it needs train-images-idx3-ubyte(.gz) with "
            "train-labels-idx1-ubyte(.gz), or the t10k pair."
        )
    return np.concatenate(images), np.concatenate(labels)


def build_splits(cfg) -> DigitsVQA:
    """train/val/test splits of a user dataset (or fashion-vqa), stratified by label and seeded."""
    if cfg.name == "fashion-vqa":
        if not FASHION_MNIST_DIR.is_dir():
            raise InputPathError(
                f"the fashion-vqa dataset reads {FASHION_MNIST_DIR}, which is not on this machine; install "
                "Debian's dataset-fashion-mnist package (apt install dataset-fashion-mnist) or use digits-vqa."
            )
        return idx_vqa(FASHION_MNIST_DIR, FASHION_CLASSES, cfg)
    path = Path(cfg.path)
    if path.is_dir() and any(find_idx(path, n) for pair in IDX_NAMES.values() for n in pair):
        names = cfg.labels or tuple(str(i) for i in range(10))
        return idx_vqa(path, tuple(names), cfg)
    if path.is_dir():
        ds = read_image_folder(path, cfg.skip_bad_rows, cfg.labels)
    elif path.is_file():
        ds = read_manifest(path, cfg.skip_bad_rows, cfg.labels)
    else:
        raise InputPathError(
            f"dataset {path} does not exist; pass a .jsonl/.csv manifest, an image folder with a captions file, "
            "or a folder of MNIST-format IDX files."
        )
    labels = ds.label_ids()
    test, val, train = _stratified_split(labels, cfg.test_fraction, cfg.val_fraction, cfg.seed, str(path))
    images = np.empty(len(ds), dtype=object)
    images[:] = [decode_rgb(p) for p in ds.images]
    fams = np.zeros(len(ds), np.int64)

    def split(rows: np.ndarray) -> VQASplit:
        return VQASplit(
            images, labels, rows, tuple(ds.texts[i] for i in rows), labels[rows], fams[rows], ds.classes, ("all",)
        )

    return DigitsVQA(split(train), split(val), split(test), str(path), cfg.seed, ds.skipped)


def _stratified_split(labels: np.ndarray, test: float, val: float, seed: int, source: str):
    """(test, val, train) row indices: every label contributes its share to each split, seeded."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        # a label with fewer than 3 examples trains only; otherwise at least one example in test and in val
        n_test = max(1, round(len(rows) * test)) if len(rows) >= 3 else 0
        n_val = max(1, round(len(rows) * val)) if len(rows) >= 3 else 0
        for part, chunk in zip(parts, np.split(rows, [n_test, n_test + n_val]), strict=True):
            part.extend(chunk.tolist())
    if not parts[0] or not parts[2]:
        raise DataError(
            f"{source} has too few examples to hold out a test split (a label needs 3 or more); add examples."
        )
    return tuple(np.sort(np.asarray(p, np.int64)) for p in parts)


# Questions about a labelled picture: whether it shows a class (yes/no, balanced) or what it shows (the class).
_IS = ("is this a {c}?", "does the image show a {c}?", "is it a {c}?")
_WHAT = ("what is this?", "what does the image show?", "what is shown?")


def idx_vqa(folder: Path, class_names: tuple[str, ...], cfg) -> DigitsVQA:
    """A VQA set from labelled IDX pictures: per image one yes/no identity question and one naming question."""
    images, digits = read_idx_folder(folder)
    if digits.max() >= len(class_names):
        raise DataError(
            f"{folder} has labels up to {digits.max()} but only {len(class_names)} label names; set data.labels."
        )
    keep = stratified_subset(digits, cfg.max_images, cfg.seed)
    images, digits = images[keep], digits[keep]
    classes = ("no", "yes", *class_names)
    test, val, train = _stratified_split(digits, cfg.test_fraction, cfg.val_fraction, cfg.seed, str(folder))
    rng = np.random.default_rng(cfg.seed + 1)

    def split(rows: np.ndarray) -> VQASplit:
        index, texts, labels, fams = [], [], [], []
        for i in rows:
            other = int(rng.choice([c for c in range(len(class_names)) if c != digits[i]]))
            yes = bool(rng.random() < 0.5)
            shown = int(digits[i]) if yes else other
            texts += [_IS[rng.integers(len(_IS))].format(c=class_names[shown]), _WHAT[rng.integers(len(_WHAT))]]
            labels += [1 if yes else 0, 2 + int(digits[i])]
            fams += [0, 1]
            index += [i, i]
        return VQASplit(
            images, digits, np.asarray(index, np.int64), tuple(texts), np.asarray(labels, np.int64),
            np.asarray(fams, np.int64), classes, ("identity", "naming"),
        )  # fmt: skip

    return DigitsVQA(split(train), split(val), split(test), str(folder), cfg.seed)
