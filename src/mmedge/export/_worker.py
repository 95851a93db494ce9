"""Export worker, run as ``python -m mmedge.export._worker CHECKPOINT OUT.onnx OPSET`` in a fresh process.

A fresh process per export because torch.onnx keeps state between exports: exporting an LSTM model a second
time in one process silently fixes the text length. The worker writes OUT.onnx with the weights inside and
mmedge metadata in ``metadata_props``; the parent validates it.
"""

from __future__ import annotations

import json
import sys
import warnings


def main(argv: list[str]) -> int:
    checkpoint, out, opset = argv[0], argv[1], int(argv[2])
    warnings.filterwarnings("ignore")
    import logging

    logging.disable(logging.WARNING)
    import onnx
    import torch

    from mmedge import __version__
    from mmedge.compress.branches import META_KEY, branches_from_scopes
    from mmedge.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model, spec = ckpt.model, ckpt.spec
    # Example inputs away from 0/1 so that torch.export does not specialize the dynamic sizes.
    gen = torch.Generator().manual_seed(0)
    batch, length = 3, spec.text_max_length
    image = torch.rand(batch, *spec.input("image").shape[1:], generator=gen)
    ids = torch.randint(2, len(ckpt.vocab), (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    ids[0, length // 2 :], mask[0, length // 2 :] = 0, 0
    dim_batch = torch.export.Dim("batch", min=1, max=65536)
    dim_text = torch.export.Dim("text_length", min=1, max=spec.text_max_length)
    dynamic_shapes = {
        "image": {0: dim_batch},
        "input_ids": {0: dim_batch, 1: dim_text},
        "attention_mask": {0: dim_batch, 1: dim_text},
    }
    program = torch.onnx.export(
        model,
        (image, ids, mask),
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
    # Name the dynamic axes as the ModelSpec does (the exporter names them after the Dims or s0, s1, ...).
    for value, tensor in zip(
        list(proto.graph.input) + list(proto.graph.output), list(spec.inputs) + list(spec.outputs), strict=True
    ):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if isinstance(tensor.shape[axis], str):
                dim.dim_param = tensor.shape[axis]
    meta = {
        "mmedge.version": __version__,
        "mmedge.family": ckpt.family,
        "mmedge.options": json.dumps(ckpt.options),
        "mmedge.labels": json.dumps(list(ckpt.labels)),
        "mmedge.preprocessing": json.dumps(spec.image.to_json()),
        "mmedge.tokenizer": json.dumps(ckpt.vocab.to_json()),
        "mmedge.spec": json.dumps(spec.to_json()),
        "mmedge.data": json.dumps(ckpt.extra.get("metrics", {}).get("data", {})),
        "mmedge.reference_accuracy": json.dumps(ckpt.extra.get("metrics", {}).get("test", {}).get("accuracy")),
        # which modality branch each node belongs to, for per-branch quantization and reports
        META_KEY: json.dumps(branches_from_scopes(proto, spec)),
    }
    # The exporter annotates every node with its Python stack trace and module scopes: useless to a runtime,
    # a third of a small model's file, and it leaks the build machine's paths. The branch map above keeps
    # what mmedge needs of them.
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "mmedge"
    proto.producer_version = __version__
    onnx.save_model(proto, out, save_as_external_data=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
