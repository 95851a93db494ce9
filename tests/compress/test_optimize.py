import numpy as np
import pytest

from mmedge.compress.optimize import OptimizeConfig, optimize_model
from mmedge.runtime.inputs import split_feeds
from mmedge.runtime.session import metadata_json, open_session


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_step_optimize_keeps_outputs_and_metadata(tmp_path, tiny_onnx, family):
    src, out = tiny_onnx[family], tmp_path / "o.onnx"
    info = optimize_model(src, out, OptimizeConfig())
    assert info["nodes_after"] > 0 and info["level"] == "basic"
    assert info["transformer_fusions"] == (family == "vit-transformer")
    feeds = split_feeds(src, n=16)
    np.testing.assert_allclose(open_session(out).run(None, feeds)[0], open_session(src).run(None, feeds)[0], atol=1e-4)
    assert metadata_json(open_session(out), "mmedge.labels")[0] == "no"
