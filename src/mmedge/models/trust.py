"""Whether mmedge may import a model's own code (``--trust-code``): one environment variable, so that the export
worker and every other subprocess mmedge starts inherit the answer. A leaf module, read by ``external`` (py:
factories, Hugging Face folders with ``auto_map``) and by ``hf`` (the tokenizer)."""

from __future__ import annotations

import os

TRUST_ENV = "MMEDGE_TRUST_CODE"


def code_trusted() -> bool:
    return os.environ.get(TRUST_ENV) == "1"


def trust_code(enabled: bool = True) -> None:
    """Allow (or forbid again) importing user code, here and in the subprocesses mmedge starts."""
    if enabled:
        os.environ[TRUST_ENV] = "1"
    else:
        os.environ.pop(TRUST_ENV, None)
