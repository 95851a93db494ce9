import json
import shutil
import subprocess

import pytest

from mmedge import provenance
from mmedge.provenance import collect, cpu_summary, git_state, parse_cpuinfo, parse_sysctl

# Two logical CPUs of one core each (a hyperthreaded pair would share a core id), trimmed from real files.
XEON_SPR = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
physical id	: 0
core id		: 0
flags		: sse2 avx fma f16c avx2 avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
physical id	: 0
core id		: 1
flags		: sse2 avx fma f16c avx2 avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""

EPYC_ZEN3 = """processor	: 0
model name	: AMD EPYC 7B13 64-Core Processor
physical id	: 0
core id		: 0
flags		: sse2 avx fma f16c avx2 sha_ni

processor	: 1
model name	: AMD EPYC 7B13 64-Core Processor
physical id	: 0
core id		: 0
flags		: sse2 avx fma f16c avx2 sha_ni
"""

GRAVITON = """processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve asimddp i8mm
CPU implementer	: 0x41
CPU part	: 0xd40
"""

RASPBERRY_PI = """processor	: 0
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU part	: 0xd08

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B Rev 1.4
"""

APPLE_M2 = """machdep.cpu.brand_string: Apple M2
hw.physicalcpu: 8
hw.optional.AdvSIMD: 1
hw.optional.neon: 1
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 1
hw.optional.arm.FEAT_SVE: 0
"""

INTEL_MAC = """machdep.cpu.brand_string: Intel(R) Core(TM) i7-8559U CPU @ 2.70GHz
machdep.cpu.features: FPU VME SSE SSE2 AVX1.0 FMA F16C
machdep.cpu.leaf7_features: SMEP BMI1 AVX2 BMI2
hw.physicalcpu: 4
"""


def test_cpuinfo_of_a_sapphire_rapids_xeon_lists_vnni_and_amx_and_its_cores():
    cpu = parse_cpuinfo(XEON_SPR)
    assert cpu["model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert set(cpu["flags"]) == {
        "avx",
        "fma",
        "f16c",
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_bf16",
        "amx_tile",
        "amx_int8",
    }
    assert cpu["physical_cores"] == 2


def test_cpuinfo_keeps_only_the_flags_that_matter_and_counts_shared_cores_once():
    cpu = parse_cpuinfo(EPYC_ZEN3)
    assert cpu["flags"] == ["avx", "avx2", "f16c", "fma"]  # no sse, no sha_ni
    assert cpu["physical_cores"] == 1


def test_cpuinfo_of_an_arm_server_reads_features_and_names_the_core():
    cpu = parse_cpuinfo(GRAVITON)
    assert cpu["flags"] == ["asimd", "asimddp", "i8mm", "sve"]
    assert cpu["model"] == "ARM CPU implementer 0x41 part 0xd40" and cpu["physical_cores"] is None


def test_cpuinfo_of_a_raspberry_pi_names_the_board():
    cpu = parse_cpuinfo(RASPBERRY_PI)
    assert cpu["model"] == "Raspberry Pi 4 Model B Rev 1.4" and cpu["flags"] == ["asimd"]


def test_sysctl_of_apple_silicon_maps_to_linux_flag_names():
    cpu = parse_sysctl(APPLE_M2)
    assert cpu == {"model": "Apple M2", "flags": ["asimd", "asimddp", "i8mm", "neon"], "physical_cores": 8}


def test_sysctl_of_an_intel_mac_reads_both_feature_lists():
    cpu = parse_sysctl(INTEL_MAC)
    assert cpu["flags"] == ["avx", "avx2", "f16c", "fma"] and cpu["physical_cores"] == 4


@pytest.mark.parametrize(
    ("text", "summary"),
    [
        (XEON_SPR, "Intel Xeon Platinum 8481C (AVX2, AVX512, AVX512-VNNI, AMX)"),
        (EPYC_ZEN3, "AMD EPYC 7B13 (AVX2, no VNNI, no AMX)"),
        (GRAVITON, "ARM CPU implementer 0x41 part 0xd40 (NEON, dot product, i8mm, SVE)"),
        (RASPBERRY_PI, "Raspberry Pi 4 Model B Rev 1.4 (NEON, no dot product)"),
    ],
)
def test_cpu_summary_names_the_model_and_its_int8_paths(text, summary):
    cpu = parse_cpuinfo(text)
    assert cpu_summary(cpu["model"], cpu["flags"]) == summary


def test_cpu_summary_names_avx_vnni_when_only_the_256_bit_form_is_there():
    assert (
        cpu_summary("Intel Core i7-12700", {"avx", "avx2", "avx_vnni"})
        == "Intel Core i7-12700 (AVX2, AVX-VNNI, no AMX)"
    )


def test_cpu_summary_says_unknown_when_the_os_gives_no_flags():
    assert cpu_summary("x86_64", set()) == "x86_64 (instruction set unknown)"


def test_has_vnni_follows_the_flags(monkeypatch):
    fake = {"model": "m", "flags": ["avx2", "avx_vnni"], "physical_cores": 1}
    monkeypatch.setattr(provenance, "_read_cpu", lambda: fake)
    provenance._cpu.cache_clear()
    try:
        assert provenance.has_vnni() and provenance.has_avx2() and not provenance.has_amx()
        fake["flags"] = ["avx2"]
        provenance._cpu.cache_clear()
        assert not provenance.has_vnni() and collect()["cpu"]["summary"] == "m (AVX2, no VNNI, no AMX)"
    finally:
        provenance._cpu.cache_clear()


def _git(folder, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(folder), *args],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text("x = 1\n")
    (root / ".gitignore").write_text("venv/\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "first")
    return root


def test_git_state_is_clean_at_the_commit_and_ignores_untracked_files(repo):
    (repo / "pkg" / "scratch.txt").write_text("not tracked")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_state(repo / "pkg") == {"commit": head.strip(), "dirty": False, "changed": []}


def test_git_state_is_dirty_when_a_tracked_file_changed(repo):
    (repo / "pkg" / "mod.py").write_text("x = 2\n")
    assert git_state(repo / "pkg")["dirty"] is True and git_state(repo / "pkg")["changed"] == ["pkg/mod.py"]


def test_regenerated_figures_do_not_make_the_code_dirty(repo):
    for folder in ("exported/b", "benchmarks/results"):
        (repo / folder).mkdir(parents=True)
        (repo / folder / "fig.json").write_text("1")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "figures")
    for folder in ("exported/b", "benchmarks/results"):
        (repo / folder / "fig.json").write_text("2")  # a regenerated result
    assert git_state(repo / "pkg")["dirty"] is False
    (repo / "benchmarks" / "bench.py").write_text("code")
    _git(repo, "add", "benchmarks/bench.py")
    state = git_state(repo / "pkg")
    assert state["dirty"] is True and state["changed"] == ["benchmarks/bench.py"]


def test_git_state_is_unknown_for_a_copy_in_an_ignored_folder_of_a_repository(repo):
    installed = repo / "venv" / "site-packages" / "pkg"
    installed.mkdir(parents=True)
    (installed / "mod.py").write_text("x = 1\n")
    assert git_state(installed) == {"commit": None, "dirty": None, "changed": None}


def test_git_state_is_unknown_outside_any_repository(tmp_path):
    (tmp_path / "plain").mkdir()
    assert git_state(tmp_path / "plain") == {"commit": None, "dirty": None, "changed": None}


def test_collect_is_json_ready_and_records_this_checkout():
    found = collect()
    assert json.loads(json.dumps(found)) == found
    assert set(found["packages"]) == set(provenance.PACKAGES) and found["packages"]["numpy"]
    assert set(found["cpu"]["flags"]) <= provenance.FLAGS
    assert found["cpu"]["summary"].startswith(provenance._short_model(found["cpu"]["model"]))


def test_package_versions_record_a_missing_package_as_none(monkeypatch):
    from importlib.metadata import version

    monkeypatch.setattr(provenance, "PACKAGES", ("numpy", "mmedge-no-such-distribution"))
    provenance.package_versions.cache_clear()
    try:
        assert provenance.package_versions() == {"numpy": version("numpy"), "mmedge-no-such-distribution": None}
    finally:
        provenance.package_versions.cache_clear()


@pytest.mark.parametrize("package", ["onnxruntime", "onnx", "torch"])
def test_step_cache_key_changes_with_the_runtime_versions(monkeypatch, package):
    from mmedge.pipeline import _key
    from mmedge.recipe import load_recipe

    recipe = load_recipe()
    step = recipe.steps[0]
    before = _key(recipe, "", step)
    assert _key(recipe, "", step) == before
    changed = {**provenance.package_versions(), package: "0.0.1"}
    monkeypatch.setattr(provenance, "package_versions", lambda: changed)
    assert _key(recipe, "", step) != before


def test_results_document_records_the_provenance_once():
    from mmedge.pipeline import results_document
    from mmedge.recipe import load_recipe

    doc = results_document(load_recipe(), [])
    assert doc["provenance"]["cpu"]["flags"] == doc["machine"]["cpu_flags"]
    assert doc["provenance"]["mmedge_version"] == doc["mmedge_version"] and "provenance" not in doc["machine"]
