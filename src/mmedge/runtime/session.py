"""ONNX Runtime sessions with explicit providers and checked inputs (made with ``options``), and the ONNX file
helpers every side shares: a model's metadata as a dict, and writing a model file atomically (no torch)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmedge.errors import EpCannotRunError, InputMismatchError, InputPathError, MmedgeError, NotOnnxError, brief
from mmedge.runtime.options import session_options
from mmedge.runtime.providers import require

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(bool)": "bool",
    "tensor(double)": "float64",
}


def check_onnx_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputPathError(f"model file {path} does not exist; pass the path of an .onnx file.")
    if path.is_dir():
        raise InputPathError(f"{path} is a folder; pass the path of an .onnx file (or use a bundle command).")
    return path


@functools.cache
def apply_process_defaults() -> None:
    """Open one tiny CPU session with DEFAULT_SESSION_CONFIG, so that what onnxruntime applies once per process
    (denormals as zero on the calling thread) is mmedge's setting, whichever library opens the next session."""
    import onnxruntime as ort

    from mmedge.runtime.providers import relu_model

    ort.InferenceSession(relu_model(), session_options(), providers=["CPUExecutionProvider"])


def open_session(
    path: str | Path,
    ep: str = "cpu",
    threads: int = 0,
    allow_fallback: bool = False,
    profile_prefix: str | None = None,
    config: dict[str, str] | None = None,
    model: bytes | None = None,
):
    """An InferenceSession on exactly ``ep`` (no silent CPU fallback unless ``allow_fallback``); raises if the file
    is not a loadable ONNX model, or if the EP cannot take it. With ``model`` the session is made from those bytes
    (a bundle's snapshot), and ``path`` only names the model in messages."""
    import onnxruntime as ort

    path = check_onnx_path(path) if model is None else Path(path)
    provider = require(ep)
    config = dict(config or {})
    if provider.name != "cpu" and not allow_fallback:
        config["session.disable_cpu_ep_fallback"] = "1"
    opts = session_options(threads, config=config, profile_prefix=profile_prefix)
    try:
        sess = ort.InferenceSession(
            str(path) if model is None else model, opts, providers=[(provider.ort_name, dict(provider.options))]
        )
    except Exception as exc:  # ORT raises several private exception types for a bad file
        msg = brief(exc)
        if model is None:
            refuse_external_data(path)
        if _is_onnx(path if model is None else model):
            fix = (
                "pass --allow-fallback to let the CPU EP run the nodes it cannot take"
                if provider.name != "cpu" and not allow_fallback
                else "re-export the model with standard ONNX operators, or choose another EP"
            )
            raise EpCannotRunError(
                f"execution provider '{provider.name}' cannot run {path.name}: onnxruntime refused it ({msg}); {fix}."
            ) from None
        raise NotOnnxError(
            f"{path} is not a loadable ONNX model: it is another kind of file, or truncated or "
            f"damaged ({msg}); pass a complete .onnx file, e.g. one written by `mmedge export`."
        ) from None
    ran = sess.get_providers()
    if ran[0] != provider.ort_name:
        raise MmedgeError(
            f"onnxruntime did not place the model on '{provider.name}' (it used {ran}); "
            "results would be mislabelled, so nothing was measured."
        )
    return sess


def _is_onnx(source: Path | bytes) -> bool:
    """Whether the file (or the bytes) parses as an ONNX model (so a session failure is the EP's, not the file's)."""
    import onnx

    try:
        if isinstance(source, bytes):
            model = onnx.load_model_from_string(source)
        else:
            model = onnx.load(str(source), load_external_data=False)
    except Exception:
        return False
    return len(model.graph.node) > 0


def refuse_external_data(path: Path) -> None:
    """Raise NotOnnxError in one sentence when the model at ``path`` keeps weights in external data that lies
    outside its folder, is missing or is too short (``external_data_problem``)."""
    problem = external_data_problem(path)
    if problem:
        raise NotOnnxError(
            f"{path} keeps weights in external data that {problem}; keep every data file of the model beside it, "
            "inside its folder, as the exporter wrote them."
        )


def external_data_problem(path: Path) -> str | None:
    """What is wrong with the external data of the model at ``path``, as the end of a sentence, or None: a
    location outside the model's folder (absolute, through ``..`` or a link), a missing file, or an offset and
    length past the file's end. onnxruntime refuses such a model too, but in words that blame the operators."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: the caller says so
        return None
    folder = path.resolve().parent
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            problem = _external_tensor_problem(tensor, folder)
            if problem:
                return problem
    return None


def _external_tensor_problem(tensor, folder: Path) -> str | None:
    """``external_data_problem`` for one tensor whose data is external, its model in ``folder``."""
    from mmedge.errors import clip

    info = {e.key: e.value for e in tensor.external_data}
    where = info.get("location", "")
    named = f"{clip(where, 80)!r}, for tensor '{clip(tensor.name, 80)}'"
    try:
        target = (folder / where).resolve() if where and "\0" not in where else None
        if target is None or Path(where).is_absolute() or not target.is_relative_to(folder):
            return f"lie outside its folder ({named})"
        if not target.is_file():
            return f"is missing ({named})"
        size = target.stat().st_size
    except OSError as exc:  # a name too long for the file system, a loop of links
        return f"cannot be opened ({named}: {exc.strerror})"
    try:
        end = int(info.get("offset") or 0) + int(info.get("length") or 0)
    except ValueError:
        return f"has no readable offset or length ({named})"
    return (
        f"ends past its file ({named}: the file holds {size} bytes, the tensor ends at {end})" if end > size else None
    )


def model_metadata(source) -> dict[str, str]:
    """A model's metadata props (labels, tokenizer, preprocessing, ...) as a dict, from an InferenceSession, a loaded
    onnx ModelProto or a model file."""
    if hasattr(source, "get_modelmeta"):
        return dict(source.get_modelmeta().custom_metadata_map)
    if not hasattr(source, "metadata_props"):
        import onnx

        source = onnx.load(str(source), load_external_data=False)
    return {p.key: p.value for p in source.metadata_props}


def metadata_json(source, key: str, default=None):
    """One metadata value, JSON-decoded, of a session, ModelProto or model file; ``default`` where it is absent."""
    raw = model_metadata(source).get(key)
    return default if raw is None else json.loads(raw)


def set_metadata(model, meta: dict[str, str]) -> None:
    """Replace, in place, the metadata props of an onnx ModelProto with ``meta``."""
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write to. When the block ends without error the file replaces ``path``
    in one rename, so a reader (or a run that was interrupted) never sees a half-written model; otherwise it is
    removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; a shipped model is readable
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``): a reader sees one
    or the other, never neither. False where the system or the file system has no such call."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out`` (same parent folder). Where the system can swap two paths in one
    step, a reader of ``out`` finds a whole folder throughout, the old one or the new one, and the old one stays
    beside it as ``.<name>.old`` until the next replacement, so that a reader who opened it just before the swap can
    finish. Elsewhere the old one is moved aside first and removed: for that instant ``out`` is missing."""
    new, out = Path(new), Path(out)
    old = out.with_name(f".{out.name}.old")
    if out.exists() and _exchange(new, out):
        shutil.rmtree(old, ignore_errors=True)  # the version before the previous one
        new.rename(old)  # ``new`` holds the previous version now
        return
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def save_onnx(model, path: str | Path) -> Path:
    """Write an onnx ModelProto to ``path`` atomically (see ``replacing``), weights inside the file."""
    import onnx

    with replacing(path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
    return Path(path)


def check_feeds(sess, feeds: dict[str, np.ndarray]) -> None:
    """Every input present, with the model's dtype and rank, and fixed dims matching; all problems at once."""
    problems = []
    inputs = {i.name: i for i in sess.get_inputs()}
    for name in inputs.keys() - feeds.keys():
        problems.append(f"input '{name}' is missing")
    for name in feeds.keys() - inputs.keys():
        problems.append(f"'{name}' is not an input of this model (inputs: {', '.join(inputs)})")
    for name, arr in feeds.items():
        if name not in inputs:
            continue
        want_dtype = _ORT_DTYPES.get(inputs[name].type, inputs[name].type)
        if str(arr.dtype) != want_dtype:
            problems.append(f"input '{name}' has dtype {arr.dtype}, the model needs {want_dtype}")
        shape = inputs[name].shape
        if arr.ndim != len(shape):
            problems.append(
                f"input '{name}' has shape {list(arr.shape)}, the model needs rank {len(shape)} {_show(shape)}"
            )
            continue
        for axis, (got, want) in enumerate(zip(arr.shape, shape, strict=True)):
            if isinstance(want, int) and got != want:
                problems.append(
                    f"input '{name}' has size {got} on axis {axis}, the model needs {want} (shape {_show(shape)})"
                )
    if problems:
        raise InputMismatchError(
            "inputs do not match the model: "
            + "; ".join(problems)
            + "; feed arrays shaped as `mmedge inspect MODEL` shows."
        )


def _show(shape) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"


def run(sess, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    check_feeds(sess, feeds)
    try:
        return sess.run(None, feeds)
    except Exception as exc:
        raise InputMismatchError(
            f"onnxruntime rejected the inputs ({brief(exc)}); feed arrays shaped as `mmedge inspect MODEL` shows."
        ) from None
