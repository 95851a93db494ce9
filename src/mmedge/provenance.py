"""Where a figure came from: mmedge version, git commit, package versions and the CPU with its instruction set.

Latency and accuracy figures depend on all of these (int8 speed differs between CPUs with and without VNNI or
AMX, and onnxruntime changes its kernels between releases), so every results file records them. Device-side
safe: the standard library only, package versions read from their metadata without importing them.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

# The distributions whose versions change the figures (a missing one is recorded as null).
PACKAGES = (
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "onnxscript",
    "torch-pruning",
    "transformers",
    "tokenizers",
    "pydantic",
    "safetensors",
)

# The instruction-set flags that decide which kernels onnxruntime runs (Linux /proc/cpuinfo spelling): AVX2/FMA
# float kernels, AVX512, the int8 dot-product paths (VNNI on x86, dot product and i8mm on ARM) and AMX tiles.
FLAGS = frozenset(
    {
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
        "asimd",
        "neon",
        "asimddp",
        "i8mm",
        "sve",
    }
)

# macOS sysctl names -> the Linux names above. Intel Macs list features in machdep.cpu.*features; Apple silicon
# sets hw.optional.* to 1.
_SYSCTL_FEATURES = {
    "AVX1.0": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "AVX512F": "avx512f",
    "AVX512VNNI": "avx512_vnni",
    "AVXVNNI": "avx_vnni",
    "AVX512BF16": "avx512_bf16",
    "AMXTILE": "amx_tile",
    "AMXINT8": "amx_int8",
    "AMXBF16": "amx_bf16",
}
_SYSCTL_OPTIONAL = {
    "hw.optional.AdvSIMD": "asimd",
    "hw.optional.neon": "neon",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_SVE": "sve",
}


def parse_cpuinfo(text: str) -> dict:
    """CPU model, relevant flags and physical core count from the text of Linux's /proc/cpuinfo (x86 or ARM)."""
    model, flags, cores, other = None, set(), set(), {}
    physical = core = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            # a blank line ends one logical CPU's block
            if physical is not None and core is not None:
                cores.add((physical, core))
            physical = core = None
            continue
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key in ("Model", "Hardware", "CPU implementer", "CPU part"):  # ARM has no "model name"
            other.setdefault(key, value)
        elif key in ("flags", "Features"):  # x86 / ARM
            flags.update(value.split())
        elif key == "physical id":
            physical = value
        elif key == "core id":
            core = value
    if physical is not None and core is not None:
        cores.add((physical, core))
    # ARM boards name themselves ("Raspberry Pi 4 Model B") or the SoC; bare ARM servers give only the core's ids.
    model = model or other.get("Model") or other.get("Hardware")
    if model is None and "CPU implementer" in other:
        model = f"ARM CPU implementer {other['CPU implementer']} part {other.get('CPU part', '?')}"
    return {
        "model": model,
        "flags": sorted(flags & FLAGS),
        "physical_cores": len(cores) or None,
    }


def parse_sysctl(text: str) -> dict:
    """CPU model, relevant flags and physical core count from macOS `sysctl -a` output (Intel or Apple silicon)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key.strip()] = value.strip()
    flags = set()
    for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features", "machdep.cpu.extfeatures"):
        flags.update(_SYSCTL_FEATURES[f] for f in values.get(key, "").split() if f in _SYSCTL_FEATURES)
    flags.update(name for key, name in _SYSCTL_OPTIONAL.items() if values.get(key) == "1")
    physical = values.get("hw.physicalcpu", "")
    return {
        "model": values.get("machdep.cpu.brand_string"),
        "flags": sorted(flags),
        "physical_cores": int(physical) if physical.isdigit() else None,
    }


def _read_cpu() -> dict:
    """The CPU as this OS describes it; empty flags where it cannot tell (never raises)."""
    found: dict = {"model": None, "flags": [], "physical_cores": None}
    try:
        if platform.system() == "Linux":
            found = parse_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace"))
        elif platform.system() == "Darwin":
            out = subprocess.run(["sysctl", "-a"], capture_output=True, text=True, timeout=10, check=False)
            found = parse_sysctl(out.stdout)
    except (OSError, subprocess.SubprocessError):
        pass
    return found


@functools.lru_cache(maxsize=1)
def _cpu() -> dict:
    found = _read_cpu()
    model = found["model"] or platform.processor() or platform.machine() or "unknown CPU"
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "physical_cores": found["physical_cores"],
        "flags": found["flags"],
        "summary": cpu_summary(model, found["flags"]),
    }


def cpu_flags() -> frozenset[str]:
    """This CPU's flags among FLAGS (Linux names); empty where the OS does not tell."""
    return frozenset(_cpu()["flags"])


def has_avx2() -> bool:
    return "avx2" in cpu_flags()


def has_avx512() -> bool:
    return "avx512f" in cpu_flags()


def has_vnni() -> bool:
    """Whether x86 int8 dot products run on VNNI (AVX512-VNNI or AVX-VNNI): there onnxruntime's u8s8 kernel adds
    int8 products in int32 and cannot saturate; without it they are added pairwise in a saturating int16."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni"})


def has_amx() -> bool:
    return bool(cpu_flags() & {"amx_tile", "amx_int8"})


def has_arm_dot_product() -> bool:
    return bool(cpu_flags() & {"asimddp", "i8mm"})


def _short_model(model: str) -> str:
    # "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz" -> "Intel Xeon Platinum 8481C";
    # "AMD EPYC 7B13 64-Core Processor" -> "AMD EPYC 7B13"
    model = re.sub(r"\((R|TM|tm|r)\)", "", model)
    model = re.sub(r"\s+(CPU\s*)?@.*$", "", model)
    model = re.sub(r"\s+\d+-Core Processor$|\s+Processor$|\s+CPU$", "", model)
    return " ".join(model.split())


def cpu_summary(model: str, flags) -> str:
    """A short phrase naming the CPU and what its instruction set offers these figures, e.g.
    "AMD EPYC (AVX2, AVX512, AVX512-VNNI, no AMX)" or "Apple M2 (NEON, dot product, i8mm)"."""
    flags = set(flags)
    parts: list[str] = []
    if flags & {"asimd", "neon"}:
        parts.append("NEON")
        parts.append("dot product" if "asimddp" in flags else "no dot product")
        if "i8mm" in flags:
            parts.append("i8mm")
        if "sve" in flags:
            parts.append("SVE")
    elif flags:
        parts.append("AVX2" if "avx2" in flags else "AVX" if "avx" in flags else "no AVX")
        if "avx512f" in flags:
            parts.append("AVX512")
        if "avx512_vnni" in flags:
            parts.append("AVX512-VNNI")
        elif "avx_vnni" in flags:
            parts.append("AVX-VNNI")
        else:
            parts.append("no VNNI")
        parts.append("AMX" if flags & {"amx_tile", "amx_int8"} else "no AMX")
    else:
        parts.append("instruction set unknown")
    return f"{_short_model(model)} ({', '.join(parts)})"


def _package_root() -> Path:
    return Path(__file__).resolve().parent


# Folders of a checkout that hold figures mmedge generated (the committed bundles and benchmark results).
GENERATED = ("exported", "benchmarks/results")


def git_state(folder: Path | None = None) -> dict:
    """{commit, dirty, changed} of the git work tree ``folder`` (default: mmedge's own source folder) belongs to;
    None when it is not tracked in one (an installed wheel, no git). Dirty counts changes to tracked files, as
    `git describe --dirty` does, except in the folders that hold generated figures (:data:`GENERATED`): a
    regenerated bundle or benchmark result is what a run writes, not a change to the code that made it. ``changed``
    lists the first changed files. Never raises."""
    folder = folder or _package_root()
    # Read-only: no index refresh that would take the lock another git process in the same tree may hold.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=False, env=env
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    # An installed copy inside some other repository's ignored folder (a virtualenv) is not that repository's code:
    # only a folder git tracks counts.
    unknown = {"commit": None, "dirty": None, "changed": None}
    if not git("ls-files", "--error-unmatch", "--", "."):
        return unknown
    commit = git("rev-parse", "HEAD")
    outputs = [f":(top,exclude){g}" for g in GENERATED]
    status = git("status", "--porcelain", "--untracked-files=no", "--", ":/", *outputs)
    if commit is None or status is None:
        return unknown
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed[:20]}


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect() -> dict:
    """The provenance every results file records (JSON-ready). The git state is read afresh each time (the tree
    may change during a session); the CPU and package versions once per process."""
    from mmedge import __version__

    return {
        "mmedge_version": __version__,
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": dict(package_versions()),
        "cpu": dict(_cpu(), flags=list(_cpu()["flags"])),
    }
