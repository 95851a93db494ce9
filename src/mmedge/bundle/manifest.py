"""Reading a shipped bundle (device side: no torch, nothing from the build side).

A bundle folder holds model.onnx, manifest.json, vocab.json, report.md and real sample inputs. The manifest
records the sha256 of every file; :func:`load_bundle` verifies them, and every path the manifest names must
stay inside the bundle folder.

A run replaces a bundle by swapping a new folder into its place (``runtime.session.replace_folder``), maybe while
an app or another mmedge command reads it. So a reader takes a snapshot: it opens the folder once, opens the
manifest and every file the manifest lists through that one handle, and keeps those files open. Everything it reads
is then of one version, the one whose manifest it read, even when the folder is swapped meanwhile, renamed to
``.NAME.old`` or removed. Read a bundle's files with :meth:`Bundle.read` (bytes) or :meth:`Bundle.model_copy` (a
private file, for tools that take a path), never by path: :meth:`Bundle.path` only names a file in messages.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmedge.errors import BundleError, InputPathError

SCHEMA = "mmedge.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

# Opening files relative to an open folder (``dir_fd``) is what makes the snapshot; where the system has no such call
# (Windows) the files are read whole at load instead, by path, which is consistent unless a swap falls inside it.
_AT = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a link is refused, never followed out of the folder
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_FILE = _READ | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in the folder must not block the open
_FOLDER = _READ | _NOFOLLOW | getattr(os, "O_DIRECTORY", 0)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Replaced(Exception):
    """The folder being read was swapped out and removed part-way through the read (another run wrote the bundle
    twice meanwhile); reading it again from its path gives the new version whole."""


@dataclass
class _Held:
    """One file of the snapshot: an open descriptor (or, without ``dir_fd``, its bytes), or why it has none."""

    fd: int | None = None
    data: bytes | None = None
    problem: str | None = None  # a clause: "vocab.json is missing", "'../x' lies outside the bundle (refused)"


def _parts(name: str) -> tuple[str, ...] | None:
    """The components of a file name the manifest gives, or None when it is not a plain relative path inside the
    folder: absolute, with a ``..``, ``.`` or empty part, or with a backslash (a separator on Windows)."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name or "\0" in name:
        return None
    parts = tuple(name.split("/"))
    return None if any(p in ("", ".", "..") for p in parts) else parts


def _open_at(folder: int, parts: tuple[str, ...]) -> int:
    """A read-only descriptor of the file ``parts`` under the open folder ``folder``, no component followed as a
    link (``O_NOFOLLOW``); raises OSError (ELOOP for a link, ENOENT or ENOTDIR for a missing file)."""
    opened: list[int] = []
    at = folder
    try:
        for part in parts[:-1]:
            at = os.open(part, _FOLDER, dir_fd=at)
            opened.append(at)
        return os.open(parts[-1], _FILE, dir_fd=at)
    finally:
        for fd in opened:
            os.close(fd)


def _open_by_path(root: Path, parts: tuple[str, ...]) -> int:
    """``_open_at`` where the system has no ``dir_fd``: by path, every component checked not to be a link."""
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
    return os.open(path, _FILE)


def _read_fd(fd: int) -> bytes:
    """The whole file behind ``fd``, from its start (``pread``: safe from several threads at once)."""
    chunks, offset = [], 0
    while True:
        if hasattr(os, "pread"):
            chunk = os.pread(fd, 1 << 20, offset)
        else:
            os.lseek(fd, offset, os.SEEK_SET)
            chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _close_all(held: dict[str, _Held]) -> None:
    for entry in held.values():
        if entry.fd is not None:
            with contextlib.suppress(OSError):
                os.close(entry.fd)
            entry.fd = None


@dataclass(frozen=True)
class Bundle:
    """A bundle as it was when it was loaded: its manifest and the files it lists, held open (see the module
    docstring). Close it with ``close()`` or a ``with`` block; it is closed when collected otherwise."""

    root: Path
    manifest: dict
    held: dict[str, _Held] = field(default_factory=dict, repr=False, compare=False)  # by name: the open files

    def __post_init__(self) -> None:
        weakref.finalize(self, _close_all, self.held)

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Let go of the files; reading them afterwards is an error."""
        _close_all(self.held)

    def path(self, relative: str) -> Path:
        """Where a file named by the manifest lies, for messages (read it with ``read``); refused if it would lead
        outside the bundle folder."""
        if _parts(relative) is None or not (self.root / relative).resolve().is_relative_to(self.root.resolve()):
            raise BundleError(
                f"the manifest of {self.root} names '{relative}', which lies outside the bundle; "
                "refusing to read it — rebuild the bundle with `mmedge run`."
            )
        return (self.root / relative).resolve()

    @property
    def model_path(self) -> Path:
        return self.path(self.manifest["model"]["file"])

    def read(self, name: str) -> bytes:
        """The bytes of a file the manifest lists, as they were when the bundle was loaded; checked against the
        manifest's sha256, so that a file edited in place since is refused rather than used."""
        held = self.held.get(name) if isinstance(name, str) else None
        if held is None:
            raise BundleError(
                f"the manifest of {self.root} names '{name}' but does not list it among its files, so it has no "
                "checksum and is not read; rebuild the bundle with `mmedge run`."
            )
        if held.problem is not None:
            raise BundleError(f"bundle {self.root} cannot be read: {held.problem}; rebuild it with `mmedge run`.")
        if held.data is not None:
            data = held.data
        elif held.fd is None:
            raise BundleError(f"bundle {self.root} was closed before '{name}' was read; load it again.")
        else:
            data = _read_fd(held.fd)
        want = self.manifest.get("files", {}).get(name, {}).get("sha256")
        if want is not None and hashlib.sha256(data).hexdigest() != want:
            raise BundleError(
                f"bundle {self.root}: {name} does not match its sha256 (changed or damaged); rebuild it or restore "
                "the original files."
            )
        return data

    def read_json(self, name: str):
        """A JSON file of the bundle (samples.json), decoded."""
        try:
            return json.loads(self.read(name).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise BundleError(f"{self.path(name)} is not valid JSON ({exc}); rebuild the bundle.") from None

    def read_arrays(self, name: str) -> dict:
        """The arrays of an .npz file of the bundle (the sample inputs and outputs), never unpickled."""
        import io

        import numpy as np

        try:
            with np.load(io.BytesIO(self.read(name)), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError) as exc:
            raise BundleError(
                f"{self.path(name)} is not a readable .npz of arrays ({exc}); rebuild the bundle."
            ) from None

    @property
    def model_bytes(self) -> bytes:
        """The model file's bytes (see ``read``); a model whose weights live in other files is refused."""
        name = self.manifest["model"]["file"]
        data = self.read(name)
        _refuse_external_data(data, self.root, name)
        return data

    @contextlib.contextmanager
    def model_copy(self) -> Iterator[Path]:
        """The model as a private file, removed when the block ends, for tools that take a path: it lies in a
        temporary folder named as the bundle, so that names drawn from the path (bench's model names) read as
        before."""
        data = self.model_bytes
        tmp = Path(tempfile.mkdtemp(prefix="mmedge-bundle-"))
        try:
            folder = tmp / (self.root.resolve().name or "bundle")
            folder.mkdir()
            path = folder / Path(self.manifest["model"]["file"]).name
            path.write_bytes(data)
            yield path
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def verify(self) -> list[str]:
        """Problems found (missing files, checksum mismatches, names outside the folder); empty when intact."""
        problems = []
        for name, info in self.manifest.get("files", {}).items():
            held = self.held.get(name) or _Held(problem=f"{name} is missing")
            if held.problem is not None:
                problems.append(held.problem)
                continue
            digest = hashlib.sha256(held.data).hexdigest() if held.data is not None else _fd_sha256(held.fd)
            if digest != info["sha256"]:
                problems.append(f"{name} does not match its sha256 (changed or damaged)")
        return problems


def _fd_sha256(fd: int | None) -> str | None:
    """The sha256 of the file behind ``fd``, read from its start in chunks (files are held open only where the
    system has ``pread``); None for a closed bundle."""
    if fd is None:
        return None
    h, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, 1 << 20, offset):
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


def _refuse_external_data(data: bytes, root: Path, name: str) -> None:
    """Raise when the model keeps tensors in other files (ONNX external data): a bundle ships one self-contained
    model file, and a model read from the snapshot's bytes could not find them. Every tensor stored outside names
    its ``location``, so a file without that word needs no parsing."""
    if b"location" not in data:
        return
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # not parseable: onnxruntime says what is wrong with it when the session is made
        return
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph)):
        raise BundleError(
            f"the model {name} of bundle {root} keeps its weights in external data files, which a bundle does not "
            "carry; rebuild the bundle with `mmedge run` (it writes the weights inside the model file)."
        )


def _tensors(graph) -> Iterator:
    """Every tensor of an onnx graph: its initializers and the tensors in node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """The bundle at ``path`` (its folder or its manifest.json) as one snapshot (see the module docstring), its files
    checked against their checksums unless ``verify`` is False. A folder swapped out and removed while it is being
    read is read again once."""
    root = Path(path)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    try:
        return _snapshot(root, verify)
    except _Replaced:
        pass
    try:
        return _snapshot(root, verify)
    except _Replaced:
        raise BundleError(
            f"bundle {root} was replaced twice while it was being read (a run is writing it); read it again."
        ) from None


def _snapshot(root: Path, verify: bool) -> Bundle:
    """One attempt of ``load_bundle``; raises ``_Replaced`` when the folder went away part-way through."""
    if not root.exists():
        raise InputPathError(f"bundle folder {root} does not exist; pass a folder written by `mmedge run`.")
    not_a_bundle = BundleError(
        f"{root} has no {MANIFEST}, so it is not an mmedge bundle; pass a folder written by `mmedge run`."
    )
    if not root.is_dir():
        raise not_a_bundle
    folder = _open_folder(root)
    held: dict[str, _Held] = {}
    try:
        manifest = _read_manifest(root, folder, not_a_bundle)
        for name in _names(manifest):
            held[name] = _hold(root, folder, name)
        missing = any(h.problem is not None and h.problem.endswith(" is missing") for h in held.values())
        if missing and _moved(root, folder):
            raise _Replaced
    except BaseException:
        _close_all(held)
        raise
    finally:
        if folder is not None:
            os.close(folder)
    bundle = Bundle(root, manifest, held)
    if verify and (problems := bundle.verify()):
        bundle.close()
        raise BundleError(
            f"bundle {root} failed its checksum verification: {'; '.join(problems)}; rebuild it or "
            "restore the original files."
        )
    return bundle


def _open_folder(root: Path) -> int | None:
    """The bundle folder opened once (None where the system cannot open files relative to a folder)."""
    if not _AT:
        return None
    try:
        return os.open(root, _READ | os.O_DIRECTORY)
    except FileNotFoundError:  # it existed a moment ago: swapped out where the system cannot swap in one step
        raise _Replaced from None
    except OSError as exc:
        raise BundleError(
            f"bundle folder {root} cannot be opened ({exc.strerror}); give this user read access to it."
        ) from None


def _moved(root: Path, folder: int | None) -> bool:
    """Whether the folder held open is no longer the one at ``root`` (swapped out, renamed or removed)."""
    if folder is None:
        return False  # reading by path: nothing tells a file that vanished from one never written
    try:
        now = os.stat(root)
    except OSError:
        return True
    held = os.fstat(folder)
    return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino) or held.st_nlink == 0


def _read_manifest(root: Path, folder: int | None, not_a_bundle: BundleError) -> dict:
    """The manifest, read through the open folder and checked to be a well-formed mmedge manifest."""
    held = _hold(root, folder, MANIFEST)
    if held.problem is not None and held.problem.endswith(" is missing"):
        if _moved(root, folder):
            raise _Replaced
        raise not_a_bundle
    if held.problem is not None:
        raise BundleError(f"bundle {root} cannot be read: {held.problem}; rebuild it with `mmedge run`.")
    try:
        raw = held.data if held.data is not None else _read_fd(held.fd)
    finally:
        _close_all({MANIFEST: held})
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BundleError(f"{root / MANIFEST} is not UTF-8 text (byte {exc.start}); rebuild the bundle.") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{root / MANIFEST} is not valid JSON ({exc.msg}); rebuild the bundle.") from None
    except RecursionError:
        raise BundleError(f"{root / MANIFEST} nests too deeply to be a manifest; rebuild the bundle.") from None
    _check_manifest(root, manifest)
    return manifest


def _check_manifest(root: Path, manifest) -> None:
    """Raise unless ``manifest`` is an mmedge manifest of this schema version with well-formed file entries."""
    if not isinstance(manifest, dict) or (
        manifest.get("schema") != SCHEMA or manifest.get("schema_version") != SCHEMA_VERSION
    ):
        raise BundleError(
            f"{root / MANIFEST} is not an mmedge bundle manifest of schema version {SCHEMA_VERSION}; "
            "rebuild the bundle with this mmedge version."
        )
    files, model = manifest.get("files", {}), manifest.get("model", {})
    well_formed = (
        isinstance(files, dict)
        and all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values())
        and isinstance(model, dict)
        and isinstance(model.get("file", ""), str)
    )
    if not well_formed:
        raise BundleError(
            f"{root / MANIFEST} has malformed 'files' or 'model' entries (edited or damaged); rebuild the bundle."
        )


def _names(manifest: dict) -> list[str]:
    """The files a snapshot holds: those the manifest lists, and its model file (listed in every bundle mmedge
    writes; held even when not, so that the model comes from the same version as the manifest)."""
    names = list(manifest.get("files", {}))
    model = manifest.get("model", {}).get("file")
    if model and model not in names:
        names.append(model)
    return names


def _hold(root: Path, folder: int | None, name: str) -> _Held:
    """``name`` opened through the open folder, or the clause saying why it was not (outside the folder, a link,
    missing, not a regular file)."""
    parts = _parts(name)
    if parts is None:
        return _Held(problem=f"'{name}' lies outside the bundle (refused)")
    try:
        fd = _open_at(folder, parts) if folder is not None else _open_by_path(root, parts)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _Held(problem=f"'{name}' is a symbolic link, which could lead outside the bundle (refused)")
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return _Held(problem=f"{name} is missing")
        return _Held(problem=f"{name} cannot be opened ({exc.strerror})")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return _Held(problem=f"{name} is not a regular file")
    if folder is None:  # no snapshot by folder: read it now, and hold no file open (Windows could not swap it)
        try:
            return _Held(data=_read_fd(fd))
        finally:
            os.close(fd)
    return _Held(fd=fd)
