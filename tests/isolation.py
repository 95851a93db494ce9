"""Tests write only under their own tmp folders: two guards that conftest.py wires in.

1. ``WorkingTreeWrites``: a Python audit hook sees every file this test process opens for writing, creates, moves
   or removes (``open``, ``os.mkdir``, ``os.rename``, ``shutil.rmtree``, ...). One inside the repository (bytecode
   and tool caches aside) fails the test phase that did it, naming the path. It cannot see what a child process
   writes, so tests run their subprocesses in ``tmp_path``.
2. ``frozen``: a fingerprint (names, sizes, modification times) of a module- or session-scoped fixture's output,
   checked when the fixture ends. Several tests read that output; one that changed it would make the others'
   results depend on the order they ran in, so a test that needs to change it copies it first.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

# Written inside the repository by the interpreter or by tools, never by a test: bytecode, pytest's and linters' caches.
IGNORED_PARTS = frozenset({"__pycache__", ".pytest_cache", ".ruff_cache", ".import_linter_cache"})

# pytest writes a new .pytest_cache into a staging folder of this prefix, then renames it into place.
CACHE_STAGING = "pytest-cache-files-"

# audit event -> positions of its path arguments that it writes (creates, replaces, removes or changes)
_PATH_ARGS = {
    "open": (0,),
    "os.mkdir": (0,),
    "os.rename": (0, 1),  # also raised by os.replace
    "os.remove": (0,),  # also raised by os.unlink
    "os.rmdir": (0,),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.chmod": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "shutil.copyfile": (1,),
    "shutil.copytree": (1,),
    "shutil.move": (0, 1),
    "shutil.rmtree": (0,),
    "tempfile.mkstemp": (0,),
    "tempfile.mkdtemp": (0,),
}
# audit event -> {position of a path argument: position of the dir_fd it is relative to}
_DIR_FD_ARGS = {
    "os.mkdir": {0: 2},
    "os.rename": {0: 2, 1: 3},
    "os.remove": {0: 1},
    "os.rmdir": {0: 1},
    "os.symlink": {1: 2},
    "os.link": {1: 3},
    "os.chmod": {0: 2},
    "os.utime": {0: 3},
    "shutil.rmtree": {0: 1},
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class WorkingTreeWrites:
    """Paths inside ``root`` that this process has written since the last ``take()``."""

    def __init__(self, root: Path):
        self.root = str(root.resolve())
        self._seen: list[str] = []
        self._lock = threading.Lock()
        self._busy = threading.local()  # the hook's own calls raise no events, but never recurse if one did
        sys.addaudithook(self._hook)  # cannot be removed: it stays for the process, which is the test session

    def take(self) -> list[str]:
        with self._lock:
            seen, self._seen = self._seen, []
        return list(dict.fromkeys(seen))

    def _hook(self, event: str, args: tuple) -> None:
        where = _PATH_ARGS.get(event)
        if where is None or getattr(self._busy, "on", False):
            return
        self._busy.on = True
        try:
            if event == "open" and not _opens_for_writing(args):
                return
            for i in where:
                dir_fd = _DIR_FD_ARGS.get(event, {}).get(i)
                dir_fd = args[dir_fd] if dir_fd is not None and dir_fd < len(args) else None
                path = _inside(args[i] if i < len(args) else None, self.root, dir_fd)
                if path is not None:
                    with self._lock:
                        self._seen.append(f"{path} ({event})")
        except Exception:  # an audit hook that raises would break the call it watches
            pass
        finally:
            self._busy.on = False


def _opens_for_writing(args: tuple) -> bool:
    mode = args[1] if len(args) > 1 else None
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    flags = args[2] if len(args) > 2 else 0
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _inside(path, root: str, dir_fd=None) -> str | None:
    """``path`` made absolute (against ``dir_fd``'s folder if one is given, as in ``shutil.rmtree``), if it lies
    inside ``root`` and outside the ignored caches; else None."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    elif isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):  # a file descriptor: its path was checked when it was opened
        return None
    if isinstance(dir_fd, int) and not os.path.isabs(path):
        try:
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        except OSError:  # no /proc (macOS): the call that opened the folder was seen already
            return None
    path = os.path.abspath(path)
    if not path.startswith(root + os.sep):  # outside, or the root itself (pytest makes its cache's parents)
        return None
    parts = Path(path).parts
    if IGNORED_PARTS.intersection(parts) or any(p.startswith(CACHE_STAGING) for p in parts):
        return None
    return os.path.relpath(path, root)


def fingerprint(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots``: (size, modification time in ns), keyed by path."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
            st = path.lstat()
            found[str(path)] = (0 if path.is_dir() else st.st_size, st.st_mtime_ns)
    return found


@contextlib.contextmanager
def frozen(*roots: Path, what: str) -> Iterator[None]:
    """Fail when the block ends if anything under ``roots`` was added, removed or rewritten in it (``what`` names the
    fixture whose output they are, for the message)."""
    before = fingerprint(*roots)
    yield
    after = fingerprint(*roots)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise AssertionError(
            f"a test changed the shared output of the fixture {what} ({shown}); tests that read it would see "
            "results that depend on the order they ran in: copy it into the test's own tmp_path before changing it."
        )
