"""Split a dual-encoder graph into the parts an app can run apart (no torch).

A dual encoder exported by mmedge outputs its normalized embeddings next to the logits (``image_embeds``, and
``text_embeds`` for a fusion head), so the graph can be cut there with ``onnx.utils.Extractor``:

    vision.onnx   image -> image_embeds
    text.onnx     input_ids, attention_mask -> text_embeds          (fusion head only)
    head.onnx     image_embeds[, text_embeds] -> logits

A zoo model fused late (effnet-minilm) outputs its towers' projections under the same names. Each part is then
judged, at fixed shapes (batch 1, the tokenizer's length), by onnxruntime's mobile usability checker for NNAPI and
both CoreML formats; the manifest names the EP each part suits (``suited_ep``: the first of NNAPI, CoreML ML
Program, CoreML NeuralNetwork that the checker rates usable, else the CPU EP), so an app can run the vision part on
the NPU and the text part on the CPU.

For zero-shot the head holds the label embeddings precomputed from the prompts; they also ship as
``label_embeddings.npy`` (classes, D) with the logit scale, so an app can score an image embedding against the
labels with one matrix product, or add labels embedded elsewhere. The parts are cut from the shipped (possibly
quantized) model and must reproduce its logits on the given inputs, or nothing is written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from mmedge.errors import MmedgeError
from mmedge.runtime.session import model_metadata, set_metadata

PARTS = {
    "vision.onnx": (("image",), ("image_embeds",)),
    "text.onnx": (("input_ids", "attention_mask"), ("text_embeds",)),
}


def split_model(model_path: Path, out_dir: Path, feeds: dict[str, np.ndarray], float_path: Path | None = None) -> dict:
    """Write the parts of ``model_path`` into ``out_dir``; returns what the manifest records about them.

    ``float_path``: the same model before quantization. Where a mobile EP cannot take the shipped vision part but
    takes that model's, its vision part ships too, as ``vision.float.onnx`` (CoreML in onnxruntime has no
    QuantizeLinear / DequantizeLinear, and runs a float graph in fp16 on the Neural Engine itself); the manifest's
    ``vision_for`` names the vision file for each mobile EP."""
    import onnx
    from onnx.utils import Extractor

    from mmedge.runtime.session import open_session

    model = onnx.load(str(model_path))
    outputs = [o.name for o in model.graph.output]
    if "image_embeds" not in outputs:
        raise MmedgeError(
            "bundle.split needs a model whose graph outputs image_embeds (a late-fusion zoo model such as "
            "effnet-minilm, or a Hugging Face model loaded with hf:PATH); this model fuses its branches inside one "
            "graph, so leave split out."
        )
    inputs = [i.name for i in model.graph.input]
    embeds = [n for n in ("image_embeds", "text_embeds") if n in outputs]
    plan = {name: io for name, io in PARTS.items() if io[1][0] in outputs}
    plan["head.onnx"] = (tuple(embeds), ("logits",))
    written = {}
    for name, (ins, outs) in plan.items():
        part = Extractor(_batch_from(model, ins, inputs)).extract_model(list(ins), list(outs))
        set_metadata(part, model_metadata(model))
        part.producer_name, part.producer_version = model.producer_name, model.producer_version
        onnx.save_model(part, str(out_dir / name))
        written[name] = {"inputs": list(ins), "outputs": list(outs), "bytes": (out_dir / name).stat().st_size}
    # The parts, run one after another, must give the whole model's logits.
    whole = open_session(model_path).run(None, {k: v for k, v in feeds.items() if k in inputs})
    full = dict(zip(outputs, whole, strict=True))
    got = {}
    for name, (ins, _) in plan.items():
        src = {k: (feeds[k] if k in feeds else got[k]) for k in ins}
        got.update(zip(plan[name][1], open_session(out_dir / name).run(None, src), strict=True))
    diff = float(np.abs(got["logits"] - full["logits"]).max())
    if diff > 1e-4 * max(1.0, float(np.abs(full["logits"]).max())):
        for name in plan:
            (out_dir / name).unlink(missing_ok=True)
        raise MmedgeError(f"the split parts give logits {diff:.2e} away from the whole model; ship it unsplit.")
    max_length = (json.loads(model_metadata(model).get("mmedge.tokenizer") or "{}")).get("max_length")
    for name in plan:
        written[name].update(suited_ep(out_dir / name, max_length))
    info: dict = {"files": written, "max_abs_diff": diff}
    if "vision.onnx" in written and float_path is not None and float_path != model_path:
        info.update(_float_vision(float_path, out_dir, feeds, written, max_length))
    if "text_embeds" not in outputs:  # zero-shot: recover the label embeddings and the scale from the head
        dim = full["image_embeds"].shape[1]
        cols = open_session(out_dir / "head.onnx").run(None, {"image_embeds": np.eye(dim, dtype=np.float32)})[0]
        scale = np.linalg.norm(cols, axis=0)  # (classes,): each label embedding has unit length
        labels = (cols / scale).T.astype(np.float32)  # (classes, D)
        np.save(out_dir / "label_embeddings.npy", labels)
        info["label_embeddings"] = {
            "file": "label_embeddings.npy",
            "shape": list(labels.shape),
            "logit_scale": float(scale.mean()),
            "logits": "logit_scale * image_embeds @ label_embeddings.T",
        }
    return info


def _float_vision(float_path: Path, out_dir: Path, feeds: dict, written: dict, max_length: int | None) -> dict:
    """Ship the float model's vision part beside the quantized one where it opens a mobile EP the quantized one
    cannot use (checked: it reproduces the float model's image embeddings); returns ``vision_for``, the vision file
    for each mobile EP (the quantized one wherever it serves)."""
    import onnx
    from onnx.utils import Extractor

    from mmedge.runtime.session import open_session

    shipped = written["vision.onnx"]["mobile_eps"]
    vision_for = {ep: "vision.onnx" for ep in PREFERENCE if shipped[ep]["verdict"] == "yes"}
    if len(vision_for) == len(PREFERENCE):
        return {"vision_for": vision_for}
    model = onnx.load(str(float_path))
    if "image_embeds" not in [o.name for o in model.graph.output]:
        return {"vision_for": vision_for}
    name, path = "vision.float.onnx", out_dir / "vision.float.onnx"
    inputs = [i.name for i in model.graph.input]
    part = Extractor(_batch_from(model, ("image",), inputs)).extract_model(["image"], ["image_embeds"])
    set_metadata(part, model_metadata(model))
    part.producer_name, part.producer_version = model.producer_name, model.producer_version
    onnx.save_model(part, str(path))
    outputs = [o.name for o in model.graph.output]
    whole = dict(zip(outputs, open_session(float_path).run(None, {k: feeds[k] for k in inputs}), strict=True))
    got = open_session(path).run(None, {"image": feeds["image"]})[0]
    diff = float(np.abs(got - whole["image_embeds"]).max())
    judged = suited_ep(path, max_length)
    opened = [ep for ep in PREFERENCE if ep not in vision_for and judged["mobile_eps"][ep]["verdict"] == "yes"]
    if diff > 1e-4 * max(1.0, float(np.abs(whole["image_embeds"]).max())) or not opened:
        path.unlink()
        return {"vision_for": vision_for}
    written[name] = {
        "inputs": ["image"],
        "outputs": ["image_embeds"],
        "bytes": path.stat().st_size,
        "variant_of": "vision.onnx",
        "precision": "float",
        "max_abs_diff": diff,
        **judged,
        "suited_ep": opened[0],
    }
    return {"vision_for": {**vision_for, **dict.fromkeys(opened, name)}}


# The mobile EPs in the order a part is offered to them: NNAPI (Android), then CoreML's formats (iOS/macOS).
PREFERENCE = ("nnapi", "coreml-mlprogram", "coreml-neuralnetwork")


def suited_ep(part: Path, max_length: int | None) -> dict:
    """The mobile usability of one part at fixed shapes (batch 1, ``max_length`` tokens), per EP, and the EP it
    suits: the first of PREFERENCE whose verdict is 'yes', else 'cpu'."""
    import onnx

    from mmedge.export.mobile import MobileConfig, fixed_dims, make_fixed, usability

    with tempfile.TemporaryDirectory(prefix="mmedge-part-") as tmp:
        fixed = Path(tmp) / part.name
        make_fixed(part, fixed, fixed_dims(onnx.load(str(part), load_external_data=False), MobileConfig(), max_length))
        eps = usability(fixed)["eps"]
    summary = {
        key: {k: r[k] for k in ("supported_nodes", "nodes", "partitions", "unsupported_ops", "verdict")}
        for key, r in eps.items()
    }
    suited = next((key for key in PREFERENCE if eps[key]["verdict"] == "yes"), "cpu")
    return {"mobile_eps": summary, "suited_ep": suited}


def _batch_from(model, part_inputs: tuple[str, ...], model_inputs: list[str]):
    """A copy of ``model`` in which the batch size is read from one of the part's own inputs.

    The exporter reads the shared batch dimension once, as Shape(first input)[0:1], and every branch uses it; a
    text part cut from that graph would still need the image. Every input has the batch on axis 0, so any of the
    part's inputs gives the same value."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    own = next((i for i in part_inputs if i in model_inputs), None)
    if own is None:  # the head's inputs are embeddings, (batch, D) as well
        own = part_inputs[0]
    for node in copy.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Shape"
            and node.input[0] in model_inputs
            and node.input[0] not in part_inputs
            and attrs.get("start", 0) == 0
            and attrs.get("end") == 1
        ):
            node.input[0] = own
    return copy
