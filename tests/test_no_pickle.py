"""No code path executes code from data: nothing in mmedge unpickles (pickle and its relatives, torch.load without
weights_only=True, numpy.load with allow_pickle=True)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _constant(keywords: dict, key: str, default=None):
    """The constant a call passes as ``key`` (``default`` when it passes none; a non-constant counts as True)."""
    if key not in keywords:
        return default
    value = keywords[key]
    return value.value if isinstance(value, ast.Constant) else True


def unpickling_calls(source: str, name: str = "<source>") -> list[str]:
    """'file:line: what' for every import of an unpickling module, torch.load without weights_only=True,
    numpy.load with allow_pickle=True and pandas' read_pickle in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in UNPICKLERS:
                    found.append(f"{name}:{node.lineno}: imports {module}")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        keywords = {k.arg: k.value for k in node.keywords}
        if owner == "torch" and node.func.attr == "load" and _constant(keywords, "weights_only") is not True:
            found.append(f"{name}:{node.lineno}: torch.load without weights_only=True")
        if owner in ("np", "numpy") and node.func.attr == "load" and _constant(keywords, "allow_pickle", False):
            found.append(f"{name}:{node.lineno}: numpy.load with allow_pickle")
        if node.func.attr == "read_pickle":
            found.append(f"{name}:{node.lineno}: read_pickle")
    return found


def test_the_scan_finds_each_way_to_unpickle():
    bad = """
import pickle
from joblib import load
torch.load(path)
torch.load(path, weights_only=False)
np.load(path, allow_pickle=True)
pd.read_pickle(path)
"""
    assert len(unpickling_calls(bad)) == 6
    good = "torch.load(path, weights_only=True)\nnp.load(path)\nnp.load(path, allow_pickle=False)\n"
    assert unpickling_calls(good) == []


def test_no_code_path_unpickles():
    files = [p for d in ("src", "cli", "benchmarks") for p in (ROOT / d).rglob("*.py") if ".venvs" not in p.parts]
    assert len(files) > 50  # the tree was really read
    found = [hit for p in files for hit in unpickling_calls(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []
