import numpy as np
import pytest

from mmedge.errors import InputMismatchError, InputPathError, MmedgeError, NotOnnxError, UnknownNameError
from mmedge.runtime.providers import available, require, resolve
from mmedge.runtime.session import check_feeds, open_session, run


def test_missing_model_path_is_refused(tmp_path):
    with pytest.raises(InputPathError, match="does not exist"):
        open_session(tmp_path / "nope.onnx")


def test_file_that_is_not_onnx_is_refused(tmp_path):
    (tmp_path / "x.onnx").write_text("hello, not a model")
    with pytest.raises(NotOnnxError, match="not a loadable ONNX model"):
        open_session(tmp_path / "x.onnx")


def test_truncated_onnx_is_refused(tmp_path, tiny_onnx):
    data = tiny_onnx["cnn-lstm"].read_bytes()
    (tmp_path / "t.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(NotOnnxError, match="truncated"):
        open_session(tmp_path / "t.onnx")


def test_cpu_is_available_and_reported_as_what_ran(tiny_onnx):
    assert "cpu" in available()
    assert open_session(tiny_onnx["cnn-lstm"], "cpu").get_providers()[0] == "CPUExecutionProvider"


def test_unknown_ep_suggests_the_closest():
    with pytest.raises(UnknownNameError, match="did you mean 'cuda'"):
        resolve("cudaa")


def test_ep_not_installed_names_what_is_installed_and_how_to_get_it():
    missing = next(n for n in ("xnnpack", "nnapi", "coreml", "cuda") if n not in available())
    with pytest.raises(MmedgeError, match=r"not in this onnxruntime installation \(it has: cpu"):
        require(missing)


@pytest.fixture
def fresh_probes():
    """EP start-up probes run again in the test and are forgotten after it (they are kept per process)."""
    from mmedge.runtime.providers import probe

    probe.cache_clear()
    yield
    probe.cache_clear()


def test_ep_listed_but_unable_to_start_is_unavailable_and_says_why(tmp_path, monkeypatch, capfd, fresh_probes):
    """As onnxruntime-gpu lists CUDA on a machine without a GPU: here NNAPI (Android only) is made to look listed;
    a session asked for it falls back to the CPU EP, so mmedge must call it unavailable and never run on the CPU."""
    import onnxruntime as ort

    from mmedge.runtime.providers import listed, listing, unavailable_reason
    from tests.conftest import relu_onnx

    real = ort.get_available_providers()
    if "NnapiExecutionProvider" in real:
        pytest.skip("this onnxruntime really has NNAPI")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [*real, "NnapiExecutionProvider"])
    assert "nnapi" in listed() and "nnapi" not in available() and "cpu" in available()
    reason = unavailable_reason("nnapi")
    assert "lists it, but it cannot start on this machine (" in reason and "onnxruntime-android" in reason
    with pytest.raises(MmedgeError, match=r"'nnapi' cannot be used: this onnxruntime lists it, but it cannot start"):
        open_session(relu_onnx(tmp_path / "r.onnx"), "nnapi")
    row = next(r for r in listing() if r["name"] == "nnapi")
    assert row["listed"] and not row["available"] and row["reason"] == reason and "cannot start" in row["how_to_get"]
    with pytest.raises(MmedgeError, match=r"\(it has: cpu; listed but unable to start here: .*nnapi"):
        require("coreml")
    assert capfd.readouterr() == ("", "")  # what onnxruntime printed while failing is in the reason, not the terminal


def test_every_listed_ep_runs_a_model_or_is_refused_never_replaced_by_the_cpu(tmp_path, monkeypatch, fresh_probes):
    """With the CPU wheel only the CPU EP is listed; with onnxruntime-gpu on a machine without a GPU, CUDA and
    TensorRT are listed, cannot start, and must be refused with the reason; on a GPU machine they must run."""
    from mmedge.runtime.providers import PROVIDERS, listed
    from tests.conftest import relu_onnx

    path = relu_onnx(tmp_path / "r.onnx")
    monkeypatch.chdir(tmp_path)  # the TensorRT EP writes its engine cache under the working folder
    for name in listed():
        if name in available():
            sess = open_session(path, name, allow_fallback=True)
            assert sess.get_providers()[0] == PROVIDERS[name].ort_name
        else:
            with pytest.raises(MmedgeError, match=rf"'{name}' cannot be used: .*cannot start on this machine \(.+\)"):
                open_session(path, name)


def test_wrong_dtype_and_shape_are_all_reported(tiny_onnx):
    sess = open_session(tiny_onnx["cnn-lstm"])
    feeds = {
        "image": np.zeros((1, 3, 28, 28), np.float64),
        "input_ids": np.zeros((1, 4), np.int32),
        "attention_mask": np.zeros((1, 4), np.int64),
    }
    with pytest.raises(InputMismatchError) as info:
        check_feeds(sess, feeds)
    msg = str(info.value)
    assert "'image' has dtype float64" in msg and "'input_ids' has dtype int32" in msg
    assert "size 3 on axis 1" in msg


def test_missing_and_extra_inputs_are_reported(tiny_onnx):
    sess = open_session(tiny_onnx["cnn-lstm"])
    with pytest.raises(InputMismatchError, match="'attention_mask' is missing.*'pixels' is not an input"):
        run(
            sess,
            {
                "image": np.zeros((1, 1, 28, 28), np.float32),
                "input_ids": np.zeros((1, 4), np.int64),
                "pixels": np.zeros(1),
            },
        )


def test_session_options_carry_threads_level_and_config_entries(tmp_path):
    import onnxruntime as ort

    from mmedge.runtime.options import session_options

    config = {"session.use_env_allocators": "1"}
    opts = session_options(2, level="basic", optimized_path=tmp_path / "o.onnx", config=config)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level) == (2, 1, 3)
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert opts.optimized_model_filepath == str(tmp_path / "o.onnx")
    assert opts.get_session_config_entry("session.use_env_allocators") == "1"
    default = session_options()
    assert default.intra_op_num_threads == 0
    assert default.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def test_metadata_reads_alike_from_a_session_a_model_and_a_file(tmp_path):
    import onnx

    from mmedge.runtime.session import metadata_json, model_metadata, save_onnx, set_metadata
    from tests.conftest import relu_onnx

    model = onnx.load(str(relu_onnx(tmp_path / "r.onnx")))
    set_metadata(model, {"mmedge.labels": '["a", "b"]', "other": "x"})
    path = save_onnx(model, tmp_path / "m.onnx")
    want = {"mmedge.labels": '["a", "b"]', "other": "x"}
    assert model_metadata(model) == model_metadata(path) == model_metadata(open_session(path)) == want
    assert metadata_json(path, "mmedge.labels") == ["a", "b"] and metadata_json(path, "missing", 7) == 7


def test_save_onnx_replaces_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    import onnx

    from mmedge.runtime.session import replacing, save_onnx
    from tests.conftest import relu_onnx

    path = relu_onnx(tmp_path / "m.onnx")
    before = path.read_bytes()
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_bytes(before[:10])  # a half-written model, then the writer fails
        raise RuntimeError("interrupted")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    model = onnx.load(str(path))
    model.doc_string = "rewritten"
    save_onnx(model, path)
    assert onnx.load(str(path)).doc_string == "rewritten" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("system", "library"),
    [("Windows", "QnnHtp.dll"), ("Linux", "libQnnHtp.so"), ("Android", "libQnnHtp.so")],
)
def test_qnn_backend_library_is_named_as_the_os_ships_it(system, library):
    import platform

    from mmedge.runtime.providers import qnn_backend_path

    assert qnn_backend_path(system) == library
    assert resolve("qnn").options["backend_path"] == qnn_backend_path(platform.system())


def test_eps_running_a_graph_follow_its_non_standard_ops():
    from mmedge.runtime.providers import PROVIDERS, eps_running

    assert eps_running([("", "MatMul"), ("ai.onnx", "Relu")]) == list(PROVIDERS)
    assert eps_running([("", "MatMul"), ("com.microsoft", "Attention")]) == ["cpu", "cuda"]
    assert eps_running([("com.microsoft", "DynamicQuantizeLSTM")]) == ["cpu"]
    assert eps_running([("com.microsoft.nchwc", "Conv")]) == ["cpu"]
    assert eps_running([("com.example", "Custom")]) == []


def test_a_model_onnxruntime_refuses_is_named_with_its_reason_cut_at_a_word(tmp_path):
    """onnxruntime's reason for refusing a graph (here a per-axis DequantizeLinear at opset 11, which int8 of an
    old model once wrote) is shortened at a word boundary, never mid-word."""
    import onnx
    from onnx import TensorProto, helper

    from mmedge.errors import EpCannotRunError
    from tests.conftest import onnx_model

    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=0, name="a_rather_long_node_name_" * 4)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("q", TensorProto.INT8, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
            helper.make_tensor("z", TensorProto.INT8, [], [0]),
        ],
    )
    onnx.save(onnx_model(graph, opsets=(("", 11),)), str(tmp_path / "old.onnx"))
    with pytest.raises(EpCannotRunError) as err:
        open_session(tmp_path / "old.onnx")
    message = str(err.value)
    reason = message.split("onnxruntime refused it (", 1)[1].rsplit("); ", 1)[0]
    assert reason.endswith("…") and "[ONNXRuntimeError]" not in reason
    import onnxruntime as ort

    with pytest.raises(Exception) as raw:  # onnxruntime's whole reason, to compare with
        ort.InferenceSession(str(tmp_path / "old.onnx"), providers=["CPUExecutionProvider"])
    rest = str(raw.value).splitlines()[0].split(reason[:-1], 1)[1]
    assert rest[:1] in (" ", ",", ";", ":", "(", '"'), f"cut mid-word before {rest[:10]!r}"


_SOFTMAX_OF_A_DENORMAL = """
import sys
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

if sys.argv[1] == "mmedge":
    from mmedge.runtime.session import apply_process_defaults

    apply_process_defaults()
graph = helper.make_graph(
    [helper.make_node("Softmax", ["x"], ["y"], axis=-1)],
    "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
print(repr(float(sess.run(None, {"x": np.array([[0.0, -88.0]], np.float32)})[0][0, 1])))
"""


def test_every_process_runs_with_denormals_flushed_to_zero():
    """exp(-88) is a denormal float; after apply_process_defaults, a session that another library opens later in
    the process (here one without mmedge's options) flushes it to zero, as the timings mmedge reports assume."""
    import subprocess
    import sys

    def second_output(mode: str) -> float:
        proc = subprocess.run(
            [sys.executable, "-c", _SOFTMAX_OF_A_DENORMAL, mode], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return float(proc.stdout.strip())

    plain = second_output("plain")
    if plain == 0.0:
        pytest.skip("onnxruntime's exp on this CPU never yields a denormal; nothing to flush")
    assert 0.0 < plain < np.finfo(np.float32).tiny
    assert second_output("mmedge") == 0.0


def test_a_folder_replaced_under_a_reader_is_never_missing_nor_partly_written(tmp_path):
    """A bundle is written beside the old one and swapped in: a reader that opens the folder over and over while it
    is replaced a hundred times always finds it, with every file of one version in it."""
    import threading
    import time

    from mmedge.runtime.session import _exchange, replace_folder

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    if not _exchange(a, b):
        pytest.skip("this system cannot swap two paths in one step: there the bundle is missing for an instant")
    a.rmdir(), b.rmdir()
    out = tmp_path / "bundle"
    names = {"model.onnx", "manifest.json", "report.md"}

    def version(i: int):
        folder = tmp_path / f".new-{i}"
        folder.mkdir()
        for name in names:
            (folder / name).write_text(str(i))
        return folder

    replace_folder(version(0), out)
    seen, problems, done = set(), [], threading.Event()

    def read():
        while not done.is_set():
            try:
                listed = {p.name for p in out.iterdir()}
                seen.add((out / "manifest.json").read_text())
            except OSError as exc:  # the folder or its manifest missing
                problems.append(repr(exc))
                continue
            if listed != names:
                problems.append(repr(listed))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(1, 101):
        replace_folder(version(i), out)
        time.sleep(0.001)  # bundles are written minutes apart; a reader has until the next replacement
    done.set()
    reader.join()
    assert {p.read_text() for p in out.iterdir()} == {"100"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.old", "bundle"]  # the previous version only
    assert {p.read_text() for p in (tmp_path / ".bundle.old").iterdir()} == {"99"}
    assert len(seen) > 1  # the reader really read while the folder was replaced
    assert problems == []


def _with_external_weight(folder, location: str, offset: int = 0, length: int = 16):
    """A one-node model (y = x + w) whose 4 float weights are external data at ``location``."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        w.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [w],
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.mark.parametrize(
    ("location", "offset", "said"),
    [
        ("../outside.bin", 0, "outside its folder"),
        ("/etc/hostname", 0, "outside its folder"),
        ("gone.bin", 0, "is missing"),
        ("w.bin", 8, "ends past its file"),
    ],
)
def test_external_data_outside_the_folder_missing_or_short_is_named_as_such(tmp_path, location, offset, said):
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 16)
    (folder / "w.bin").write_bytes(b"\0" * 16)
    path = _with_external_weight(folder, location, offset)
    with pytest.raises(NotOnnxError, match=said) as exc:
        open_session(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_external_data_inside_the_folder_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    sess = open_session(_with_external_weight(tmp_path, "w.bin"))
    out = sess.run(None, {"x": np.ones(4, np.float32)})[0]
    assert out.tolist() == [1.0, 2.0, 3.0, 4.0]
