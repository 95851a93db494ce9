import json

import numpy as np
import onnx
import pytest

from mmedge.errors import ExportValidationError, MmedgeError
from mmedge.export.onnx import ExportConfig, export_checkpoint, validate_export
from mmedge.runtime.session import open_session


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_step_export_graph_has_named_dynamic_axes_and_weights_inside(tiny_onnx, family):
    path = tiny_onnx[family]
    assert not list(path.parent.glob("*.data")), "weights must live inside the .onnx file"
    sess = open_session(path)
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes["image"] == ["batch", 1, 28, 28]
    assert shapes["input_ids"] == ["batch", "text_length"] == shapes["attention_mask"]
    assert sess.get_outputs()[0].shape == ["batch", 12]


@pytest.mark.parametrize("family", ["cnn-lstm", "vit-transformer"])
def test_exported_graph_runs_at_new_batch_sizes_and_text_lengths(tiny_onnx, family):
    sess = open_session(tiny_onnx[family])
    for batch, length in ((1, 3), (7, 12), (2, 5)):
        out = sess.run(
            None,
            {
                "image": np.random.rand(batch, 1, 28, 28).astype(np.float32),
                "input_ids": np.full((batch, length), 2, np.int64),
                "attention_mask": np.ones((batch, length), np.int64),
            },
        )[0]
        assert out.shape == (batch, 12) and np.isfinite(out).all()


def test_export_stores_mmedge_metadata(tiny_onnx):
    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx["cnn-lstm"])).metadata_props}
    assert json.loads(meta["mmedge.labels"])[:2] == ["no", "yes"]
    assert meta["mmedge.family"] == "cnn-lstm" and meta["mmedge.version"]
    assert json.loads(meta["mmedge.preprocessing"])["height"] == 28
    assert json.loads(meta["mmedge.tokenizer"])["words"][:2] == ["<pad>", "<unk>"]


def test_validation_collects_every_failure_for_a_graph_from_another_model(tiny_onnx, tiny_checkpoints):
    # The vit graph checked against the cnn-lstm checkpoint: values differ at every size.
    cfg = ExportConfig(batch_sizes=(1, 2), text_lengths=(4, 6))
    with pytest.raises(ExportValidationError) as info:
        validate_export(tiny_checkpoints["cnn-lstm"], tiny_onnx["vit-transformer"], cfg)
    assert len(info.value.failures) == 4
    assert all("max abs diff" in f for f in info.value.failures)


def test_validation_reports_fixed_axes(tmp_path, tiny_onnx, tiny_checkpoints):
    model = onnx.load(str(tiny_onnx["cnn-lstm"]))
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 5  # fix the batch axis
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    with pytest.raises(ExportValidationError, match="should be dynamic") as info:
        validate_export(tiny_checkpoints["cnn-lstm"], tmp_path / "fixed.onnx", ExportConfig())
    assert len(info.value.failures) >= 3


def test_failed_export_leaves_no_file(tmp_path):
    with pytest.raises(MmedgeError):
        export_checkpoint(tmp_path / "missing-checkpoint", tmp_path / "out.onnx")
    assert not list(tmp_path.glob("*.onnx*")) and not list(tmp_path.glob(".*"))


def test_export_config_needs_two_distinct_sizes():
    with pytest.raises(ValueError):
        ExportConfig(batch_sizes=(2, 2))


TWO_OUTPUTS = """
import dataclasses

from mmedge.examples.bow_fusion import BowFusion, build as build_bow
from mmedge.models.spec import TensorSpec


class WithEmbedding(BowFusion):
    def forward(self, image, input_ids, attention_mask):  # the logits, then the image embedding (B, W)
        x = (image - 0.1307) / 0.3081
        return super().forward(image, input_ids, attention_mask), self.image(x).mean((2, 3))


def build(vocab_size, num_classes, width=8):
    _, spec = build_bow(vocab_size, num_classes, width)
    embeds = TensorSpec("image_embeds", "float32", ("batch", width))
    return WithEmbedding(vocab_size, num_classes, width), dataclasses.replace(spec, outputs=(*spec.outputs, embeds))
"""


@pytest.mark.slow
def test_validation_compares_every_output_not_only_the_first(tmp_path, tiny_checkpoints, monkeypatch):
    """A graph whose second output drifts from PyTorch while its logits stay exact is refused, naming that output."""
    from onnx import helper, numpy_helper

    from mmedge.models import build_model
    from mmedge.models.checkpoint import load_checkpoint, save_checkpoint

    (tmp_path / "two_outputs_model.py").write_text(TWO_OUTPUTS)
    monkeypatch.chdir(tmp_path)  # the export subprocess imports the factory from its working folder
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MMEDGE_TRUST_CODE", "1")
    base = load_checkpoint(tiny_checkpoints["cnn-lstm"])  # its vocabulary, labels and data set
    model = build_model("py:two_outputs_model:build", {}, base.model.vocab_size, base.model.num_classes)
    ckpt = save_checkpoint(model, base.vocab, base.labels, tmp_path / "ckpt", base.extra)
    cfg = ExportConfig(batch_sizes=(1, 3), text_lengths=(4, 9))
    report = export_checkpoint(ckpt, tmp_path / "m.onnx", cfg)
    assert report["outputs"] == ["logits", "image_embeds"]
    assert all(set(c["max_abs_diff_by_output"]) == {"logits", "image_embeds"} for c in report["checks"])

    drifted = onnx.load(str(tmp_path / "m.onnx"))
    for node in drifted.graph.node:  # the graph computes the exact embedding as before, for the logits too ...
        for i, name in enumerate(node.output):
            node.output[i] = "image_embeds_exact" if name == "image_embeds" else name
        for i, name in enumerate(node.input):
            node.input[i] = "image_embeds_exact" if name == "image_embeds" else name
    # ... and outputs it 1 % off
    drifted.graph.initializer.append(numpy_helper.from_array(np.array(1.01, np.float32), "drift"))
    drifted.graph.node.append(helper.make_node("Mul", ["image_embeds_exact", "drift"], ["image_embeds"]))
    onnx.save(drifted, str(tmp_path / "drifted.onnx"))
    with pytest.raises(ExportValidationError) as info:
        validate_export(ckpt, tmp_path / "drifted.onnx", cfg)
    assert len(info.value.failures) == 4  # every size; the logits pass
    assert all("output 'image_embeds' max abs diff" in f for f in info.value.failures)
