"""Calibration: the model inputs quantization calibrates on, and the activation ranges ORT's calibrator reads from
them (static QDQ ranges; smoothing and keep_float in dynamic quantization use the inputs alone).

Facts these defaults rest on (measured on this stack): ``quantize_static``'s Entropy calibration with ORT's default
bins equals MinMax (one candidate), so the bin counts are passed explicitly; a ``-inf`` attention mask makes every
range infinite, which is refused here with the fix rather than left to ruin accuracy.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from mmedge.errors import MmedgeError


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax",
        description="Activation range estimate: min/max seen; the KL-optimal range (entropy); or a percentile of "
        "|x|. Entropy and percentile get `num_bins` (ORT's quantize_static would silently use its default).",
    )
    samples: int = Field(256, ge=1, description="Calibration samples drawn (seeded) from the training split.")
    num_bins: int = Field(2048, ge=128, description="Histogram bins for entropy and percentile calibration.")
    num_quantized_bins: int = Field(128, ge=2, description="Quantized bins the entropy search compares against.")
    percentile: float = Field(99.999, gt=90, le=100, description="Percentile of |x| kept by 'percentile'.")
    batch_size: int = Field(32, ge=1, description="Samples per calibration run.")
    chunk: int = Field(
        128,
        ge=1,
        description="Samples whose intermediate outputs are held at once; histograms are merged between chunks, so "
        "memory stays bounded whatever `samples` is.",
    )
    data: Path | None = Field(
        None,
        description="An .npz with one array per model input, named as the model's inputs, to calibrate on instead.",
    )
    seed: int = Field(0, description="Seeds the draw from the training split.")


def calibration_feeds(path: Path, cfg: CalibrationConfig, data_cfg) -> dict[str, np.ndarray]:
    """Model inputs to calibrate on, named as the inputs of the model at ``path``: the given .npz, or a seeded draw
    from the training split, stratified by label. Refuses a set that is empty, misses an input or holds NaN/inf."""
    from mmedge.runtime.inputs import npz_feeds
    from mmedge.runtime.session import open_session

    sess = open_session(path)
    inputs = [i.name for i in sess.get_inputs()]
    if cfg.data is not None:
        feeds, source = npz_feeds(cfg.data), f"the calibration data {cfg.data}"
    else:
        feeds, source = _training_draw(sess, cfg, data_cfg), "the calibration draw from the training split"
    missing, extra = [n for n in inputs if n not in feeds], [n for n in feeds if n not in inputs]
    if missing or extra:
        raise MmedgeError(
            f"{source} holds {', '.join(map(repr, feeds)) or 'nothing'} but the model's inputs are "
            f"{', '.join(map(repr, inputs))}; give calibration.data an .npz with one array per model input."
        )
    n = min((len(v) for v in feeds.values()), default=0)
    if n == 0:
        raise MmedgeError("the calibration set is empty; give calibration.data an .npz with samples, or samples >= 1.")
    for name, value in feeds.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise MmedgeError(
                f"the calibration input '{name}' contains NaN or inf; clean the calibration data (they would make "
                "every range infinite)."
            )
    return {k: v[: cfg.samples] for k, v in feeds.items()}


def _training_draw(sess, cfg: CalibrationConfig, data_cfg) -> dict[str, np.ndarray]:
    """``cfg.samples`` training questions as the model's inputs. The dataset's images go to the model's image
    input whatever its name (ModelInputs finds its one float input of rank 4, (B, C, H, W))."""
    from mmedge.data import load_dataset
    from mmedge.data.user import stratified_subset
    from mmedge.runtime.evaluate import ModelInputs, feeds_for, model_data_config

    split = load_dataset(model_data_config(sess, data_cfg)).train
    rows = stratified_subset(split.labels, cfg.samples, cfg.seed)  # every answer in its share, seeded
    return feeds_for(split, ModelInputs.of(sess), rows)


class CalibrationReader:
    """onnxruntime CalibrationDataReader over in-memory feeds, in batches."""

    def __init__(self, feeds: dict[str, np.ndarray], batch_size: int):
        n = len(next(iter(feeds.values())))
        self.batches = [{k: v[s : s + batch_size] for k, v in feeds.items()} for s in range(0, n, batch_size)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]

    def rewind(self):
        self.i = 0


@contextlib.contextmanager
def quiet():
    """ORT's quantization tools print progress and log advice on the root logger; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def calibration_method(cfg: CalibrationConfig):
    """ORT's CalibrationMethod for ``cfg.method``."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}.get(
        cfg.method, CalibrationMethod.Percentile
    )


def calibrate(prepared: Path, feeds: dict[str, np.ndarray], cfg: CalibrationConfig, op_types, cache: Path) -> Path:
    """Activation ranges of ``prepared`` written to ``cache`` (ORT's calibration cache format), chunk by chunk."""
    import tempfile

    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options = {"num_bins": cfg.num_bins, "num_quantized_bins": cfg.num_quantized_bins, "percentile": cfg.percentile}
    n = len(next(iter(feeds.values())))
    with tempfile.TemporaryDirectory(prefix="mmedge-calib-") as tmp:
        calibrator = create_calibrator(
            prepared,
            list(op_types),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibration_method(cfg),
            extra_options=options,
        )
        with quiet():
            for start in range(0, n, cfg.chunk):  # bounded memory: intermediate outputs of one chunk at a time
                chunk = {k: v[start : start + cfg.chunk] for k, v in feeds.items()}
                calibrator.collect_data(CalibrationReader(chunk, cfg.batch_size))
            ranges = calibrator.compute_data()
    for name, r in ranges.data.items():
        if not np.isfinite(np.asarray(r.range_value, dtype=np.float64)).all():
            raise MmedgeError(
                f"calibration gave tensor '{name}' a non-finite range; a large-negative mask or overflow feeds it — "
                "leave that op type out of op_types."
            )
    save_tensors_data(ranges, cache)
    return cache
