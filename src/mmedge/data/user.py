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
    root = path.parent.resolve()
    known = set(labels) if labels is not None else None
    images, texts, names, rows, skipped = [], [], [], [], []
    for row in _read_rows(path):
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
