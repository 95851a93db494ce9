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
