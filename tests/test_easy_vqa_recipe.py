"""The built-in easy-vqa recipe, every step of it, on a few hundred questions at a small input size."""

from dataclasses import replace

import numpy as np
import pytest

from mmedge.bundle.manifest import load_bundle
from mmedge.models.checkpoint import load_checkpoint
from mmedge.models.efficientnet_lite import LITE0_BLOCKS
from mmedge.pipeline import run_recipe
from mmedge.recipe import load_recipe

pytestmark = pytest.mark.slow  # trains, prunes, exports and quantizes pretrained towers


@pytest.fixture
def small_easy_vqa(monkeypatch):
    """easy-VQA cut to 600 training and 200 validation, test and paraphrased questions, wherever mmedge loads it."""
    import mmedge.data
    import mmedge.runtime.evaluate
    import mmedge.train

    full = mmedge.data.load_dataset

    def load(cfg):
        data = full(cfg)
        rng = np.random.default_rng(0)

        def cut(split, n):
            return split.subset(np.sort(rng.choice(len(split), n, replace=False)))

        val_rows = np.sort(rng.choice(len(data.val), 200, replace=False))
        test_rows = np.sort(rng.choice(len(data.test), 200, replace=False))
        return replace(
            data,
            train=cut(data.train, 600),
            val=data.val.subset(val_rows),
            test=data.test.subset(test_rows),
            paraphrase=data.paraphrase.subset(test_rows),
            val_paraphrase=data.val_paraphrase.subset(val_rows),
        )

    for module in (mmedge.data, mmedge.train, mmedge.runtime.evaluate):
        monkeypatch.setattr(module, "load_dataset", load)


def test_the_easy_vqa_recipe_prunes_the_pretrained_towers_and_ships_a_bundle(tmp_path, small_easy_vqa):
    def smaller(data):
        data["model"]["options"] = {"image_size": 32}
        steps = {s["type"]: s for s in data["steps"]}
        steps["train"].update(epochs=2)
        steps["prune.structured"].update(iterative_steps=1, finetune_epochs=1, vocab_size=4000)
        steps["distill"].update(epochs=1)
        steps["quantize.auto"].update(rounds=6)  # timing that decides nothing here: fewer rounds
        steps["bench"].update(runs=30, warmup=3)
        data["output"], data["workdir"] = str(tmp_path / "bundle"), str(tmp_path / "runs")
        return data

    recipe = load_recipe("easy-vqa", edit=smaller)
    records = run_recipe(recipe, progress="off", allow_over_budget=True)
    assert [r.config.type for r in records] == [s.type for s in recipe.steps]
    by_type = {r.config.type: r for r in records}
    pruned = by_type["prune.structured"].result.metrics
    assert pruned.options_after["text_layers"] == 2 and pruned.vocabulary["pieces_after"] < 6000
    assert pruned.options_after["image_blocks"][-1][0] < 1152  # the last block's expansion lost channels
    assert pruned.paraphrase is not None
    assert all("similarity_distance" in d for d in pruned.dropped_blocks["text"])
    # the pruned checkpoint rebuilds strictly from its options (export reloads it and checks ONNX against it)
    model = load_checkpoint(by_type["prune.structured"].result.artifact.path).model
    # expansions and depthwise convs lost channels together
    for old, new in zip(LITE0_BLOCKS, model.image_tower.current_blocks(), strict=True):
        assert new.expand < old.expand and (new.kernel, new.stride) == (old.kernel, old.stride)
    for block in model.image_tower.blocks:
        dw = block.depthwise.conv
        assert dw.groups == dw.in_channels == dw.out_channels
    assert len(model.text_tower.layers) == 2 and model.text_tower.position.num_embeddings == 24
    # the trained model taught the pruned one on cached tower outputs, which validation's loss judged too
    distilled = by_type["distill"].result.metrics
    assert distilled.parameters == pruned.parameters_after and distilled.history[0].val_loss is not None
    assert distilled.val_paraphrase is not None and distilled.text_emptied is not None
    assert by_type["optimize"].result.metrics.nodes_after <= by_type["optimize"].result.metrics.nodes_before
    bundle = load_bundle(tmp_path / "bundle")
    metrics = bundle.manifest["metrics"]
    assert metrics["reference_onnx"]["size_ratio"] < 0.35  # against the fp32 ONNX of the trained model
    assert set(metrics["reference_onnx"]["latency_ratio"]) >= {"1"}
    assert metrics["accuracy"]["paraphrase"]["accuracy"] > 0
    assert metrics["compression"]["structured_pruning"]["vocabulary"] == pruned.vocabulary
    # split into the parts an app runs apart, each judged for the mobile EPs at fixed shapes
    parts = bundle.manifest["parts"]["files"]
    assert set(parts) == {"vision.onnx", "text.onnx", "head.onnx", "vision.float.onnx"}
    assert parts["vision.onnx"]["outputs"] == ["image_embeds"] and parts["text.onnx"]["outputs"] == ["text_embeds"]
    for part in parts.values():
        assert part["suited_ep"] in ("nnapi", "coreml-mlprogram", "coreml-neuralnetwork", "cpu")
        assert part["mobile_eps"]["nnapi"]["nodes"] > 0
    assert parts["text.onnx"]["suited_ep"] == "cpu"  # LayerNormalization and Erf: no mobile EP takes them all
    assert (tmp_path / "bundle" / "vision.onnx").is_file()
    # CoreML takes no QDQ: the float vision part, cut from the model before quantization, ships for it
    vision_for = bundle.manifest["parts"]["vision_for"]
    assert vision_for["nnapi"] == "vision.onnx" and vision_for["coreml-mlprogram"] == "vision.float.onnx"
    float_part = parts["vision.float.onnx"]
    assert float_part["variant_of"] == "vision.onnx" and float_part["suited_ep"].startswith("coreml")
    assert float_part["mobile_eps"]["coreml-mlprogram"]["partitions"] <= 3
    assert (tmp_path / "bundle" / "vision.float.onnx").stat().st_size > parts["vision.onnx"]["bytes"]
