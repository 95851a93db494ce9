"""benchmarks/peers.py: the parts that need no peer virtualenv (error capture, sizes, the best row, the table)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


peers = _load("benchmarks_peers", BENCHMARKS / "peers.py")
peer = _load("benchmarks_peers_peer", BENCHMARKS / "peers" / "_peer.py")

TRACEBACK = """\
Collecting statistics 100%
Traceback (most recent call last):
  File "quantize_x.py", line 3, in <module>
    raise KeyError("inner")
KeyError: 'inner'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "quantize_x.py", line 5, in <module>
    obj._dynamic_quantize_bias()
AttributeError: 'DynamicQuantizer' object has no attribute '_dynamic_quantize_bias'
   continued message line
INFO: cleaning up
"""


def test_one_line_error_is_the_exception_line_of_the_last_traceback():
    assert peers.one_line_error(TRACEBACK) == (
        "AttributeError: 'DynamicQuantizer' object has no attribute '_dynamic_quantize_bias'"
    )


def test_one_line_error_reads_a_dotted_exception_name():
    fail = "onnxruntime.capi.onnxruntime_pybind11_state.Fail: [ONNX] bad"
    text = f"Traceback (most recent call last):\n  File 'x'\n{fail}\n"
    assert peers.one_line_error(text) == fail


def test_one_line_error_is_pips_last_error_when_there_is_no_traceback():
    text = "Collecting foo\nERROR: Could not find a version that satisfies foo==9\n"
    text += "ERROR: No matching distribution for foo==9\n"
    assert peers.one_line_error(text) == "ERROR: No matching distribution for foo==9"


def test_one_line_error_is_the_last_line_otherwise_and_says_so_when_empty():
    assert peers.one_line_error("starting\n  killed by signal 9  \n\n") == "killed by signal 9"
    assert peers.one_line_error("") == "failed without printing anything"


def test_one_line_error_is_clipped_to_200_characters():
    line = peers.one_line_error("Traceback (most recent call last):\nValueError: " + "x" * 500)
    assert len(line) == peers.ERROR_CHARS and line.endswith("…") and line.startswith("ValueError: xxx")


def _model(path: Path, external: bool) -> Path:
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    model = helper.make_model(graph)
    onnx.save(model, path, save_as_external_data=external, location="model.onnx_data", size_threshold=0)
    return path


def test_model_bytes_counts_the_external_data_file(tmp_path):
    inline = _model(tmp_path / "inline.onnx", external=False)
    (tmp_path / "ext").mkdir()
    split = _model(tmp_path / "ext" / "model.onnx", external=True)
    assert peers.model_bytes(inline) == inline.stat().st_size
    data = tmp_path / "ext" / "model.onnx_data"
    assert peers.model_bytes(split) == split.stat().st_size + data.stat().st_size >= 64 * 64 * 4


class _Timing:
    """A stand-in for the batch-1 LatencyComparison: candidates within 5 % are equally fast."""

    def __init__(self, ratios):
        self.ratios = ratios

    def equally_fast(self, a, b):
        return abs(self.ratios[a] / self.ratios[b] - 1) < 0.05


def _row(name, drop, ratio, size, peer=True, error=""):
    return {
        "name": name,
        "tool": name.split()[0],
        "variant": name.split()[-1],
        "peer": peer,
        "error": error,
        "test_accuracy": None if error else 0.99 - drop / 100,
        "paraphrase_accuracy": None if error else 0.9,
        "drop_points": drop,
        "size_bytes": size,
        "size_ratio": size / 100e6,
        "p50_ms": None if error else {"1": 10 * ratio, "32": 300 * ratio},
        "ratio": None if error else {"1": [ratio - 0.01, ratio, ratio + 0.01], "32": [0.9, 1.0, 1.1]},
    }


def test_mark_best_is_the_smallest_of_the_fastest_peers_within_one_point():
    rows = [
        _row("teacher fp32", 0.0, 1.0, 100e6, peer=False),
        _row("mmedge shipped", 0.2, 0.3, 30e6, peer=False),  # not a peer: never marked
        _row("a static", 3.0, 0.4, 25e6),  # fastest, but loses 3 points
        _row("b static", 0.5, 0.60, 28e6),
        _row("c dynamic", 0.9, 0.61, 27e6),  # as fast as b within the spread, and smaller
        _row("d dynamic", 0.1, 0.9, 20e6),
        _row("e static", 0.0, 0.1, 1e6, error="ValueError: no"),
    ]
    timing = _Timing({r["name"]: r["ratio"]["1"][1] for r in rows if r["ratio"]})
    assert peers.mark_best(rows, timing) == "c dynamic"
    assert [r["name"] for r in rows if r.get("best")] == ["c dynamic"]


def test_mark_best_is_none_when_no_peer_keeps_within_one_point():
    rows = [_row("teacher fp32", 0.0, 1.0, 100e6, peer=False), _row("a static", 1.5, 0.5, 25e6)]
    assert peers.mark_best(rows, _Timing({"teacher fp32": 1.0, "a static": 0.5})) is None


def test_table_rows_fill_every_column_and_mark_the_best_and_the_failed():
    best, failed = _row("b static", 0.5, 0.6, 28e6), _row("e dynamic", 0.0, 1.0, 0, error="ImportError: x")
    best["best"] = True
    cells = peers.table_rows([best, failed], paraphrase=True)
    assert all(len(c) == len(peers.HEADER) for c in cells)
    assert cells[0][:5] == ["**b**", "static", "98.50%", "90.00%", "0.50"]
    assert cells[0][5:11] == ["28.0", "0.28×", "6.00", "0.60× (0.59–0.61)", "180", "1.00× (0.90–1.10)"]
    assert cells[0][-1] == ""
    assert cells[1][2:11] == ["–"] * 9 and cells[1][-1] == "ImportError: x"
    assert peers.table_rows([best], paraphrase=False)[0][3] == "–"


def test_figures_keep_three_significant_digits():
    assert [peers._fig(x) for x in (106.85, 27.87, 9.183, 0.06123, 0)] == ["107", "27.9", "9.18", "0.0612", "0"]


def test_markdown_table_has_the_header_and_a_row_per_model():
    rows = [_row("teacher fp32", 0.0, 1.0, 100e6, peer=False), _row("b static", 0.5, 0.6, 28e6)]
    data = {
        "data": {"name": "easy-vqa"},
        "teacher": "t.onnx",
        "calibration": {"rows": 254, "source": "mmedge's calibration draw"},
        "samples": {"test": 9673, "paraphrase": 9673},
        "rounds": 20,
        "calls_per_round": {"1": 350, "32": 5},
        "session_config": {"session.set_denormal_as_zero": "1"},
        "limit": None,
        "best_peer": "b static",
        "own_vs_plain": [],
        "tools": {"nncf": {"label": "NNCF", "packages": {"nncf": "3.4.0"}}},
        "provenance": {
            "cpu": {"summary": "x86", "logical_cores": 2},
            "packages": {"onnxruntime": "1.32.0"},
            "git": {"commit": None},
            "mmedge_version": "0",
        },
    }
    md = peers.markdown(data, rows, paraphrase=True)
    assert "| " + " | ".join(peers.HEADER) + " |" in md
    assert len(re.findall(r"^\| (teacher|b) \|", md, re.M)) == 2
    assert "NNCF (nncf 3.4.0)" in md and "9,673" in md and "350 calls per round at batch 1" in md
    assert "`session.set_denormal_as_zero=1`" in md  # the session config every model was timed with


class _Rounds:
    """A stand-in for a LatencyComparison: per-round times of each model, and its spread rule."""

    rounds = 30

    def __init__(self, round_ms):
        self.round_ms = round_ms

    def ratio_interval(self, a, b):
        r = np.asarray(self.round_ms[a]) / np.asarray(self.round_ms[b])
        return tuple(float(x) for x in np.percentile(r, [10, 50, 90]))

    def equally_fast(self, a, b):
        lo, _, hi = self.ratio_interval(a, b)
        return lo <= 1.0 <= hi


def test_own_vs_plain_says_faster_slower_or_as_fast_by_the_spread():
    base = np.linspace(9.0, 11.0, 30)
    b1 = _Rounds(
        {
            "ort static-qdq-per-channel": base,
            "mmedge quantize.static": base * 0.8,  # every round faster
            "ort dynamic": base,
            "mmedge quantize.dynamic": base * np.where(np.arange(30) % 2, 1.1, 0.95),  # the interval holds 1
        }
    )
    b32 = _Rounds({"ort static-qdq-per-channel": base, "mmedge quantize.static": base * 1.3})  # no dynamic rows
    own = peers.own_vs_plain({"1": b1, "32": b32})
    verdicts = {(o["mmedge"], o["batch"]): o["verdict"] for o in own}
    assert verdicts == {
        ("mmedge quantize.static", 1): "faster",
        ("mmedge quantize.static", 32): "slower",
        ("mmedge quantize.dynamic", 1): "as fast",
    }
    sentence = peers.own_sentence(own)
    assert "quantize.static / onnxruntime static-qdq-per-channel at batch 1: 0.80× (0.80–0.80), faster" in sentence
    assert "not timed" in peers.own_sentence([])


def test_mmedge_pass_quantizes_the_model_or_gives_the_rows_error(tmp_path):
    model = _model(tmp_path / "fp32.onnx", external=False)
    got = peers.mmedge_pass("quantize.dynamic", model, None, tmp_path / "work")
    assert got["path"].is_file() and got["settings"]["type"] == "quantize.dynamic"
    ops = {n.op_type for n in onnx.load(got["path"]).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, ops
    failed = peers.mmedge_pass("quantize.static", model, None, tmp_path / "work")  # nothing to calibrate on
    assert "path" not in failed and failed["error"].startswith(("MmedgeError", "ValueError")), failed


@pytest.mark.parametrize("key", sorted(peers.TOOLS))
def test_every_tool_has_a_script_and_pins_every_requirement(key):
    tool = peers.TOOLS[key]
    assert tool.script(key).is_file()
    lines = [ln.strip() for ln in tool.requirements(key).read_text().splitlines()]
    reqs = [ln for ln in lines if ln and not ln.startswith("#")]
    assert reqs and all(re.fullmatch(r"[A-Za-z0-9][\w.\-]*(\[[\w,\-]+\])?==[\w.]+", ln) for ln in reqs), reqs


def test_peer_batches_cover_every_calibration_row_in_order():
    feeds = {"image": np.arange(70 * 2).reshape(70, 2), "ids": np.arange(70)}
    batches = peer.batches(feeds, 32)
    assert [len(b["ids"]) for b in batches] == [32, 32, 6]
    assert np.array_equal(np.concatenate([b["ids"] for b in batches]), feeds["ids"])
    reader = peer.Reader(feeds, 32)
    assert [reader.get_next() is not None for _ in range(4)] == [True, True, True, False]
    reader.rewind()
    assert reader.get_next()["ids"][0] == 0
