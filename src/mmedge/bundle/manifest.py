"""Reading a shipped bundle (device side: no torch, nothing from the build side).

A bundle folder holds model.onnx, manifest.json, vocab.json, report.md and real sample inputs. The manifest
records the sha256 of every file; :func:`load_bundle` verifies them, and every path the manifest names must
stay inside the bundle folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from mmedge.errors import BundleError, InputPathError

SCHEMA = "mmedge.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict

    def path(self, relative: str) -> Path:
        """A file named by the manifest; refused if it would lead outside the bundle folder."""
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root.resolve()):
            raise BundleError(
                f"the manifest of {self.root} names '{relative}', which lies outside the bundle; "
                "refusing to read it — rebuild the bundle with `mmedge run`."
            )
        return target

    @property
    def model_path(self) -> Path:
        return self.path(self.manifest["model"]["file"])

    def verify(self) -> list[str]:
        """Problems found (missing files, checksum mismatches); empty when the bundle is intact."""
        problems = []
        for name, info in self.manifest.get("files", {}).items():
            try:
                path = self.path(name)
            except BundleError as exc:
                problems.append(str(exc))
                continue
            if not path.is_file():
                problems.append(f"{name} is missing")
            elif sha256(path) != info["sha256"]:
                problems.append(f"{name} does not match its sha256 (changed or damaged)")
        return problems


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    root = Path(path)
    if root.is_file() and root.name == MANIFEST:
        root = root.parent
    if not root.exists():
        raise InputPathError(f"bundle folder {root} does not exist; pass a folder written by `mmedge run`.")
    if not (root / MANIFEST).is_file():
        raise BundleError(
            f"{root} has no {MANIFEST}, so it is not an mmedge bundle; pass a folder written by `mmedge run`."
        )
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{root / MANIFEST} is not valid JSON ({exc.msg}); rebuild the bundle.") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{root / MANIFEST} is not UTF-8 text (byte {exc.start}); rebuild the bundle.") from None
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
    bundle = Bundle(root, manifest)
    if verify and (problems := bundle.verify()):
        raise BundleError(
            f"bundle {root} failed its checksum verification: {'; '.join(problems)}; rebuild it or "
            "restore the original files."
        )
    return bundle
