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
    seen = {n: {im.tobytes() for im in getattr(data, n).images} for n in ("train", "val", "test")}
    assert not seen["train"] & seen["test"] and not seen["val"] & seen["test"]  # split by image
    assert data.split_info.images == {"train": 42, "val": 6, "test": 12}
    assert data.split_info.rows == {"train": 84, "val": 12, "test": 24}
    assert data.split_info.rule.startswith("by image, stratified by class, seeded (seed 0)")


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


def _vqa_manifest(tmp_path, n_images=30, questions=5, extra=None, fmt="jsonl"):
    """A VQA-style manifest: ``n_images`` distinct pictures of 3 classes, each asked ``questions`` questions whose
    answers vary (yes/no, then the class); ``extra(i, q)`` adds columns to the row of image i, question q."""
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(n_images):
        name = f"img/{i}.png"
        Image.fromarray(np.full((6, 6, 3), 5 + 7 * i, np.uint8)).save(tmp_path / name)  # every picture differs
        cls = ("cat", "dog", "bird")[i % 3]
        for q in range(questions):
            label = cls if q == 0 else ("yes" if (i + q) % 2 else "no")
            rows.append({"image": name, "text": f"question {q}", "label": label, **(extra(i, q) if extra else {})})
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        cols = list(rows[0])
        path.write_text("\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]) + "\n")
    return path


def _pictures(split):
    return {split.images[i].tobytes() for i in range(len(split.images))}


def test_user_test_split_shares_no_image_with_train_when_each_image_has_many_questions(tmp_path):
    from mmedge.data import DataConfig, load_dataset

    path = _vqa_manifest(tmp_path)
    # the same picture stored a second time under another name, asked another question
    (tmp_path / "img" / "copy.png").write_bytes((tmp_path / "img" / "0.png").read_bytes())
    with path.open("a") as fh:
        fh.write(json.dumps({"image": "img/copy.png", "text": "again", "label": "cat"}) + "\n")
    data = load_dataset(DataConfig(name="user", path=path, seed=2))
    assert not _pictures(data.train) & _pictures(data.test) and not _pictures(data.val) & _pictures(data.test)
    assert not _pictures(data.train) & _pictures(data.val)
    assert len(data.train) + len(data.val) + len(data.test) == 30 * 5 + 1  # no row lost
    info = data.split_info
    assert info.images == {"train": 21, "val": 3, "test": 6}  # 10 images per class: 2 test, 1 val each
    assert info.rows == {"train": 106, "val": 15, "test": 30} and info.groups is None
    assert info.rule == (
        "by image (identical files count as one), stratified by label (an image's rarest answer), seeded (seed 2): "
        "20 % for test, 10 % for validation, the rest train"
    )
    # every class keeps its share of the test images (stratified by each image's rarest answer)
    assert sorted(data.classes[c] for c in data.test.digits) == ["bird", "bird", "cat", "cat", "dog", "dog"]
    assert {data.test.texts[i] for i in range(len(data.test))} == {f"question {q}" for q in range(5)}


def test_user_split_differs_across_seeds_and_repeats_for_one(tmp_path):
    from mmedge.data import DataConfig, load_dataset

    path = _vqa_manifest(tmp_path)
    a, b, c = (load_dataset(DataConfig(name="user", path=path, seed=s)) for s in (0, 0, 1))
    assert _pictures(a.test) == _pictures(b.test) and _pictures(a.test) != _pictures(c.test)


def test_group_by_keeps_every_group_in_one_split(tmp_path):
    from mmedge.data import DataConfig, load_dataset

    path = _vqa_manifest(tmp_path, n_images=36, questions=2, extra=lambda i, q: {"scene": f"s{i // 2}"})
    data = load_dataset(DataConfig(name="user", path=path, group_by="scene"))
    scene_of = {(5 + 7 * i): f"s{i // 2}" for i in range(36)}  # picture value -> its scene
    scenes = {n: {scene_of[int(im[0, 0, 0])] for im in getattr(data, n).images} for n in ("train", "val", "test")}
    assert not scenes["train"] & scenes["test"] and not scenes["val"] & scenes["test"]
    assert not scenes["train"] & scenes["val"] and len(scenes["test"]) >= 3
    info = data.split_info
    assert info.groups == {n: len(scenes[n]) for n in ("train", "val", "test")} and sum(info.groups.values()) == 18
    assert info.images["test"] == 2 * info.groups["test"] and "the 'scene' column" in info.rule


def test_group_by_refuses_a_missing_column_and_an_image_in_two_groups(tmp_path):
    from pydantic import ValidationError

    from mmedge.data import DataConfig, load_dataset

    path = _vqa_manifest(tmp_path, extra=lambda i, q: {"scene": f"s{i}"})
    with pytest.raises(DataError, match="data.jsonl has no 'patient' column to group by"):
        load_dataset(DataConfig(name="user", path=path, group_by="patient"))
    path = _vqa_manifest(tmp_path, extra=lambda i, q: {"scene": f"s{i}-{q}" if i == 4 else f"s{i}"})
    with pytest.raises(DataError, match="the image 'img/4.png' has the 'scene' value 's4-0' in row 21 but 's4-1'"):
        load_dataset(DataConfig(name="user", path=path, group_by="scene", seed=1))
    with pytest.raises(ValidationError, match="data.group_by names a manifest column"):
        DataConfig(name="digits-vqa", group_by="scene")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_split_column_is_followed_as_written(tmp_path, fmt):
    from mmedge.data import DataConfig, load_dataset

    def where(i, q):
        return {"split": "test" if i < 6 else "val" if i < 9 else "train"}

    data = load_dataset(DataConfig(name="user", path=_vqa_manifest(tmp_path, extra=where, fmt=fmt)))
    values = {n: {int(im[0, 0, 0]) for im in getattr(data, n).images} for n in ("train", "val", "test")}
    assert values == {
        "test": {5 + 7 * i for i in range(6)},
        "val": {5 + 7 * i for i in range(6, 9)},
        "train": {5 + 7 * i for i in range(9, 30)},
    }
    assert data.split_info.rule == "as the manifest's split column says (every image in one split)"
    assert data.split_info.rows == {"train": 105, "val": 15, "test": 30}


def test_split_column_without_val_rows_draws_val_from_train_by_image(tmp_path):
    from mmedge.data import DataConfig, load_dataset

    path = _vqa_manifest(tmp_path, extra=lambda i, q: {"split": "test" if i < 6 else "train"})
    data = load_dataset(DataConfig(name="user", path=path))
    assert len(data.test.images) == 6 and len(data.val.images) == 3 and len(data.train.images) == 21
    assert not _pictures(data.train) & _pictures(data.val)
    assert "validation drawn from its train rows by image" in data.split_info.rule


def test_bad_split_values_are_refused_in_one_sentence_listing_the_rows(tmp_path):
    from mmedge.data import DataConfig, load_dataset

    bad = {(2, 0): "dev", (3, 1): "Test", (4, 0): "", (5, 2): None}
    path = _vqa_manifest(tmp_path, extra=lambda i, q: {"split": bad.get((i, q), "test" if i < 6 else "train")})
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="user", path=path))
    message = str(err.value)
    assert message == (
        "data.jsonl has split values other than train, val, test in row(s) 11 ('dev'), 17 ('Test'), 21 (''), 28 (''); "
        "write train, val or test in its split column, or pass --skip-bad-rows to leave those rows out."
    )
    data = load_dataset(DataConfig(name="user", path=path, skip_bad_rows=True))
    assert [s["row"] for s in data.skipped] == [11, 17, 21, 28] and "has the split 'dev'" in data.skipped[0]["reason"]
    assert data.split_info.rows == {"train": 105, "val": 15, "test": 26}  # val: 3 of the 24 train images


def test_split_column_refuses_an_image_in_two_splits(tmp_path):
    from mmedge.data import DataConfig, load_dataset

    path = _vqa_manifest(tmp_path, extra=lambda i, q: {"split": "test" if i < 6 or (i == 7 and q == 3) else "train"})
    with pytest.raises(DataError, match="the image 'img/7.png' has the split 'train' in row 36 but 'test' in row 39"):
        load_dataset(DataConfig(name="user", path=path))
