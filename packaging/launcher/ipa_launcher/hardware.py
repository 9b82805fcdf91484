"""What the machine can run: an NVIDIA GPU (driver and compute capability), Apple Silicon, or the CPU.

Detection reads what the drivers report (``nvidia-smi``, ``/proc/driver/nvidia/version``,
``sysctl``) through injectable functions, so the tests fake every driver situation on a machine
without a GPU.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

Run = Callable[[Sequence[str]], str | None]
"""Runs a command and returns its standard output, or None when it is missing or fails."""


@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str
    compute_capability: tuple[int, int] | None
    memory_mib: int | None = None

    @property
    def capability_text(self) -> str:
        cc = self.compute_capability
        return f"{cc[0]}.{cc[1]}" if cc else "unknown"


@dataclass(frozen=True)
class Hardware:
    system: str  # "linux" | "windows" | "macos"
    machine: str  # "x86_64" | "arm64"
    gpus: tuple[Gpu, ...] = ()
    nvidia_driver: str | None = None  # a driver may be loaded while nvidia-smi is missing
    apple_silicon: bool = False
    rosetta: bool = False
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        if self.gpus:
            best = best_gpu(self.gpus)
            assert best is not None
            return (
                f"NVIDIA {best.name.removeprefix('NVIDIA ')} (driver {best.driver}, "
                f"compute capability {best.capability_text})"
            )
        if self.apple_silicon:
            return "Apple Silicon" + (" (the installer runs under Rosetta)" if self.rosetta else "")
        if self.nvidia_driver:
            return f"NVIDIA driver {self.nvidia_driver}, but no GPU could be queried"
        return f"no supported GPU found ({self.machine} CPU)"


def normalise_system(name: str | None = None) -> str:
    name = (name or sys.platform).lower()
    if name.startswith("win"):
        return "windows"
    if name.startswith("darwin") or name.startswith("mac"):
        return "macos"
    return "linux"


def normalise_machine(name: str | None = None) -> str:
    name = (name or platform.machine()).lower()
    return {"amd64": "x86_64", "x64": "x86_64", "aarch64": "arm64"}.get(name, name)


def run_command(argv: Sequence[str], timeout: float = 15.0) -> str | None:
    """Standard output of ``argv``, or None if it is missing, fails or hangs (a wedged driver)."""
    exe = shutil.which(argv[0]) or (argv[0] if os.path.isabs(argv[0]) and os.path.exists(argv[0]) else None)
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


# Where Windows drivers put nvidia-smi when System32 is not on PATH (older driver packages).
WINDOWS_NVIDIA_SMI = r"C:\Program Files\NVIDIA Corporation\NVSMI\nvidia-smi.exe"


def _parse_capability(text: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def parse_nvidia_smi(output: str) -> tuple[Gpu, ...]:
    """Rows of ``--query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader,nounits``.

    Drivers older than the ``compute_cap`` field (before about R510) answer the three-field query
    instead; their compute capability stays unknown.
    """
    gpus = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            continue
        name, driver = parts[0], parts[1]
        capability = _parse_capability(parts[2]) if len(parts) >= 4 else None
        memory_text = parts[3] if len(parts) >= 4 else (parts[2] if len(parts) == 3 else "")
        memory = int(float(memory_text)) if re.fullmatch(r"\d+(\.\d+)?", memory_text) else None
        gpus.append(Gpu(name, driver, capability, memory))
    return tuple(gpus)


def parse_proc_driver_version(text: str) -> str | None:
    """The version in ``/proc/driver/nvidia/version`` ("NVRM version: NVIDIA UNIX x86_64 Kernel
    Module  550.54.14  Thu Feb 22 …"; the open kernel modules say "Open Kernel Module")."""
    match = re.search(r"Kernel Module(?: for \w+)?\s+(\d+(?:\.\d+)+)", text)
    return match.group(1) if match else None


def best_gpu(gpus: Sequence[Gpu]) -> Gpu | None:
    """The GPU to run on: the newest architecture, then the most memory."""
    if not gpus:
        return None
    return max(gpus, key=lambda g: (g.compute_capability or (0, 0), g.memory_mib or 0))


def detect(
    *,
    system: str | None = None,
    machine: str | None = None,
    run: Run = run_command,
    proc_root: Path = Path("/proc"),
    env: Mapping[str, str] | None = None,
) -> Hardware:
    """What this machine has; every probe can be replaced by a fake."""
    system = normalise_system(system)
    machine = normalise_machine(machine)
    env = os.environ if env is None else env
    notes: list[str] = []

    if system == "macos":
        rosetta = (run(["sysctl", "-n", "sysctl.proc_translated"]) or "").strip() == "1"
        arm = machine == "arm64" or rosetta
        return Hardware(system, "arm64" if arm else machine, apple_silicon=arm, rosetta=rosetta)

    query = "--query-gpu=name,driver_version,compute_cap,memory.total"
    smi = ["nvidia-smi"]
    if system == "windows" and run(["nvidia-smi", "--version"]) is None:
        smi = [WINDOWS_NVIDIA_SMI]
    output = run([*smi, query, "--format=csv,noheader,nounits"])
    if output is None:  # a driver too old for compute_cap rejects the whole query
        output = run([*smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"])
    gpus = parse_nvidia_smi(output or "")

    driver = gpus[0].driver if gpus else None
    if system == "linux" and driver is None:
        try:
            driver = parse_proc_driver_version((proc_root / "driver/nvidia/version").read_text())
        except OSError:
            driver = None
        if driver:
            notes.append(
                f"An NVIDIA driver ({driver}) is loaded, but nvidia-smi did not answer, so the GPU "
                "could not be checked."
            )
    if env.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1") and gpus:
        notes.append("CUDA_VISIBLE_DEVICES hides the GPUs from programs started from here.")
    return Hardware(system, machine, gpus, driver, notes=tuple(notes))


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))
