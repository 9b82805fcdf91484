"""Which lock file (and so which PyTorch build) to install, and on which device to run it.

The targets are described in ``packaging/locks/targets.toml``; a target counts only when its lock
file was compiled (``compile_locks.py``), because some backends come from an index that was not
reachable where the locks were made.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from .hardware import Gpu, Hardware, best_gpu, version_tuple

DEVICE_NAMES = {"cuda": "NVIDIA GPU (CUDA)", "mps": "Apple GPU (Metal)", "cpu": "CPU only"}


class NoLockError(Exception):
    """This installer carries no environment for the machine or the device asked for."""


@dataclass(frozen=True)
class Target:
    name: str
    os: str
    arch: str
    python_platform: str
    torch_backend: str
    devices: tuple[str, ...]
    installed_gb: float
    cuda: str | None = None
    min_driver: str | None = None
    min_compute_capability: str | None = None
    macos_min: str | None = None
    file: Path | None = None  # the compiled lock, when there is one

    @property
    def available(self) -> bool:
        return self.file is not None and self.file.is_file()

    @property
    def installed_bytes(self) -> int:
        return int(self.installed_gb * 1024**3)

    def sha256(self) -> str:
        assert self.file is not None
        return hashlib.sha256(self.file.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LockIndex:
    python: str
    targets: tuple[Target, ...]

    def for_machine(self, system: str, arch: str) -> list[Target]:
        return [t for t in self.targets if t.os == system and t.arch == arch and t.available]


def load_index(folder: Path) -> LockIndex:
    """``targets.toml`` in ``folder``, each target with its lock file if it was compiled."""
    data = tomllib.loads((folder / "targets.toml").read_text(encoding="utf-8"))
    targets = []
    for raw in data.get("target", []):
        path = folder / f"{raw['name']}.txt"
        targets.append(
            Target(
                name=raw["name"],
                os=raw["os"],
                arch=raw["arch"],
                python_platform=raw["python_platform"],
                torch_backend=raw["torch_backend"],
                devices=tuple(raw["devices"]),
                installed_gb=float(raw["installed_gb"]),
                cuda=raw.get("cuda"),
                min_driver=raw.get("min_driver"),
                min_compute_capability=raw.get("min_compute_capability"),
                macos_min=raw.get("macos_min"),
                file=path if path.is_file() else None,
            )
        )
    return LockIndex(python=str(data["python"]), targets=tuple(targets))


def select_lock(index: LockIndex, system: str, arch: str, device: str) -> Target:
    """The lock to install for ``device`` on this OS and architecture.

    A lock built for the device itself wins (the CPU-only build on a CPU machine is ~3 GB smaller);
    otherwise any lock that also runs there (PyPI's CUDA build of PyTorch runs on the CPU).
    """
    candidates = [t for t in index.for_machine(system, arch) if device in t.devices]
    if not candidates:
        what = DEVICE_NAMES.get(device, device)
        offered = sorted({d for t in index.for_machine(system, arch) for d in t.devices})
        if offered:
            raise NoLockError(
                f"This installer has no PyTorch build for {what} on {system} {arch}. "
                f"It can install for: {', '.join(DEVICE_NAMES.get(d, d) for d in offered)}."
            )
        raise NoLockError(f"This installer has no IPA Studio environment for {system} {arch}.")
    return min(candidates, key=lambda t: (t.devices[0] != device, t.installed_gb))


@dataclass(frozen=True)
class Choice:
    """One device the person can pick, with the reason it is (not) offered."""

    device: str
    usable: bool
    reason: str


@dataclass(frozen=True)
class Recommendation:
    device: str
    reason: str
    choices: tuple[Choice, ...]
    warnings: tuple[str, ...] = field(default=())


def _cuda_problem(gpu: Gpu, target: Target) -> str | None:
    """Why ``gpu`` cannot run ``target``'s CUDA build, or None."""
    name = gpu.name.removeprefix("NVIDIA ")
    if target.min_compute_capability and gpu.compute_capability is not None:
        if gpu.compute_capability < version_tuple(target.min_compute_capability)[:2]:
            return (
                f"The {name} (compute capability {gpu.capability_text}) is too old for PyTorch's "
                f"CUDA {target.cuda} build, which needs {target.min_compute_capability} or newer "
                "(GeForce 16/20 series and later)."
            )
    if target.min_driver and gpu.driver:
        if version_tuple(gpu.driver) < version_tuple(target.min_driver):
            return (
                f"The NVIDIA driver {gpu.driver} is too old for CUDA {target.cuda}: version "
                f"{target.min_driver} or newer is needed. Update the driver from nvidia.com, then "
                "choose Repair to switch to the GPU."
            )
    return None


def recommend(hardware: Hardware, index: LockIndex) -> Recommendation:
    """The device to install for, the reason in words, and every device with why it is (not) usable."""
    system, arch = hardware.system, hardware.machine
    targets = index.for_machine(system, arch)
    warnings = list(hardware.notes)
    choices: dict[str, Choice] = {}

    cuda_targets = [t for t in targets if "cuda" in t.devices]
    gpu = best_gpu(hardware.gpus)
    if system == "macos":
        choices["cuda"] = Choice("cuda", False, "Macs have no NVIDIA GPUs that PyTorch supports.")
    elif gpu is None:
        choices["cuda"] = Choice("cuda", False, "No NVIDIA GPU was found.")
    elif not cuda_targets:
        choices["cuda"] = Choice(
            "cuda",
            False,
            f"This installer carries no CUDA build of PyTorch for {system}; it runs on the CPU.",
        )
    else:
        problem = _cuda_problem(gpu, cuda_targets[0])
        if problem:
            choices["cuda"] = Choice("cuda", False, problem)
        else:
            memory = f", {gpu.memory_mib / 1024:.0f} GB" if gpu.memory_mib else ""
            choices["cuda"] = Choice("cuda", True, f"{gpu.name.removeprefix('NVIDIA ')}{memory}")
            if gpu.memory_mib is not None and gpu.memory_mib < 4000:
                warnings.append(
                    f"The {gpu.name} has {gpu.memory_mib} MB of memory; Stable Diffusion 1.5 needs about "
                    "4 GB, so generations may run out of GPU memory."
                )
            if gpu.compute_capability is None:
                warnings.append("The driver did not report the GPU's compute capability; it was not checked.")

    mps_ok = hardware.apple_silicon and any("mps" in t.devices for t in targets)
    if hardware.apple_silicon:
        choices["mps"] = Choice(
            "mps", mps_ok, "Apple Silicon GPU" if mps_ok else "This installer has no build for Apple Silicon."
        )
        if hardware.rosetta:
            warnings.append(
                "The installer runs under Rosetta; IPA Studio itself is installed for Apple Silicon."
            )
    cpu_ok = any("cpu" in t.devices for t in targets)
    choices["cpu"] = Choice(
        "cpu",
        cpu_ok,
        "Works everywhere; a picture takes minutes instead of seconds."
        if cpu_ok
        else f"This installer has no build for {system} {arch}.",
    )

    if choices["cuda"].usable:
        device, reason = "cuda", f"NVIDIA GPU found: {hardware.summary()}."
    elif choices.get("mps") and choices["mps"].usable:
        device, reason = "mps", "Apple Silicon: IPA Studio runs on its GPU (Metal)."
    elif cpu_ok:
        device = "cpu"
        reason = "No usable GPU: IPA Studio will run on the CPU."
        if gpu is not None or hardware.nvidia_driver:
            reason += " " + choices["cuda"].reason
    else:
        if system == "macos" and arch == "x86_64":
            raise NoLockError(
                "PyTorch, which IPA Studio runs on, no longer supports Intel Macs; IPA Studio needs a Mac "
                "with Apple Silicon (M1 or newer)."
            )
        raise NoLockError(f"This installer has no IPA Studio environment for {system} {arch}.")
    order = ("cuda", "mps", "cpu")
    return Recommendation(device, reason, tuple(choices[d] for d in order if d in choices), tuple(warnings))


def lock_packages(path: Path) -> dict[str, str]:
    """``{name: version}`` of a requirements lock (``name==version \\`` lines)."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and "==" in line:
            name, _, rest = line.partition("==")
            found[name.strip().lower()] = rest.split()[0].rstrip("\\").strip().split(";")[0].strip()
    return found


def describe(targets: Sequence[Target]) -> str:
    return ", ".join(t.name for t in targets)
