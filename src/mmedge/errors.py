"""Errors a user can cause. Each carries one sentence naming the problem and the fix.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path


class MmedgeError(Exception):
    """Base class: a problem with the user's input, files or environment."""

    exit_code = 2


class InputPathError(MmedgeError):
    """A path that does not exist or is of the wrong kind."""


class NotOnnxError(MmedgeError):
    """A file that is not a loadable ONNX model (wrong format, truncated)."""


class RecipeError(MmedgeError):
    """A recipe with an unknown key, a wrong type or an invalid value."""


class UnknownNameError(MmedgeError):
    """An unknown model family, dataset, step type or execution provider."""


class UntrustedCodeError(MmedgeError):
    """A model whose loading would import and run code the user has not said they trust."""


class EpCannotRunError(MmedgeError):
    """An ONNX model that an execution provider cannot take (an operator it lacks, or no fallback allowed)."""


class InputMismatchError(MmedgeError):
    """Inputs whose names, shapes or dtypes do not match the model."""


class ImageDecodeError(MmedgeError):
    """An image file that does not decode."""


class BundleError(MmedgeError):
    """A bundle that is incomplete, tampered with or inconsistent."""


class MissingDependencyError(MmedgeError):
    """An optional dependency that this command needs is not installed."""


class BudgetExceededError(MmedgeError):
    """A measured figure over the budget the user set (used as a CI gate)."""

    exit_code = 1


class ExportValidationError(MmedgeError):
    """The exported graph does not honour the export contract; carries every failure found."""

    def __init__(self, failures: list[str], path: str | None = None):
        self.failures = list(failures)
        where = f" for {path}" if path else ""
        lines = "\n".join(f"  - {f}" for f in self.failures)
        super().__init__(
            f"ONNX export validation failed{where} with {len(self.failures)} problem(s); "
            f"the exported model does not match PyTorch, so it was not kept:\n{lines}"
        )


class RunLockedError(MmedgeError):
    """Another mmedge run holds the run folder (``mmedge run --no-wait``)."""


class DiskFullError(MmedgeError):
    """A write that failed for want of room: the disk or the user's quota is full, or a file-size limit was hit.

    Exit code 2 like every other problem of the environment: the fix is the user's (free space, another folder),
    and running again afterwards resumes where the run stopped."""


# What the system answers when there is no room for a write: the disk is full, the file would pass a file-size
# limit (`ulimit -f`, or the largest file the file system holds), or the user's disk quota is used up.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def disk_full_errno(exc: BaseException | None) -> int | None:
    """The errno of a disk-full failure behind ``exc``, or None: an OSError's own errno, found on ``exc`` or along
    its causes, or the system's message for it quoted in a library's own exception (safetensors and torch wrap
    the OSError into their own types and keep only its text)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        text = str(exc)
        for code in DISK_FULL_ERRNOS:
            if os.strerror(code) in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def visible_folder(path: str | Path) -> Path:
    """``path``, or the nearest folder above it whose name is not hidden: what a user knows of a run's temporary
    folder (``.02-export-….tmp``) is the run folder that holds it."""
    path = Path(path)
    while path.name.startswith(".") and path.parent != path:
        path = path.parent
    return path


def disk_full(code: int, what: str, where: str | Path, elsewhere: str) -> DiskFullError:
    """The one sentence for a write that failed with ``code`` (an errno of ``DISK_FULL_ERRNOS``): what was being
    written, in which folder, and the fix — room there, or ``elsewhere`` (the option or setting that moves it)."""
    where = visible_folder(where)
    if code == errno.EFBIG:
        return DiskFullError(
            f"writing {what} in {where} passed a file-size limit (`ulimit -f`, or the file system's largest file); "
            f"raise the limit or point {elsewhere} to another file system."
        )
    room = "the disk quota is used up" if code == errno.EDQUOT else "the disk is full"
    return DiskFullError(
        f"{room} where {what} was being written ({where}); free space on it or point {elsewhere} elsewhere."
    )


@contextlib.contextmanager
def disk_full_as(what: str, where: str | Path, elsewhere: str) -> Iterator[None]:
    """Within the block, a write that fails for want of room becomes ``disk_full``'s DiskFullError naming ``what``;
    an MmedgeError raised inside (a more precise one, from a nested block) passes through unchanged."""
    try:
        yield
    except MmedgeError:
        raise
    except Exception as exc:
        code = disk_full_errno(exc)
        if code is None:
            raise
        raise disk_full(code, what, where, elsewhere) from exc


def note(message: str) -> None:
    """A one-line note to the user on stderr: something mmedge did on its own, said rather than silent."""
    print(f"note: {message}", file=sys.stderr, flush=True)


def closest(name: str, choices: list[str]) -> str:
    """A ' (did you mean X?)' suffix for the closest known name, or ''."""
    import difflib

    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def brief(exc: BaseException, limit: int = 200) -> str:
    """onnxruntime's error as one short clause: the failing node and its message, without the source-file trace,
    shortened at a word boundary."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    node = re.search(r"running (\S+) node\. Name:'([^']*)'", text)
    if "Status Message:" in text:
        message = text.split("Status Message:", 1)[1].strip()
        message = re.sub(r"^\S+:\d+ .*? was false\. ", "", message)  # the C++ file, line and failed condition
        text = f"{node.group(1)} node{f' {node.group(2)!r}' if node.group(2) else ''}: {message}" if node else message
    return clip(text, limit)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "…"
