"""Hardware detection with faked drivers, and the choice of lock file and device that follows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from ipa_launcher.hardware import detect, parse_nvidia_smi, parse_proc_driver_version
from ipa_launcher.locks import NoLockError, load_index, recommend, select_lock

LOCKS = Path(__file__).resolve().parents[2] / "packaging" / "locks"
FULL_QUERY = "--query-gpu=name,driver_version,compute_cap,memory.total"


def fake_smi(rows: str | None, *, old_driver: bool = False, sysctl: str | None = None):
    """A stand-in for running nvidia-smi / sysctl: what a real one prints, or None when missing."""
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str | None:
        calls.append(list(argv))
        if argv[0] == "sysctl":
            return sysctl
        if rows is None:
            return None
        if "--version" in argv:
            return "NVIDIA-SMI version  : 580.65.06\n"
        if FULL_QUERY in argv:
            return None if old_driver else rows
        return rows

    run.calls = calls  # type: ignore[attr-defined]
    return run


def write_index(folder: Path, names: Sequence[str]) -> Path:
    """A targets.toml like the committed one, with lock files only for ``names``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "targets.toml").write_text((LOCKS / "targets.toml").read_text())
    for name in names:
        (folder / f"{name}.txt").write_text("torch==2.14.1 \\\n    --hash=sha256:00\n")
    return folder


@pytest.fixture
def committed_like(tmp_path: Path) -> Path:
    # What the committed locks offer: PyPI's builds only.
    return write_index(tmp_path / "locks", ["linux-x86_64-cuda", "windows-x86_64-cpu", "macos-arm64-mps"])


def test_parses_nvidia_smi_rows_with_and_without_compute_capability() -> None:
    gpus = parse_nvidia_smi(
        "NVIDIA GeForce RTX 4090, 580.65.06, 8.9, 24564\nTesla T4, 580.82.07, 7.5, 15360\n"
    )
    assert [(g.name, g.driver, g.compute_capability, g.memory_mib) for g in gpus] == [
        ("NVIDIA GeForce RTX 4090", "580.65.06", (8, 9), 24564),
        ("Tesla T4", "580.82.07", (7, 5), 15360),
    ]
    (old,) = parse_nvidia_smi("GeForce GTX 970, 470.199.02, 4096\n")
    assert old.compute_capability is None and old.memory_mib == 4096
    assert parse_nvidia_smi("") == ()


def test_proc_driver_version_of_proprietary_and_open_modules() -> None:
    closed = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n"
    opened = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build\n"
    assert parse_proc_driver_version(closed) == "550.54.14"
    assert parse_proc_driver_version(opened) == "580.65.06"
    assert parse_proc_driver_version("garbage") is None


def test_modern_nvidia_gpu_gets_cuda(committed_like: Path) -> None:
    hw = detect(
        system="linux", machine="x86_64", run=fake_smi("NVIDIA GeForce RTX 4070, 580.65.06, 8.9, 12282\n")
    )
    rec = recommend(hw, load_index(committed_like))
    assert rec.device == "cuda"
    assert "RTX 4070" in rec.reason and "8.9" in rec.reason
    assert select_lock(load_index(committed_like), "linux", "x86_64", "cuda").name == "linux-x86_64-cuda"


def test_best_of_several_gpus_is_chosen(committed_like: Path) -> None:
    rows = "NVIDIA GeForce GTX 1050, 580.65.06, 6.1, 2048\nNVIDIA RTX A4000, 580.65.06, 8.6, 16376\n"
    hw = detect(system="linux", machine="x86_64", run=fake_smi(rows))
    rec = recommend(hw, load_index(committed_like))
    assert rec.device == "cuda" and "A4000" in rec.reason


def test_gpu_too_old_for_cuda_13_falls_back_to_cpu_and_says_why(committed_like: Path) -> None:
    hw = detect(
        system="linux", machine="x86_64", run=fake_smi("NVIDIA GeForce GTX 1060 6GB, 580.65.06, 6.1, 6144\n")
    )
    rec = recommend(hw, load_index(committed_like))
    assert rec.device == "cpu"
    cuda = next(c for c in rec.choices if c.device == "cuda")
    assert not cuda.usable
    assert "6.1" in cuda.reason and "7.5" in cuda.reason and "too old" in cuda.reason
    assert "GTX 1060" in rec.reason  # the summary line says why the GPU is not used


def test_driver_too_old_is_named_with_the_version_needed(committed_like: Path) -> None:
    hw = detect(
        system="linux", machine="x86_64", run=fake_smi("NVIDIA GeForce RTX 3060, 535.183.01, 8.6, 12288\n")
    )
    rec = recommend(hw, load_index(committed_like))
    cuda = next(c for c in rec.choices if c.device == "cuda")
    assert rec.device == "cpu" and not cuda.usable
    assert "535.183.01" in cuda.reason and "580" in cuda.reason and "Repair" in cuda.reason


def test_driver_without_compute_cap_field_is_asked_the_short_query() -> None:
    run = fake_smi("NVIDIA GeForce GTX 980, 470.256.02, 4096\n", old_driver=True)
    hw = detect(system="linux", machine="x86_64", run=run)
    assert hw.gpus[0].compute_capability is None and hw.gpus[0].driver == "470.256.02"
    assert any(FULL_QUERY in c for c in run.calls) and any("memory.total" in " ".join(c) for c in run.calls)


def test_loaded_driver_without_nvidia_smi_is_reported(tmp_path: Path, committed_like: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "driver/nvidia").mkdir(parents=True)
    (proc / "driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Release Build\n"
    )
    hw = detect(system="linux", machine="x86_64", run=fake_smi(None), proc_root=proc)
    assert hw.gpus == () and hw.nvidia_driver == "580.65.06"
    rec = recommend(hw, load_index(committed_like))
    assert rec.device == "cpu"
    assert any("nvidia-smi did not answer" in w for w in rec.warnings)


def test_no_gpu_means_cpu(tmp_path: Path, committed_like: Path) -> None:
    hw = detect(system="linux", machine="x86_64", run=fake_smi(None), proc_root=tmp_path / "none")
    rec = recommend(hw, load_index(committed_like))
    assert rec.device == "cpu"
    assert [c.device for c in rec.choices if c.usable] == ["cpu"]


def test_apple_silicon_gets_mps_and_rosetta_is_seen_through(committed_like: Path) -> None:
    native = detect(system="darwin", machine="arm64", run=fake_smi(None, sysctl="0\n"))
    assert native.apple_silicon and not native.rosetta
    assert recommend(native, load_index(committed_like)).device == "mps"
    translated = detect(system="darwin", machine="x86_64", run=fake_smi(None, sysctl="1\n"))
    assert translated.apple_silicon and translated.rosetta and translated.machine == "arm64"
    rec = recommend(translated, load_index(committed_like))
    assert rec.device == "mps" and any("Rosetta" in w for w in rec.warnings)


def test_intel_mac_is_refused_with_the_reason(committed_like: Path) -> None:
    hw = detect(system="darwin", machine="x86_64", run=fake_smi(None, sysctl=None))
    with pytest.raises(NoLockError, match="Intel Macs"):
        recommend(hw, load_index(committed_like))


def test_windows_nvidia_without_a_cuda_lock_runs_on_cpu(committed_like: Path) -> None:
    hw = detect(
        system="win32", machine="AMD64", run=fake_smi("NVIDIA GeForce RTX 4080, 581.29, 8.9, 16376\n")
    )
    assert hw.system == "windows" and hw.machine == "x86_64"
    rec = recommend(hw, load_index(committed_like))
    assert rec.device == "cpu"
    assert "no CUDA build" in next(c for c in rec.choices if c.device == "cuda").reason


def test_windows_nvidia_with_a_cuda_lock_gets_it(tmp_path: Path) -> None:
    index = load_index(write_index(tmp_path / "l", ["windows-x86_64-cuda", "windows-x86_64-cpu"]))
    hw = detect(
        system="win32", machine="AMD64", run=fake_smi("NVIDIA GeForce RTX 4080, 581.29, 8.9, 16376\n")
    )
    assert recommend(hw, index).device == "cuda"
    assert select_lock(index, "windows", "x86_64", "cuda").name == "windows-x86_64-cuda"
    assert select_lock(index, "windows", "x86_64", "cpu").name == "windows-x86_64-cpu"


def test_cpu_lock_preferred_for_cpu_and_cuda_build_as_fallback(tmp_path: Path, committed_like: Path) -> None:
    both = load_index(write_index(tmp_path / "both", ["linux-x86_64-cuda", "linux-x86_64-cpu"]))
    assert select_lock(both, "linux", "x86_64", "cpu").name == "linux-x86_64-cpu"
    assert select_lock(both, "linux", "x86_64", "cuda").name == "linux-x86_64-cuda"
    # Only PyPI's build: it runs on the CPU too.
    assert select_lock(load_index(committed_like), "linux", "x86_64", "cpu").name == "linux-x86_64-cuda"


def test_no_lock_for_the_device_asked_for(committed_like: Path) -> None:
    index = load_index(committed_like)
    with pytest.raises(NoLockError, match="no PyTorch build for Apple GPU"):
        select_lock(index, "linux", "x86_64", "mps")
    with pytest.raises(NoLockError, match="no IPA Studio environment for linux arm64"):
        select_lock(index, "linux", "arm64", "cpu")
