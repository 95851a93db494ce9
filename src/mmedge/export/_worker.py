"""Export worker, run as ``python -m mmedge.export._worker CHECKPOINT OUT.onnx OPSET [dynamo|torchscript]`` in a
fresh process.

A fresh process per export because torch.onnx keeps state between exports: exporting an LSTM model a second
time in one process silently fixes the text length. The worker writes OUT.onnx with the weights inside and
mmedge metadata in ``metadata_props``; the parent validates it.
"""

from __future__ import annotations

import json
import sys
import warnings

# The worker's exit code when a write failed for want of room, with ``DISK_FULL_MARK`` and the errno as its last
# line on stderr: the parent then says so in one sentence instead of blaming the exporter.
DISK_FULL_EXIT = 75
DISK_FULL_MARK = "mmedge-export-disk-full:"


def run(argv: list[str]) -> int:
    """``main``, with a disk-full failure anywhere in it (saving the model, or a cache torch writes) reported as
    ``DISK_FULL_EXIT`` rather than as a traceback."""
    from mmedge.errors import disk_full_errno

    try:
        return main(argv)
    except Exception as exc:
        code = disk_full_errno(exc)
        if code is None:
            raise
        print(f"{DISK_FULL_MARK} {code}", file=sys.stderr, flush=True)
        return DISK_FULL_EXIT


def main(argv: list[str]) -> int:
    checkpoint, out, opset = argv[0], argv[1], int(argv[2])
    exporter = argv[3] if len(argv) > 3 else "dynamo"
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import onnx
    import torch

    from mmedge import __version__
    from mmedge.compress.branches import branches_from_names, branches_from_scopes
    from mmedge.models.checkpoint import load_checkpoint
    from mmedge.runtime.branches import META_KEY
    from mmedge.runtime.session import set_metadata

    ckpt = load_checkpoint(checkpoint)
    model, spec = ckpt.model, ckpt.spec
    if hasattr(model, "export_embeddings"):
        model.export_embeddings = True  # the graph also gives the embeddings the bundle splits at
    args, dynamic_shapes = example_inputs(spec, len(ckpt.vocab))
    if exporter == "torchscript":
        proto = torchscript_export(model, args, spec, opset)
        branch_map = branches_from_names(proto, spec)
    else:
        program = torch.onnx.export(
            model,
            args,
            None,
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
        proto = program.model_proto
        branch_map = branches_from_scopes(proto, spec)
    # Name the dynamic axes as the ModelSpec does (the exporter names them after the Dims or s0, s1, ...).
    for value, tensor in zip(
        list(proto.graph.input) + list(proto.graph.output), list(spec.inputs) + list(spec.outputs), strict=True
    ):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if isinstance(tensor.shape[axis], str):
                dim.dim_param = tensor.shape[axis]
    meta = {
        "mmedge.version": __version__,
        "mmedge.family": spec.family,
        "mmedge.options": json.dumps(ckpt.options),
        "mmedge.labels": json.dumps(list(ckpt.labels)),
        "mmedge.preprocessing": json.dumps(spec.image.to_json()),
        "mmedge.tokenizer": json.dumps(ckpt.vocab.to_json()),
        "mmedge.spec": json.dumps(spec.to_json()),
        "mmedge.data": json.dumps(ckpt.extra.get("metrics", {}).get("data", {})),
        "mmedge.reference_accuracy": json.dumps(ckpt.extra.get("metrics", {}).get("test", {}).get("accuracy")),
        # which modality branch each node belongs to, for per-branch quantization and reports
        META_KEY: json.dumps(branch_map),
    }
    # The exporter annotates every node with its Python stack trace and module scopes: useless to a runtime,
    # a third of a small model's file, and it leaks the build machine's paths. The branch map above keeps
    # what mmedge needs of them.
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    if hasattr(model, "task"):
        meta["mmedge.task"] = json.dumps(task_description(model.task))
    set_metadata(proto, meta)
    proto.producer_name = "mmedge"
    proto.producer_version = __version__
    onnx.save_model(proto, out, save_as_external_data=False)
    return 0


def torchscript_export(model, args, spec, opset: int):
    """The TorchScript exporter's graph (a ModelProto), Hugging Face submodules switched to eager attention: the
    form of attention that ONNX Runtime's transformer fusions match."""
    import io

    import onnx
    import torch

    for module in model.modules():
        if hasattr(module, "set_attn_implementation") and hasattr(module, "config"):
            module.set_attn_implementation("eager")
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        args,
        buffer,
        dynamo=False,
        opset_version=opset,
        input_names=[t.name for t in spec.inputs],
        output_names=[t.name for t in spec.outputs],
        dynamic_axes={t.name: t.dynamic_axes() for t in spec.inputs + spec.outputs if t.dynamic_axes()},
    )
    return onnx.load_from_string(buffer.getvalue())


def example_inputs(spec, vocab_size: int):
    """Example inputs for every input of the spec, and the dynamic shapes its named axes ask for.

    Sizes away from 0/1 so that torch.export does not specialize the dynamic dimensions."""
    import torch

    gen = torch.Generator().manual_seed(0)
    dims: dict = {}
    args, shapes = [], {}
    for t in spec.inputs:
        size = [(3 if d == "batch" else spec.text_max_length) if isinstance(d, str) else d for d in t.shape]
        if t.dtype.startswith("float"):
            x = torch.rand(*size, generator=gen)
        elif t.name == "attention_mask":
            x = torch.ones(*size, dtype=torch.int64)
            x[0, size[1] // 2 :] = 0
        else:
            x = torch.randint(2, max(3, min(vocab_size, 1000)), size, generator=gen)
        args.append(x)
        shapes[t.name] = {}
        for axis, name in t.dynamic_axes().items():
            if name not in dims:
                top = spec.text_max_length if name == "text_length" else 65536
                dims[name] = torch.export.Dim(name, min=1, max=top)
            shapes[t.name][axis] = dims[name]
    return tuple(args), shapes


def task_description(task: str) -> dict:
    if task == "zero-shot":
        return {
            "type": "zero-shot-image-classification",
            "output": "logits = scaled cosine similarity of the image with each label's prompt; argmax is the label",
        }
    return {"type": "image-text-classification", "output": "logits over labels; argmax is the answer"}


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
