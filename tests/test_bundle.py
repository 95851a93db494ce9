import hashlib
import json
import shutil

import pytest

from mmedge.bundle.manifest import load_bundle
from mmedge.errors import BundleError, InputPathError
from mmedge.runtime.evaluate import evaluate_model
from tests.conftest import REFERENCE_BUNDLE


@pytest.fixture(scope="module")
def reference():
    return load_bundle(REFERENCE_BUNDLE)


def test_reference_bundle_checksums_verify(reference):
    assert reference.verify() == []
    files = set(reference.manifest["files"])
    assert {"model.onnx", "vocab.json", "report.md", "samples/samples.json", "samples/inputs.npz"} <= files


def test_reference_bundle_manifest_tells_an_app_how_to_feed_the_model(reference):
    m = reference.manifest
    assert m["schema_version"] == 1
    assert [i["name"] for i in m["inputs"]] == ["image", "input_ids", "attention_mask"]
    assert m["inputs"][1]["dynamic_axes"] == {"0": "batch", "1": "text_length"}
    img, text = m["preprocessing"]["image"], m["preprocessing"]["text"]
    assert (img["height"], img["width"], img["channels"]) == (28, 28, 1) and img["mean"] and img["std"]
    assert text["vocab_file"] == "vocab.json" and text["pad_id"] == 0 and text["unk_id"] == 1
    assert m["labels"][:2] == ["no", "yes"] and len(m["labels"]) == 12
    assert m["metrics"]["measured_on"]["cpu"] and m["metrics"]["latency"]["cpu"]["batches"]["1"]["p50_ms"] > 0


def test_reference_bundle_accuracy_matches_its_manifest(reference):
    metrics, _ = evaluate_model(reference.model_path, ablation=False)
    shipped = reference.manifest["metrics"]["accuracy"]["test"]["accuracy"]
    assert abs(metrics["test"]["accuracy"] - shipped) * 100 <= 0.5
    assert shipped >= 0.97


def test_reference_bundle_shows_the_model_needs_both_modalities(reference):
    acc = reference.manifest["metrics"]["accuracy"]
    assert acc["image_blanked"]["accuracy"] < acc["test"]["accuracy"] - 0.3
    assert acc["text_emptied"]["accuracy"] < acc["test"]["accuracy"] - 0.3


def test_tampered_bundle_is_refused(tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(REFERENCE_BUNDLE, copy)
    (copy / "vocab.json").write_text("{}")
    with pytest.raises(BundleError, match="vocab.json does not match its sha256"):
        load_bundle(copy)


def test_manifest_pointing_outside_the_bundle_is_refused(tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(REFERENCE_BUNDLE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["file"] = "../../outside.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(copy)
    with pytest.raises(BundleError, match="outside the bundle"):
        _ = bundle.model_path


def test_folder_without_manifest_is_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not an mmedge bundle"):
        load_bundle(tmp_path)
    with pytest.raises(InputPathError):
        load_bundle(tmp_path / "nope")


def test_manifest_naming_a_link_or_a_path_outside_is_refused_when_read(tmp_path):
    """Reads go through the folder opened once: a name with '..', an absolute name or a symbolic link (even one
    the checksum would accept) is refused, never followed out of the bundle."""
    copy = tmp_path / "b"
    shutil.copytree(REFERENCE_BUNDLE, copy)
    (copy / "vocab.json").unlink()
    (copy / "vocab.json").symlink_to(REFERENCE_BUNDLE / "vocab.json")  # same bytes, same sha256
    with pytest.raises(BundleError, match="vocab.json' is a symbolic link"):
        load_bundle(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in ("../digits-vqa/vocab.json", str(REFERENCE_BUNDLE / "vocab.json")):
        manifest["model"]["file"] = name
        (copy / "manifest.json").write_text(json.dumps(manifest))
        with load_bundle(copy, verify=False) as bundle, pytest.raises(BundleError, match="outside the bundle"):
            _ = bundle.model_bytes


VERSIONS = (REFERENCE_BUNDLE, REFERENCE_BUNDLE.parent / "digits-vqa-vit")  # two real bundles: cnn-lstm and vit


def _write(version, out, n: int) -> None:
    """Write ``version`` over the bundle ``out`` as a run does: a new folder beside it, swapped into place."""
    from mmedge.runtime.session import replace_folder

    new = out.with_name(f".{out.name}.new-{n}")
    shutil.copytree(version, new)
    replace_folder(new, out)


def _needs_exchange(tmp_path) -> None:
    from mmedge.runtime.session import _exchange

    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir(), b.mkdir()
    if not _exchange(a, b):
        pytest.skip("this system cannot swap two folders in one step")
    a.rmdir(), b.rmdir()


def _one_version(bundle) -> str:
    """The version ``bundle`` is of (its model's sha256), after checking that its model, vocabulary and samples
    are all that version's: ``read`` refuses any file whose sha256 is not the one its manifest records."""
    model = bundle.manifest["files"]["model.onnx"]["sha256"]
    assert hashlib.sha256(bundle.model_bytes).hexdigest() == model
    for name in ("vocab.json", "samples/inputs.npz", "samples/samples.json"):
        bundle.read(name)
    return model


def test_bundle_swapped_after_its_manifest_was_read_is_read_whole_from_that_version(tmp_path, monkeypatch):
    """The exact moment of the race: a run swaps a new bundle in right after the reader read the manifest. The
    reader goes on reading the folder it opened (now `.bundle.old`), so it gets every file of the version whose
    manifest it has; when a second swap removes that folder before its files are opened, it reads the new one."""
    import mmedge.bundle.manifest as reader

    _needs_exchange(tmp_path)
    out = tmp_path / "bundle"
    _write(VERSIONS[0], out, 0)
    shas = [json.loads((v / "manifest.json").read_text())["files"]["model.onnx"]["sha256"] for v in VERSIONS]
    original = reader._read_manifest
    swaps: list[int] = []

    def read_then_swap(root, folder, not_a_bundle):
        manifest = original(root, folder, not_a_bundle)
        for _ in range(swaps.pop() if swaps else 0):
            _write(VERSIONS[1], out, len(list(tmp_path.iterdir())))
        return manifest

    monkeypatch.setattr(reader, "_read_manifest", read_then_swap)
    swaps.append(1)
    with load_bundle(out) as bundle:
        assert _one_version(bundle) == shas[0]  # the version it began with, though the folder holds the other
    swaps.append(2)  # the folder it opened is removed before its files are opened: read again, whole
    with load_bundle(out) as bundle:
        assert _one_version(bundle) == shas[1]


def test_bundle_rewritten_again_and_again_under_readers_is_always_read_as_one_version(tmp_path):
    """A reader thread loads the bundle and answers a question with it over and over while the main thread writes
    the two versions over it in turn: every read is of one version, and none fails."""
    import threading
    import time

    from mmedge.runtime.predict import predict_bundle

    _needs_exchange(tmp_path)
    out = tmp_path / "bundle"
    _write(VERSIONS[0], out, 0)
    labels = {tuple(json.loads((v / "manifest.json").read_text())["labels"]) for v in VERSIONS}
    image = REFERENCE_BUNDLE / "samples" / "sample_00.png"
    seen, problems, done = set(), [], threading.Event()

    def read():
        while not done.is_set():
            try:
                with load_bundle(out) as bundle:
                    seen.add(_one_version(bundle))
                answer = predict_bundle(out, image, "is this digit even?")
                assert any(answer["answer"] in names for names in labels)
            except Exception as exc:  # a BundleError for a file of the other version, or the folder missing
                problems.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(1, 61):
            _write(VERSIONS[n % 2], out, n)
            time.sleep(0.01)  # runs write a bundle minutes apart; a reader has until the write after next
    finally:
        done.set()
        reader.join()
    assert problems == []
    assert len(seen) == 2  # the reader really read both versions while they were swapped
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.old", "bundle"]
