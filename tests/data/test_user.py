import gzip
import json

import numpy as np
import pytest
from PIL import Image

from mmedge.data.user import DataError, read_idx, read_manifest, stratified_subset
from mmedge.errors import InputPathError


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


def _idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_idx_folder_becomes_a_vqa_set_with_identity_and_naming_questions(tmp_path):
    from mmedge.data import DataConfig, load_dataset

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (60, 28, 28)))
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    data = load_dataset(DataConfig(name="user", path=tmp_path, labels=("cat", "dog", "bird")))
    assert data.classes == ("no", "yes", "cat", "dog", "bird")
    test = data.test
    assert test.family_names == ("identity", "naming") and len(test) == 2 * len(np.unique(test.image_index))
    for text, label, fam, img in zip(test.texts, test.labels, test.families, test.image_index, strict=True):
        shown = ("cat", "dog", "bird")[test.digits[img]]
        if fam == 1:  # naming: the answer is the class
            assert data.classes[label] == shown
        else:  # identity: yes exactly when the question names the shown class
            assert (data.classes[label] == "yes") == (shown in text)
    assert np.bincount(test.digits[np.unique(test.image_index)]).tolist() == [4, 4, 4]  # stratified


def test_image_folder_with_captions_takes_the_label_from_the_sub_folder(tmp_path):
    from mmedge.data import DataConfig, load_dataset
    from mmedge.data.images import ImagePreprocessing

    lines = []
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for k in range(5):
            Image.fromarray(np.full((10, 12, 3), 40 * k, np.uint8)).save(tmp_path / label / f"{k}.png")
            lines.append(f"{label}/{k}.png\ta {label} number {k}")
    (tmp_path / "captions.tsv").write_text("\n".join(lines) + "\n")
    data = load_dataset(DataConfig(name="user", path=tmp_path))
    assert data.classes == ("cat", "dog") and len(data.train) + len(data.val) + len(data.test) == 10
    row = data.test.texts.index(next(t for t in data.test.texts if t.startswith("a dog")))
    assert data.classes[data.test.labels[row]] == "dog"
    pixels = data.test.pixels(np.array([row]), ImagePreprocessing(height=16, width=16, channels=3))
    assert pixels.shape == (1, 3, 16, 16) and pixels.dtype == np.float32 and pixels.max() <= 1.0
    (tmp_path / "captions.tsv").write_text("stray.png\tno label folder\n" + "\n".join(lines))
    with pytest.raises(DataError, match="not inside a label sub-folder"):
        load_dataset(DataConfig(name="user", path=tmp_path, seed=1))


def test_fashion_vqa_names_the_package_when_absent_and_user_needs_a_path(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from mmedge.data import DataConfig, load_dataset, user

    monkeypatch.setattr(user, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(InputPathError, match="apt install dataset-fashion-mnist"):
        load_dataset(DataConfig(name="fashion-vqa"))
    with pytest.raises(ValidationError, match="data.path is needed"):
        DataConfig(name="user")
