import onnx

from mmedge.runtime.bench import tile_batch
from mmedge.runtime.branches import META_KEY, branch_sizes, node_branches
from mmedge.runtime.inputs import split_feeds
from mmedge.runtime.profile import branch_latency


def test_export_maps_every_weighted_node_to_its_branch(tiny_onnx):
    model = onnx.load(str(tiny_onnx["cnn-lstm"]))
    assert META_KEY in {p.key for p in model.metadata_props}
    assert not any(n.metadata_props or n.doc_string for n in model.graph.node)  # no stack traces or local paths
    owner = node_branches(model)
    by_op = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, set()).add(owner[node.name])
    assert by_op["Conv"] == {"image"} and by_op["LSTM"] == {"text"}
    assert by_op["Gemm"] == {"fusion", "head"}


def test_branch_sizes_add_up_to_the_weights(tiny_onnx):
    from onnx import numpy_helper

    model = onnx.load(str(tiny_onnx["vit-transformer"]))
    sizes = branch_sizes(model)
    assert {"image", "text", "fusion", "head"} <= set(sizes)
    assert sum(sizes.values()) == sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


def test_rewritten_nodes_inherit_the_branch_they_came_from(tmp_path, tiny_onnx):
    from mmedge.compress.quantize.dynamic import DynamicQuantConfig, quantize_dynamic_model

    quantize_dynamic_model(tiny_onnx["cnn-lstm"], tmp_path / "q.onnx", DynamicQuantConfig())
    model = onnx.load(str(tmp_path / "q.onnx"))
    owner = node_branches(model)
    lstm = next(n.name for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    assert owner[lstm] == "text"
    assert {owner[n.name] for n in model.graph.node if n.op_type == "MatMulInteger"} <= {"fusion", "head"}


def test_profiler_splits_kernel_time_by_branch(tiny_onnx):
    path = tiny_onnx["cnn-lstm"]
    prof = branch_latency(path, tile_batch(split_feeds(path, n=4), 1), runs=20)
    assert {"image", "text"} <= set(prof["share"])
    assert abs(sum(prof["share"].values()) - 1) < 0.01
    assert prof["share"]["image"] > 0.05 and prof["share"]["text"] > 0.05


def test_torchscript_node_names_map_to_branches_even_without_the_parent_module():
    from onnx import helper

    from mmedge.compress.branches import branches_from_names
    from mmedge.models.spec import ModelSpec
    from mmedge.runtime.branches import OTHER

    spec = ModelSpec("hf:dual", (), (), {"image": ("hf.vision_model",), "text": ("hf.text_model",), "head": ("head",)})
    names = [
        "/text_model/encoder/layer.0/attention/self/query/MatMul",  # hf.text_model, run through a method of hf
        "/hf/vision_model/embeddings/patch_embedding/Conv",
        "/head/head.0/Gemm",
        "/Concat",
        "/text_modelling/MatMul",  # a prefix of the name, not of the module path
    ]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name=n) for n in names], "g", [], [])
    assert list(branches_from_names(helper.make_model(graph), spec).values()) == ["text", "image", "head", OTHER, OTHER]
