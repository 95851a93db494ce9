"""The shape of the code: no import cycle (imports inside functions count), and no torch where none is needed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mmedge

SRC = Path(mmedge.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: mmedge modules it imports}, counting imports at any depth (inside functions too)."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("mmedge") and (o := owner(t)) and o != name:
                    graph[name].add(o)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle_through_a_deferred_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_src_has_no_import_cycle_counting_imports_inside_functions():
    graph = import_graph()
    assert "mmedge.steps.registry" in graph and graph["mmedge.recipe"]  # the graph was really read
    assert cycles(graph) == []


# Run in a fresh interpreter where importing torch (or the data packages the device side must not need) fails.
_BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torch_pruning", "onnxscript", "transformers", "mlxtend"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def _without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _BLOCK + code], capture_output=True, text=True, timeout=300)


def test_every_builtin_recipe_parses_and_every_step_module_imports_without_torch():
    r = _without_torch(
        """
from mmedge.recipe import BUILTIN_RECIPES, load_recipe
from mmedge.steps.registry import STEP_TABLE, get_step
for name in BUILTIN_RECIPES:
    print(name, len(load_recipe(name).dump()))
for tag in STEP_TABLE:
    get_step(tag)
print("ok")
"""
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_blocked_torch_really_fails_to_import():
    """The guard above would pass vacuously if the block did not work."""
    r = _without_torch("import torch")
    assert r.returncode != 0 and "blocked" in r.stderr
