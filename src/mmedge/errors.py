"""Errors a user can cause. Each carries one sentence naming the problem and the fix.

The CLI prints ``str(error)`` and exits with ``error.exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations

import re
import sys


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
