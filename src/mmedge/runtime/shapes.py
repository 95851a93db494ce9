"""The sizes a model leaves open, and inputs that fill them (no torch).

A dynamic dimension of a model input (a named ``dim_param``, or an unnamed one) has no size until inputs give it
one, and no size can be guessed: a text recognizer timed at width 8 ran 15× faster than on its real 48×320 images.
So a model with open dimensions runs on the user's arrays (``--inputs``) or with every size given
(``--dim NAME=SIZE``). Only a batch-like dimension (axis 0 of every input it sizes) needs no size: it is 1 here, and
``mmedge bench`` repeats the rows up to each batch it times.
"""

from __future__ import annotations

import math
import re

import numpy as np

from mmedge.errors import InputMismatchError, MmedgeError, brief

# onnxruntime's input types -> numpy dtypes of synthetic arrays
_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

SYNTHETIC = "synthetic"  # how a source string of synthetic inputs starts (the results and reports read it)
# dim_param values that name nothing: '?' is what some exporters (Paddle2ONNX among them) write for "unknown", on
# every open axis at once, and the axes it marks are independent of each other.
UNNAMED = ("", "?")
MAX_AXES = 64  # the most axes a numpy array has
# The most synthetic input bytes made for one model: 20× a 3×2048×2048 float image, far below what would exhaust the
# memory of the machines mmedge runs on.
MAX_SYNTHETIC_BYTES = 1 << 30


def dim_name(dim_param: str | None, input_name: str, axis: int) -> str:
    """The name of an open dimension: its dim_param, or ``INPUT[AXIS]`` for one that names nothing."""
    return dim_param if isinstance(dim_param, str) and dim_param not in UNNAMED else f"{input_name}[{axis}]"


def open_dims(sess) -> dict[str, list[tuple[str, int]]]:
    """Each dynamic dimension of the model inputs -> the (input, axis) places it sizes; an unnamed one is called
    ``INPUT[AXIS]`` (the name ``--dim`` takes for it)."""
    found: dict[str, list[tuple[str, int]]] = {}
    for value in sess.get_inputs():
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int) and dim >= 0:
                continue
            found.setdefault(dim_name(dim, value.name, axis), []).append((value.name, axis))
    return found


def batch_like(places: list[tuple[str, int]]) -> bool:
    """A dimension that only ever sizes axis 0: the batch."""
    return all(axis == 0 for _, axis in places)


def describe_dims(dims: dict[str, list[tuple[str, int]]]) -> str:
    """``'h' (x[2]), 'w' (x[3], y[3])``: every dimension with the places it sizes."""
    return ", ".join(f"'{name}' ({', '.join(f'{i}[{a}]' for i, a in places)})" for name, places in dims.items())


def dim_options(names) -> str:
    """``--dim h=N --dim w=N``, quoted where a shell would read the name (``'x[2]=N'``)."""
    return " ".join(f"--dim '{n}=N'" if re.search(r"[^\w.-]", n) else f"--dim {n}=N" for n in names)


def sizes_from_feeds(sess, feeds: dict[str, np.ndarray], batch: bool = False) -> dict[str, int]:
    """The size the arrays of ``feeds`` give each open dimension (the batch too when ``batch``)."""
    sizes = {}
    for name, places in open_dims(sess).items():
        if batch_like(places) and not batch:
            continue
        for value, axis in places:
            arr = feeds.get(value)
            if arr is not None and arr.ndim > axis:
                sizes[name] = int(arr.shape[axis])
                break
    return sizes


def check_dim_names(dims: dict[str, int], opened: dict[str, list[tuple[str, int]]], label: str) -> None:
    """Every ``--dim`` names an open dimension of the model, with a size of at least 1."""
    for name, value in dims.items():
        if name not in opened:
            raise MmedgeError(
                f"--dim {name} is not a dynamic dimension of {label} (it has: {', '.join(opened) or 'none'}); "
                "remove it or fix its name."
            )
        if value < 1:
            raise MmedgeError(f"--dim {name}={value} is below 1; every size must be at least 1.")


def synthetic_inputs(sess, dims: dict[str, int], label: str, command: str) -> tuple[dict[str, np.ndarray], str]:
    """(feeds, where they came from): random values of the model's input shapes, every open dimension sized by
    ``dims`` (a batch-like one defaults to 1). Refuses, naming every open dimension at once, when a size is missing;
    ``command`` (e.g. ``mmedge bench m.onnx``) starts the example in that sentence."""
    opened = open_dims(sess)
    missing = {n: p for n, p in opened.items() if n not in dims and not batch_like(p)}
    if missing:
        raise MmedgeError(
            f"{label} has dynamic dimensions with no known size, {describe_dims(missing)}, and no real inputs to "
            f"take them from; give each a size, e.g. `{command} {dim_options(missing)}`, or pass real inputs with "
            "--inputs FILE.npz."
        )
    rng = np.random.default_rng(0)
    feeds, shown = {}, []
    for value in sess.get_inputs():
        dtype = _NUMPY.get(value.type)
        if dtype is None:
            raise MmedgeError(
                f"input '{value.name}' of {label} has type {value.type}, for which mmedge makes no synthetic values; "
                "pass real inputs with --inputs FILE.npz."
            )
        shape = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int) and dim >= 0:
                shape.append(dim)
                continue
            shape.append(dims.get(dim_name(dim, value.name, axis), 1))
        check_synthetic_shape(value.name, shape, dtype, label)
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[value.name] = np.ones(shape, dtype=dtype)
        shown.append(f"{value.name} {np.dtype(dtype).name}[{', '.join(map(str, shape))}]")
    given = f"; sizes from --dim {', '.join(f'{n}={v}' for n, v in dims.items())}" if dims else ""
    return feeds, f"{SYNTHETIC} random values, not real data ({'; '.join(shown)}{given})"


def check_synthetic_shape(name: str, shape: list[int], dtype, label: str) -> None:
    """Refuse, in a sentence, an input whose synthetic array numpy cannot hold (more than its 64 axes) or that
    would take more than MAX_SYNTHETIC_BYTES: a fixed size of 2**40 in a damaged or hostile model would otherwise
    end in a MemoryError, or in the system killing the process part-way through filling the array."""
    if len(shape) > MAX_AXES:
        raise MmedgeError(
            f"input '{name}' of {label} has {len(shape)} axes, more than the {MAX_AXES} an array can have, so mmedge "
            "cannot make synthetic values for it; check the model's input shapes."
        )
    size = math.prod(shape) * np.dtype(dtype).itemsize
    if size > MAX_SYNTHETIC_BYTES:
        shown = ", ".join(map(str, shape))
        raise MmedgeError(
            f"input '{name}' of {label} would need {size / 2**30:,.1f} GiB of synthetic values (shape [{shown}]), "
            f"more than the {MAX_SYNTHETIC_BYTES // 2**30} GiB mmedge makes; check the model's fixed sizes and the "
            "--dim sizes, or pass real inputs with --inputs FILE.npz."
        )


def is_synthetic(source: str | None) -> bool:
    return bool(source) and source.startswith(SYNTHETIC)


def shapes_text(feeds: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{name} {list(arr.shape)}" for name, arr in feeds.items())


def trial_run(sess, feeds: dict[str, np.ndarray], source: str, label: str) -> None:
    """Run ``feeds`` once, so that inputs the model cannot take fail here in one sentence, before anything is
    timed or written: synthetic inputs say that real ones are needed, given ones say what onnxruntime refused."""
    import onnxruntime as ort

    from mmedge.runtime.session import check_feeds

    check_feeds(sess, feeds)
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the failure is said below, once; onnxruntime's own log line would repeat it
    try:
        sess.run(None, feeds, quiet)
    except Exception as exc:
        if is_synthetic(source):
            raise InputMismatchError(
                f"{label} does not run on synthetic inputs of shapes {shapes_text(feeds)} (onnxruntime: {brief(exc)}), "
                "so the model's dimensions are inconsistent with the inputs given; pass real inputs with "
                "--inputs FILE.npz."
            ) from None
        raise InputMismatchError(
            f"{label} does not run on the inputs from {source}, shapes {shapes_text(feeds)} (onnxruntime: "
            f"{brief(exc)}); pass arrays of the sizes the model was made for."
        ) from None
