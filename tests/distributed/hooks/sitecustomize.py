"""Loaded by every rank that tests/test_distributed.py starts (this folder is put first on PYTHONPATH).

MMEDGE_TEST_WATCH (folders, os.pathsep-separated) with MMEDGE_TEST_WRITES: a rank other than 0 appends to that
file every write Python makes under a watched folder (opens for writing, mkdir, rename, remove), as audit events
see them. MMEDGE_TEST_FAULT="RANK:EPOCH" makes that rank raise at the end of that training epoch (0-based, as the
epoch checkpoint is saved); with a third field "once", only in torchrun's first attempt (no restart yet).
"""

import os
import sys

RANK = int(os.environ.get("RANK", "0"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _watch_writes(log: str, folders: list[str]) -> None:
    roots = [os.path.realpath(f) for f in folders]
    busy = []

    def inside(path) -> bool:
        if isinstance(path, int) or path is None:
            return False
        path = os.path.realpath(os.fsdecode(path))
        return any(path == r or path.startswith(r + os.sep) for r in roots)

    def hook(event, args):
        if busy:
            return
        if event == "open":
            path, mode, flags = args
            writes = (
                bool(flags & WRITE_FLAGS)
                if isinstance(flags, int) and flags
                else any(c in (mode or "") for c in "wax+")
            )
            paths = [path] if writes else []
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            paths = list(args[:2])
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.chmod", "os.utime"):
            paths = [args[0]]
        else:
            return
        hits = [os.fsdecode(p) for p in paths if inside(p)]
        if hits:
            busy.append(1)
            try:
                with open(log, "a") as f:
                    f.write(f"rank {RANK} {event} {hits}\n")
            finally:
                busy.pop()

    sys.addaudithook(hook)


def _fault(rank: int, epoch: int, once: bool) -> None:
    """Patch mmedge.epochs.EpochCheckpoint.save, when the module is first imported, to raise on this rank."""
    import importlib.abc

    if rank != RANK or (once and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"):
        return

    class Patcher(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "mmedge.epochs":
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                save = module.EpochCheckpoint.save

                def failing(self, e, *args, **kwargs):
                    if e == epoch:
                        raise RuntimeError(f"injected fault at the end of epoch {e + 1}")
                    return save(self, e, *args, **kwargs)

                module.EpochCheckpoint.save = failing

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Patcher())


if os.environ.get("MMEDGE_TEST_WRITES") and os.environ.get("MMEDGE_TEST_WATCH") and RANK != 0:
    _watch_writes(os.environ["MMEDGE_TEST_WRITES"], os.environ["MMEDGE_TEST_WATCH"].split(os.pathsep))
if os.environ.get("MMEDGE_TEST_FAULT"):
    fields = os.environ["MMEDGE_TEST_FAULT"].split(":")
    _fault(int(fields[0]), int(fields[1]), fields[2:] == ["once"])
