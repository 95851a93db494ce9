"""User datasets: (image, text, label) rows from a JSONL or CSV manifest, or MNIST-format IDX files (no torch).

A manifest names one row per line (JSONL) or per record (CSV with a header) with the columns ``image``,
``text`` and ``label``; image paths are relative to the manifest's folder and may not lead outside it.
Every image is decoded with Pillow when the manifest is read, so a bad row is reported by its row number
at once — or skipped with ``skip_bad_rows`` and counted — rather than failing in the middle of training.
An empty dataset, or one with a single class, is refused. Evaluation and calibration subsets are drawn
stratified by label and seeded.

Train, validation and test are split by image, never by row: a picture asked several questions, or stored
twice under two names (identical files count as one), lies in one split only, so the test split measures
pictures the model has never seen. ``data.group_by`` names a column whose rows stay together instead (the
same patient, scene or photo session), and a ``split`` column (train / val / test) is followed as written.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mmedge.data.digits_vqa import SPLITS, DigitsVQA, VQASplit, split_info
from mmedge.data.images import as_8bit, bombs_refused, decode_failures, upright
from mmedge.errors import InputPathError, MmedgeError, clip, closest, note

COLUMNS = ("image", "text", "label")
SPLIT_COLUMN = "split"  # optional: train / val / test per row, followed as written


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
    image_keys: tuple[str, ...] = ()  # a digest of each row's image file: identical files share one key
    groups: tuple[str, ...] | None = None  # each row's value of the group_by column, when one is named
    splits: tuple[str, ...] | None = None  # each row's split column value (train/val/test), when it has one

    def __len__(self) -> int:
        return len(self.images)

    def label_ids(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.asarray([index[x] for x in self.labels], dtype=np.int64)


def _read_text(path: Path) -> str:
    """A manifest or captions file as text (UTF-8, with or without a byte-order mark)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None


def _read_rows(path: Path) -> list[dict]:
    text = _read_text(path)
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
            except RecursionError:  # json recurses once per level of nesting
                rows.append({"__error__": "nests lists or objects too deeply to read", "__row__": n})
                continue
            rows.append(
                {**row, "__row__": n} if isinstance(row, dict) else {"__error__": "is not an object", "__row__": n}
            )
        return rows
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (_csv_header(reader, path) or [])]
        if missing:
            have = ", ".join(reader.fieldnames or []) or "none"
            raise DataError(
                f"{path} has no {', '.join(missing)} column(s) (it has: {have}); the header must name image, text "
                "and label."
            )
        return _csv_rows(reader, path)
    raise DataError(f"{path} is neither .jsonl nor .csv; write the manifest as JSON lines or CSV with a header.")


def _csv_header(reader: csv.DictReader, path: Path) -> list[str] | None:
    """The column names of a CSV file; a line the csv module cannot read is refused in a sentence."""
    try:
        return reader.fieldnames
    except csv.Error as exc:
        raise DataError(f"{path} is not readable as CSV ({exc}, line {reader.line_num}); save it as CSV.") from None


def _csv_rows(reader: csv.DictReader, path: Path) -> list[dict]:
    """The rows of a CSV file, numbered from 1; a line the csv module cannot read (a field over its size limit, for
    one) is refused in a sentence."""
    try:
        return [{**row, "__row__": n} for n, row in enumerate(reader, start=1)]
    except csv.Error as exc:
        raise DataError(f"{path} is not readable as CSV ({exc}, line {reader.line_num}); save it as CSV.") from None


def _image_key(image: Path, shown: str, seen: dict[Path, str | DataError]) -> str:
    """A digest of the image file once it is known to decode; each file is read and decoded once."""
    if image not in seen:
        from PIL import Image

        data = image.read_bytes()
        try:
            with bombs_refused(), Image.open(io.BytesIO(data)) as im:
                im.load()
            seen[image] = hashlib.blake2b(data, digest_size=16).hexdigest()
        except decode_failures() as exc:
            seen[image] = DataError(f"names the image '{shown}', which does not decode ({type(exc).__name__})")
    if isinstance(seen[image], DataError):
        raise seen[image]
    return seen[image]


def _check_row(
    row: dict, root: Path, known: set[str] | None, group_by: str | None, seen: dict
) -> tuple[Path, str, str, str, str | None, str | None]:
    """(image path, text, label, image key, group, split) of a row, or a DataError naming what is wrong with it."""
    if "__error__" in row:
        raise DataError(row["__error__"])
    missing = [c for c in COLUMNS if row.get(c) in (None, "")]
    if "text" in missing and row.get("text") == "":
        missing.remove("text")  # an empty question is a valid (missing-text) example
    if group_by is not None and row.get(group_by) in (None, ""):
        missing.append(group_by)
    if missing:
        raise DataError(f"has no {', '.join(missing)}")
    try:
        image = (root / str(row["image"])).resolve()
        inside = image.is_relative_to(root)
        exists = inside and image.is_file()
    except (ValueError, OSError) as exc:  # a NUL byte, or a name longer than the system takes
        shown = clip(repr(str(row["image"])), 60)
        raise DataError(f"names the image {shown}, which cannot be a file name ({type(exc).__name__})") from None
    if not inside:
        raise DataError(f"names the image '{row['image']}', which lies outside the dataset folder {root}")
    if not exists:
        raise DataError(f"names the image '{row['image']}', which does not exist")
    key = _image_key(image, str(row["image"]), seen)
    label = str(row["label"])
    if known is not None and label not in known:
        raise DataError(
            f"has the label '{label}', which is not one of the known labels ({', '.join(sorted(known))})"
            f"{closest(label, sorted(known))}"
        )
    split = row.get(SPLIT_COLUMN)
    if split is not None and str(split).strip() not in SPLITS:
        raise DataError(f"has the split '{split}', which is not one of {', '.join(SPLITS)}")
    group = None if group_by is None else str(row[group_by])
    return image, str(row["text"]), label, key, group, None if split is None else str(split).strip()


def read_manifest(
    path: str | Path, skip_bad_rows: bool = False, labels: list[str] | None = None, group_by: str | None = None
) -> UserDataset:
    """A dataset from a JSONL/CSV manifest; ``labels`` (optional) is the closed set every row must use, ``group_by``
    (optional) a column whose rows must stay in one split."""
    path = Path(path)
    if not path.is_file():
        raise InputPathError(f"dataset manifest {path} does not exist; pass a .jsonl or .csv file.")
    return _from_rows(_read_rows(path), path, path.parent.resolve(), skip_bad_rows, labels, group_by)


def _check_columns(rows_in: list[dict], path: Path, skip_bad_rows: bool, group_by: str | None) -> None:
    """Refuse at once a group_by column the manifest lacks, and list every bad split value in one sentence."""
    rows = [r for r in rows_in if "__error__" not in r]
    if group_by is not None and rows and not any(group_by in r for r in rows):
        have = sorted({k for r in rows for k in r if not k.startswith("__")})
        raise DataError(
            f"{path.name} has no '{group_by}' column to group by (it has: {', '.join(have)}); name one of its "
            "columns in data.group_by."
        )
    if not any(SPLIT_COLUMN in r for r in rows):
        return
    for r in rows:  # with a split column, every row must say its split (a missing or null one is a bad value)
        if r.get(SPLIT_COLUMN) is None:
            r[SPLIT_COLUMN] = ""
    bad = [(r["__row__"], r[SPLIT_COLUMN]) for r in rows if str(r[SPLIT_COLUMN]).strip() not in SPLITS]
    if bad and not skip_bad_rows:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        listed = ", ".join(f"{n} ('{v}')" for n, v in bad[:10]) + more
        raise DataError(
            f"{path.name} has split values other than {', '.join(SPLITS)} in row(s) {listed}; write train, val or "
            "test in its split column, or pass --skip-bad-rows to leave those rows out."
        )


def _from_rows(
    rows_in: list[dict],
    path: Path,
    root: Path,
    skip_bad_rows: bool,
    labels: list[str] | None,
    group_by: str | None = None,
) -> UserDataset:
    _check_columns(rows_in, path, skip_bad_rows, group_by)
    known = set(labels) if labels is not None else None
    images, texts, names, rows, keys, groups, splits, skipped = [], [], [], [], [], [], [], []
    seen: dict = {}  # image path -> digest or DataError: a picture asked many questions is decoded once
    for row in rows_in:
        try:
            image, text, label, key, group, split = _check_row(row, root, known, group_by, seen)
        except DataError as exc:
            skipped.append({"row": row["__row__"], "reason": str(exc)})
            continue
        images.append(image)
        texts.append(text)
        names.append(label)
        rows.append(row["__row__"])
        keys.append(key)
        groups.append(group)
        splits.append(split)
    if skipped and not skip_bad_rows:
        raise _bad_rows(skipped, path)
    ds = UserDataset(
        root,
        tuple(images),
        tuple(texts),
        tuple(names),
        tuple(rows),
        (),
        tuple(skipped),
        tuple(keys),
        tuple(groups) if group_by is not None else None,
        tuple(splits) if any(s is not None for s in splits) else None,
    )
    return _checked(ds, path)


SHOWN_BAD_ROWS = 20  # bad rows named in one error; the rest are counted


def _bad_rows(bad: list[dict], path: Path) -> DataError:
    """One error naming every bad row (up to SHOWN_BAD_ROWS, then the count), so a file is fixed in one pass."""
    fix = "pass --skip-bad-rows to leave bad rows out (they are counted in the results and the bundle's manifest)"
    if len(bad) == 1:
        return DataError(f"row {bad[0]['row']} of {path.name} {bad[0]['reason']}; fix the row, or {fix}.")
    listed = "; ".join(f"row {b['row']} {b['reason']}" for b in bad[:SHOWN_BAD_ROWS])
    more = f"; and {len(bad) - SHOWN_BAD_ROWS:,} more" if len(bad) > SHOWN_BAD_ROWS else ""
    return DataError(f"{path.name} has {len(bad):,} bad rows: {listed}{more}; fix them, or {fix}.")


def _checked(ds: UserDataset, source: Path) -> UserDataset:
    if len(ds) == 0:
        extra = f" ({len(ds.skipped)} bad rows were skipped)" if ds.skipped else ""
        raise DataError(f"{source} has no usable examples{extra}; a dataset needs rows with an image, text and label.")
    classes = tuple(sorted(set(ds.labels)))
    if len(classes) < 2:
        raise DataError(
            f"{source} has a single class ('{classes[0]}'); a classifier needs examples of at least two labels."
        )
    return replace(ds, classes=classes)


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
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} has an IDX header of {ndim} dimensions that the file does not hold; it is damaged.")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):  # Python integers: absurd dimensions cannot overflow
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


def read_image_folder(
    folder: str | Path, skip_bad_rows: bool = False, labels: list[str] | None = None, group_by: str | None = None
) -> UserDataset:
    """A dataset from ``FOLDER/<label>/<image>`` plus a captions file in FOLDER that gives each image its text.

    The captions file is ``captions.jsonl`` ({"image": "cat/1.png", "text": "..."} per line), ``captions.csv``
    (header image,text) or ``captions.tsv`` (image<TAB>text, no header). The label is the image's sub-folder.
    A JSONL or CSV captions file may carry a split column and the group_by column, as a manifest does.
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
        for n, line in enumerate(_read_text(path).splitlines(), start=1):
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
    return _from_rows(rows, path, folder.resolve(), skip_bad_rows, labels, group_by)


def _read_csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    reader = csv.DictReader(_read_text(path).splitlines())
    missing = [c for c in columns if c not in (_csv_header(reader, path) or [])]
    if missing:
        raise DataError(f"{path} has no {', '.join(missing)} column(s); its header must name {', '.join(columns)}.")
    return _csv_rows(reader, path)


def decode_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) pixels of an image file (already checked to decode), turned upright as its EXIF says."""
    from PIL import Image

    with bombs_refused(), Image.open(path) as im:
        return np.asarray(as_8bit(upright(im)).convert("RGB"), dtype=np.uint8)


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
    """train/val/test splits of a user dataset (or fashion-vqa): by image (or group), stratified by label, seeded."""
    if cfg.name == "fashion-vqa":
        if not FASHION_MNIST_DIR.is_dir():
            raise InputPathError(
                f"the fashion-vqa dataset reads {FASHION_MNIST_DIR}, which is not on this machine; install "
                "Debian's dataset-fashion-mnist package (apt install dataset-fashion-mnist) or use digits-vqa."
            )
        return idx_vqa(FASHION_MNIST_DIR, FASHION_CLASSES, cfg)
    path = Path(cfg.path)
    group_by = getattr(cfg, "group_by", None)
    if path.is_dir() and any(find_idx(path, n) for pair in IDX_NAMES.values() for n in pair):
        if group_by is not None:
            raise DataError(
                f"{path} holds IDX files, which have no columns to group by; remove data.group_by (IDX images are "
                "split by image)."
            )
        names = cfg.labels or tuple(str(i) for i in range(10))
        return idx_vqa(path, tuple(names), cfg)
    if path.is_dir():
        ds = read_image_folder(path, cfg.skip_bad_rows, cfg.labels, group_by)
    elif path.is_file():
        ds = read_manifest(path, cfg.skip_bad_rows, cfg.labels, group_by)
    else:
        raise InputPathError(
            f"dataset {path} does not exist; pass a .jsonl/.csv manifest, an image folder with a captions file, "
            "or a folder of MNIST-format IDX files."
        )
    return manifest_vqa(ds, cfg, str(path))


def manifest_vqa(ds: UserDataset, cfg, source: str) -> DigitsVQA:
    """Splits of a read manifest: whole images (or whole groups) go to one split, each image decoded once."""
    labels = ds.label_ids()  # (N,) one per row (question)
    keys, image_of_row = np.unique(np.asarray(ds.image_keys), return_inverse=True)  # identical files: one image
    image_label = _rarest(image_of_row, labels, len(keys))  # (M,) the class an image shows, when it has one label
    if ds.groups is None:
        unit_of_row, noun, by = image_of_row, "image", "image (identical files count as one)"
    else:
        values, unit_of_row = np.unique(np.asarray(ds.groups), return_inverse=True)
        noun, by = "group", f"the '{cfg.group_by}' column (the rows of one value stay in one split)"
        _same_within(image_of_row, unit_of_row, ds, source, "image", f"'{cfg.group_by}' value", lambda u: values[u])
    n_units = int(unit_of_row.max()) + 1
    strata = _rarest(unit_of_row, labels, n_units)  # (units,) the stratum of each image (or group)
    rng = np.random.default_rng(cfg.seed)
    pct = "{:g} %".format
    if ds.splits is None:
        test_u, val_u, train_u = _draw(np.arange(n_units), strata, (cfg.test_fraction, cfg.val_fraction), rng)
        rule = (
            f"by {by}, stratified by label (an image's rarest answer), seeded (seed {cfg.seed}): "
            f"{pct(cfg.test_fraction * 100)} for test, "
            f"{pct(cfg.val_fraction * 100)} for validation, the rest train"
        )
        if len(test_u) == 0 or len(train_u) == 0:
            raise DataError(
                f"{source} has too few {noun}s to hold out a test split (a label needs 3 or more {noun}s); add "
                "examples."
            )
    else:
        split_of_row = np.asarray([SPLITS.index(s) for s in ds.splits])
        _same_within(unit_of_row, split_of_row, ds, source, noun, "split", lambda k: SPLITS[k])
        split_of_unit = np.zeros(n_units, np.int64)
        split_of_unit[unit_of_row] = split_of_row
        train_u, val_u, test_u = (np.flatnonzero(split_of_unit == k) for k in range(len(SPLITS)))
        rule = f"as the manifest's split column says (every {noun} in one split)"
        if len(val_u) == 0 and len(train_u) > 0:  # early stopping needs a validation split: drawn from train
            val_u, train_u = _draw(train_u, strata[train_u], (cfg.val_fraction,), rng)
            rule += (
                f"; validation drawn from its train rows by {noun}, stratified by label, seeded (seed {cfg.seed}): "
                f"{pct(cfg.val_fraction * 100)}"
            )
        for name, units in (("train", train_u), ("test", test_u)):
            if len(units) == 0:
                raise DataError(f"{source} has no row in the {name} split; mark some rows {name} in its split column.")
    pictures = np.empty(len(keys), dtype=object)  # (M,) uint8 (H, W, 3) arrays of any size
    for m, row in enumerate(np.unique(image_of_row, return_index=True)[1]):
        pictures[m] = decode_rgb(ds.images[row])
    fams = np.zeros(len(ds), np.int64)

    def split(units: np.ndarray) -> VQASplit:
        rows = np.flatnonzero(np.isin(unit_of_row, units))  # in manifest order
        shown = np.unique(image_of_row[rows])  # this split's own images: no other split holds them
        return VQASplit(
            pictures[shown],
            image_label[shown],
            np.searchsorted(shown, image_of_row[rows]),
            tuple(ds.texts[i] for i in rows),
            labels[rows],
            fams[rows],
            ds.classes,
            ("all",),
        )

    splits = {"train": split(train_u), "val": split(val_u), "test": split(test_u)}
    groups = None if ds.groups is None else {"train": len(train_u), "val": len(val_u), "test": len(test_u)}
    info = split_info(rule, splits, groups)
    if ds.skipped:  # one line; the rows and reasons are in the results and the bundle's manifest
        n, name = len(ds.skipped), Path(source).name
        rows = ", ".join(str(b["row"]) for b in ds.skipped[:SHOWN_BAD_ROWS])
        more = f" and {n - SHOWN_BAD_ROWS:,} more" if n > SHOWN_BAD_ROWS else ""
        counted = f"{n:,} bad rows of {name} were" if n > 1 else f"1 bad row of {name} was"
        _note(f"{counted} skipped (--skip-bad-rows): row(s) {rows}{more}")
    if getattr(cfg, "labels", None) is None:
        warning = rare_labels(splits["train"].labels, ds.classes)
        if warning:
            _note(warning)
    return DigitsVQA(**splits, source=source, seed=cfg.seed, skipped=ds.skipped, split_info=info)


MIN_EXAMPLES = 5  # a label with fewer training examples than this is named, as a likely typo or an unlearnable class


def rare_labels(train_labels: np.ndarray, classes: tuple[str, ...]) -> str | None:
    """A warning naming the labels with fewer than MIN_EXAMPLES training examples, or None.

    Without data.labels the classes are the labels the rows use, so a typo ('rde' for 'red') becomes a class of
    its own; the warning names each rare label with the common label it resembles."""
    counts = np.bincount(train_labels, minlength=len(classes))
    common = [c for c, n in zip(classes, counts, strict=True) if n >= MIN_EXAMPLES]
    rare = [(c, int(n)) for c, n in zip(classes, counts, strict=True) if n < MIN_EXAMPLES]
    if not rare:
        return None
    listed = ", ".join(f"'{c}' ({n}{closest(c, common).replace(' (', '; ').rstrip(')')})" for c, n in rare)
    return (
        f"{len(rare)} label(s) have fewer than {MIN_EXAMPLES} training examples: {listed}; a misspelt label becomes "
        "a class of its own, so fix it in the data, or declare the labels in data.labels to refuse unknown ones"
    )


def _note(text: str) -> None:
    note(f"{text}.")


def _rarest(unit_of_row: np.ndarray, labels: np.ndarray, n_units: int) -> np.ndarray:
    """(n_units,) each unit's rarest label over the whole dataset (ties: the lowest label id).

    With one label per image this is the image's label. With many questions per image the common answers
    (yes, no) would put every image in one stratum; the rarest answer is what must reach each split."""
    total = np.bincount(labels)
    width = len(total)
    pairs = np.unique(unit_of_row * width + labels)
    units, label = np.divmod(pairs, width)
    order = np.lexsort((label, total[label], units))  # per unit: the rarest label first, then the lowest id
    first = np.unique(units[order], return_index=True)[1]
    out = np.zeros(n_units, np.int64)
    out[units[order][first]] = label[order][first]
    return out


def _same_within(owner, value, ds: UserDataset, source: str, noun: str, column: str, show) -> None:
    """Refuse an image (or group) whose rows carry two values (splits, groups): it would be trained and tested on."""
    order = np.argsort(owner, kind="stable")
    starts = np.flatnonzero(np.r_[True, owner[order][1:] != owner[order][:-1]])
    mixed = np.flatnonzero(np.minimum.reduceat(value[order], starts) != np.maximum.reduceat(value[order], starts))
    if len(mixed) == 0:
        return
    rows = order[starts[mixed[0]] : (starts[mixed[0] + 1] if mixed[0] + 1 < len(starts) else len(order))]
    a, b = rows[0], rows[np.flatnonzero(value[rows] != value[rows[0]])[0]]
    what = f"'{ds.images[a].relative_to(ds.root)}'" if noun == "image" else f"'{ds.groups[a]}'"
    raise DataError(
        f"{source}: the {noun} {what} has the {column} '{show(value[a])}' in row {ds.rows[a]} but "
        f"'{show(value[b])}' in row {ds.rows[b]}; give all its rows the same {column}, so that no image is both "
        "trained and tested on."
    )


def _draw(units: np.ndarray, strata: np.ndarray, fractions: tuple[float, ...], rng) -> list[np.ndarray]:
    """``units`` cut into one part per fraction plus the rest, every stratum contributing its share (at least one
    unit each); a stratum with too few units to give each part one goes wholly to the rest. Seeded by ``rng``."""
    parts: list[list] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(strata):
        mine = rng.permutation(units[strata == c])
        if len(mine) > len(fractions):
            cuts, start = [], 0
            for f in fractions:
                start += min(max(1, round(len(mine) * f)), len(mine) - start - 1)  # the rest keeps one
                cuts.append(start)
            chunks = np.split(mine, cuts)
        else:
            chunks = [mine[:0]] * len(fractions) + [mine]
        for part, chunk in zip(parts, chunks, strict=True):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, np.int64)) for p in parts]


# Questions about a labelled picture: whether it shows a class (yes/no, balanced) or what it shows (the class).
_IS = ("is this a {c}?", "does the image show a {c}?", "is it a {c}?")
_WHAT = ("what is this?", "what does the image show?", "what is shown?")


def idx_vqa(folder: Path, class_names: tuple[str, ...], cfg) -> DigitsVQA:
    """A VQA set from labelled IDX pictures: per image one yes/no identity question and one naming question.

    Split by image, stratified by class, seeded; each split holds its own pictures."""
    images, digits = read_idx_folder(folder)
    if digits.max() >= len(class_names):
        raise DataError(
            f"{folder} has labels up to {digits.max()} but only {len(class_names)} label names; set data.labels."
        )
    keep = stratified_subset(digits, cfg.max_images, cfg.seed)
    images, digits = images[keep], digits[keep]
    classes = ("no", "yes", *class_names)
    rng = np.random.default_rng(cfg.seed)
    test, val, train = _draw(np.arange(len(digits)), digits, (cfg.test_fraction, cfg.val_fraction), rng)
    if len(test) == 0 or len(train) == 0:
        raise DataError(f"{folder} has too few images to hold out a test split (a class needs 3 or more); add images.")
    rng = np.random.default_rng(cfg.seed + 1)

    def split(rows: np.ndarray) -> VQASplit:
        index, texts, labels, fams = [], [], [], []
        for k, i in enumerate(rows):
            other = int(rng.choice([c for c in range(len(class_names)) if c != digits[i]]))
            yes = bool(rng.random() < 0.5)
            shown = int(digits[i]) if yes else other
            texts += [_IS[rng.integers(len(_IS))].format(c=class_names[shown]), _WHAT[rng.integers(len(_WHAT))]]
            labels += [1 if yes else 0, 2 + int(digits[i])]
            fams += [0, 1]
            index += [k, k]
        return VQASplit(
            images[rows], digits[rows], np.asarray(index, np.int64), tuple(texts), np.asarray(labels, np.int64),
            np.asarray(fams, np.int64), classes, ("identity", "naming"),
        )  # fmt: skip

    splits = {"train": split(train), "val": split(val), "test": split(test)}
    rule = (
        f"by image, stratified by class, seeded (seed {cfg.seed}): {cfg.test_fraction * 100:g} % for test, "
        f"{cfg.val_fraction * 100:g} % for validation, the rest train (of {len(digits):,} images)"
    )
    return DigitsVQA(**splits, source=str(folder), seed=cfg.seed, split_info=split_info(rule, splits))
