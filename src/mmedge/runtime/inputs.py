"""Real inputs for timing and checks (no torch): a bundle's shipped samples, else the model's test split.

Zeros are not real inputs: attention and LSTM kernels can take different paths on them. A model with no
samples and no mmedge metadata gets synthetic inputs only with a size for every open dimension but the batch (none
is guessed), and the results say so.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmedge.errors import BundleError, MissingDependencyError
from mmedge.runtime.session import open_session

# The inputs of the chain being run when it started from a foreign ONNX model (the load.onnx step keeps them): a
# step that feeds the chain's model (bench, mobile) uses them instead of synthetic ones. Set by the pipeline.
_CHAIN_INPUTS: contextvars.ContextVar[tuple[Path, str] | None] = contextvars.ContextVar("chain_inputs", default=None)


@contextlib.contextmanager
def chain_inputs(path: Path | None, source: str = "") -> Iterator[None]:
    """Within the block, ``step_feeds`` serves the arrays of the .npz at ``path`` (None: no chain inputs)."""
    token = _CHAIN_INPUTS.set((Path(path), source) if path is not None else None)
    try:
        yield
    finally:
        _CHAIN_INPUTS.reset(token)


def split_feeds(path, data_cfg=None, n: int = 64) -> dict[str, np.ndarray]:
    """The first ``n`` questions of the model's test split, tokenized with the model's vocabulary."""
    from mmedge.data import load_dataset
    from mmedge.runtime.evaluate import ModelInputs, feeds_for, model_data_config

    sess = open_session(path, "cpu")
    split = load_dataset(model_data_config(sess, data_cfg)).test
    return feeds_for(split, ModelInputs.of(sess), np.arange(min(n, len(split))))


def bundle_feeds(bundle) -> dict[str, np.ndarray]:
    """The sample input tensors a bundle ships: of a ``Bundle`` snapshot already loaded (so that they are of the
    version its model is), or of a bundle folder."""
    from mmedge.bundle.manifest import Bundle, load_bundle

    if not isinstance(bundle, Bundle):
        with load_bundle(bundle) as loaded:
            return bundle_feeds(loaded)
    tensors = (bundle.manifest.get("samples") or {}).get("tensors")
    if not tensors:
        raise BundleError(f"bundle {bundle.root} ships no sample tensors; rebuild it with `mmedge run`.")
    return bundle.read_arrays(tensors)


def synthetic_inputs(
    path, dims: dict[str, int] | None = None, samples: int = 16, source=None
) -> tuple[dict[str, np.ndarray], str]:
    """(feeds, how they were drawn) for a chain from a model with no data (``runtime.shapes.synthetic_inputs``):
    ``samples`` rows on a dynamic batch axis, so that argmax agreement has more than one row to count; every other
    dynamic dimension needs its size in ``dims``, and those missing are refused all in one sentence, which names
    ``source`` (the user's file, of which ``path`` is a copy)."""
    from mmedge.runtime.shapes import batch_like, check_dim_names, open_dims
    from mmedge.runtime.shapes import synthetic_inputs as drawn

    sess = open_session(path, "cpu")
    source = Path(source or path)
    opened = open_dims(sess)
    check_dim_names(dict(dims or {}), opened, source.name)
    sizes = {**{n: samples for n, at in opened.items() if batch_like(at)}, **(dims or {})}
    feeds, _ = drawn(sess, sizes, source.name, f"mmedge run --model onnx:{source}")
    shown = "; ".join(f"{k} {v.dtype}[{', '.join(map(str, v.shape))}]" for k, v in feeds.items())
    given = f"; sizes from --dim {', '.join(f'{n}={v}' for n, v in dims.items())}" if dims else ""
    return feeds, f"synthetic random values, not real data ({shown}{given})"


def npz_feeds(path: Path) -> dict[str, np.ndarray]:
    """User-supplied input tensors from an .npz file (one array per model input, no pickle)."""
    from mmedge.errors import InputPathError, MmedgeError

    if not Path(path).is_file():
        raise InputPathError(f"inputs file {path} does not exist; pass an .npz with one array per model input.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as exc:
        raise MmedgeError(f"{path} is not a readable .npz of arrays ({exc}); write it with numpy.savez.") from None


def step_feeds(path, data_cfg=None) -> tuple[dict[str, np.ndarray], str]:
    """(feeds, where they came from) for a pipeline step: the chain's own inputs when it started from a foreign
    model (``chain_inputs``), the test split for a model mmedge exported, else synthetic inputs (a model from
    elsewhere, without the tokenizer metadata), which need every open dimension but the batch to have a size."""
    from mmedge.runtime.session import metadata_json

    given = _CHAIN_INPUTS.get()
    if given is not None:
        return npz_feeds(given[0]), given[1]
    if metadata_json(open_session(path, "cpu"), "mmedge.tokenizer") is None:
        return synthetic_inputs(path)
    return split_feeds(path, data_cfg), "test split samples"


def bench_inputs(given: Path, model_path: Path, bundle=None) -> tuple[dict[str, np.ndarray], str] | None:
    """(feeds, where they came from) for ``mmedge bench``: a bundle's samples (those of ``bundle``, the snapshot
    ``model_path`` was copied from, when given), else the model's test split; None when there are no real inputs
    (the caller draws synthetic ones to the sizes the user gives, or refuses)."""
    from mmedge.runtime.session import metadata_json

    if bundle is not None:
        return bundle_feeds(bundle), f"bundle samples ({given})"
    for folder in (given, model_path.parent):
        if folder.is_dir() and (folder / "manifest.json").is_file():
            return bundle_feeds(folder), f"bundle samples ({folder})"
    if metadata_json(open_session(model_path, "cpu"), "mmedge.tokenizer") is not None:
        try:
            return split_feeds(model_path), "test split samples"
        except MissingDependencyError:
            pass
    return None
