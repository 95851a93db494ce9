"""The guards that keep tests inside their own tmp folders (tests/isolation.py) see what they are meant to see."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.isolation import WorkingTreeWrites, frozen


def test_writes_inside_the_watched_tree_are_seen_and_reads_and_caches_are_not(tmp_path):
    root = tmp_path / "repo"
    (root / "exported").mkdir(parents=True)
    (root / "README.md").write_text("x")
    watch = WorkingTreeWrites(root)  # a second hook on a stand-in repository; the session's own one stays
    assert watch.take() == []
    (root / "README.md").read_text()
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "m.pyc").write_bytes(b"")
    (tmp_path / "outside.txt").write_text("fine")
    assert watch.take() == []
    # pytest's own cache on a fresh clone: parents made, a staging folder filled, then renamed into place
    root.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="pytest-cache-files-", dir=root)
    (Path(staging) / "CACHEDIR.TAG").write_text("tag")
    os.replace(staging, root / ".pytest_cache")
    assert watch.take() == []
    (root / "exported" / "new.json").write_text("{}")
    fd = os.open(root / "raw.bin", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    os.replace(root / "raw.bin", root / "moved.bin")
    shutil.copytree(root / "exported", root / "copy")
    shutil.rmtree(root / "copy")
    tempfile.mkdtemp(dir=root)
    seen = watch.take()
    for path, event in [
        ("exported/new.json", "open"),
        ("raw.bin", "open"),
        ("moved.bin", "os.rename"),
        ("copy", "shutil.copytree"),
        ("copy", "shutil.rmtree"),
    ]:
        assert f"{path} ({event})" in seen, seen
    assert any(s.endswith("(tempfile.mkdtemp)") for s in seen) and watch.take() == []


def test_a_changed_shared_output_is_refused_naming_the_fixture(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "model.onnx").write_bytes(b"1")
    with frozen(tmp_path / "shared", what="demo"):
        (tmp_path / "shared" / "model.onnx").read_bytes()  # reading is fine
    refused = r"fixture demo \(.*model\.onnx\).*copy it into the test's own tmp_path"
    with pytest.raises(AssertionError, match=refused), frozen(tmp_path / "shared", what="demo"):
        (tmp_path / "shared" / "model.onnx").write_bytes(b"22")
    with pytest.raises(AssertionError, match=r"extra\.txt"), frozen(tmp_path / "shared", what="demo"):
        (tmp_path / "shared" / "extra.txt").write_text("added")
