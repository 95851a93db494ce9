import gzip
import json

import numpy as np
import pytest
from PIL import Image

from mmedge.data.user import DataError, read_idx, read_manifest, stratified_subset


def _dataset(tmp_path, rows, fmt="jsonl"):
    (tmp_path / "img").mkdir(exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "img" / name)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        lines = ["image,text,label"] + [f"{r['image']},{r['text']},{r['label']}" for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


GOOD = [
    {"image": "img/a.png", "text": "a cat", "label": "cat"},
    {"image": "img/b.png", "text": "a dog", "label": "dog"},
    {"image": "img/c.png", "text": "", "label": "dog"},
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_manifest_rows_resolve_inside_the_folder_and_decode(tmp_path, fmt):
    ds = read_manifest(_dataset(tmp_path, GOOD, fmt))
    assert len(ds) == 3 and ds.classes == ("cat", "dog") and ds.label_ids().tolist() == [0, 1, 1]
    assert ds.images[0] == (tmp_path / "img" / "a.png").resolve() and ds.texts[2] == "" and ds.rows == (1, 2, 3)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"image": "../outside.png", "text": "x", "label": "cat"},
            "row 2 of data.jsonl names the image '../outside.png', which lies outside",
        ),
        (
            {"image": "img/broken.png", "text": "x", "label": "cat"},
            "row 2 of data.jsonl names the image 'img/broken.png', which does not decode",
        ),
        ({"image": "img/none.png", "text": "x", "label": "cat"}, "which does not exist"),
        ({"image": "img/a.png", "text": "x"}, "row 2 of data.jsonl has no label"),
    ],
)
def test_a_bad_row_is_named_by_number_or_skipped_and_counted(tmp_path, bad, message):
    (tmp_path / "outside.png").write_bytes(b"")
    path = _dataset(tmp_path, [GOOD[0], bad, *GOOD[1:]])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_manifest(path)
    ds = read_manifest(path, skip_bad_rows=True)
    assert len(ds) == 3 and [s["row"] for s in ds.skipped] == [2] and ds.rows == (1, 3, 4)


def test_unknown_label_empty_and_one_class_datasets_are_refused(tmp_path):
    with pytest.raises(DataError, match="row 1 of data.jsonl has the label 'cat', which is not one of the known"):
        read_manifest(_dataset(tmp_path, GOOD), labels=["dog", "bird"])
    with pytest.raises(DataError, match="single class"):
        read_manifest(_dataset(tmp_path, GOOD[1:]))
    with pytest.raises(DataError, match="no usable examples"):
        read_manifest(_dataset(tmp_path, [{"image": "img/broken.png", "text": "x", "label": "a"}]), skip_bad_rows=True)
    (tmp_path / "d.csv").write_text("picture,text,label\n")
    with pytest.raises(DataError, match="has no image column"):
        read_manifest(tmp_path / "d.csv")


def test_idx_files_read_like_mnist_and_a_truncated_one_is_refused(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    assert (read_idx(tmp_path / "x-idx3-ubyte.gz") == images).all()
    (tmp_path / "t-idx3-ubyte").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t-idx3-ubyte")


def test_stratified_subset_keeps_every_label_in_its_share_and_is_seeded():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    rows = stratified_subset(labels, 20, seed=3)
    counts = np.bincount(labels[rows], minlength=3)
    assert counts.tolist() == [18, 2, 1]
    assert (rows == stratified_subset(labels, 20, seed=3)).all() and not (
        rows == stratified_subset(labels, 20, seed=4)
    ).all()
