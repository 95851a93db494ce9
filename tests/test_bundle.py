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
