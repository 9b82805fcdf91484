"""Which device to run on, in which precision, and how to name it for people."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

from ipa_studio.core.errors import IPAStudioError

__all__ = [
    "PRECISIONS",
    "cpu_has_native_bf16",
    "default_dtype",
    "describe_device",
    "parse_precision",
    "pick_device",
]

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The number formats people can choose ("auto" = :func:`default_dtype`)."""

_KNOWN = "'auto', 'cuda', 'cuda:N' (N = GPU number), 'mps' or 'cpu'"


def pick_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to run on.

    With no preference (or ``"auto"``): the first CUDA GPU, else Apple MPS, else the CPU. A named
    device (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``) is used as asked or, when this machine
    cannot provide it, refused with :class:`IPAStudioError`: silently falling back to the CPU would
    turn a one-minute job into an hour without saying why.
    """
    if preferred is None or (isinstance(preferred, str) and preferred.strip().lower() in ("", "auto")):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    if isinstance(preferred, torch.device):
        device = preferred
    else:
        text = preferred.strip().lower()
        try:
            device = torch.device(text)
        except (RuntimeError, ValueError) as exc:
            raise IPAStudioError(f"'{preferred}' is not a device name; use {_KNOWN}.") from exc

    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        _check_cuda(device)
        return device
    if device.type == "mps":
        if not _mps_available():
            raise IPAStudioError(
                "Apple MPS was asked for, but it is not available here: it needs a Mac with Apple "
                "Silicon, macOS 12.3 or later, and a PyTorch built with MPS. Use 'cpu' instead."
            )
        return torch.device("mps")
    raise IPAStudioError(f"The device '{preferred}' is not supported; use {_KNOWN}.")


def _check_cuda(device: torch.device) -> None:
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = "this PyTorch was built without CUDA support"
        else:
            why = "no NVIDIA GPU (or no working NVIDIA driver) was found"
        raise IPAStudioError(f"The CUDA device '{device}' was asked for, but {why}. Use 'cpu' instead.")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        have = ", ".join(f"cuda:{i}" for i in range(count))
        gpus = "GPU" if count == 1 else "GPUs"
        raise IPAStudioError(
            f"The CUDA device '{device}' was asked for, but this machine has {count} CUDA {gpus} ({have})."
        )


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86: AVX512-BF16 or AMX-BF16), so that bf16 runs
    faster than fp32 instead of being emulated (slower) — read from the CPU's own flags."""
    if platform.system() == "Linux":
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[-1].split())
                return any(flag in flags for flag in _CPU_BF16_FLAGS)
    # Elsewhere oneDNN's own check: it asks the CPU for the same instructions.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and platform.machine().lower() in (
            "x86_64",
            "amd64",
        )
    except (AttributeError, RuntimeError):
        return False


def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (half the memory, tensor cores; SD1.5 is trained to tolerate it); bf16 on CPUs
    with native bf16 (AVX512-BF16 / AMX: about half the fp32 time per step, fp32's range, so no
    overflow to black pictures); fp32 on other CPUs (bf16 there is emulated, slower than fp32) and
    on MPS, where fp16 SD1.5 tends to produce black images."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def parse_precision(name: str | None) -> torch.dtype | None:
    """ "fp32" / "bf16" / "fp16" → that dtype; None, "" or "auto" → None (the device's default)."""
    if name is None or name.strip().lower() in ("", "auto"):
        return None
    key = name.strip().lower()
    if key not in PRECISIONS:
        raise IPAStudioError(f"'{name}' is not a number format; use auto, {', '.join(PRECISIONS)}.")
    return PRECISIONS[key]


def describe_device(device: torch.device | str) -> str:
    """A short name for the status bar and logs: ``"CUDA: NVIDIA GeForce RTX 4090 (24 GiB)"``,
    ``"Apple MPS"`` or ``"CPU (8 threads)"``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        gib = props.total_memory / 2**30
        return f"CUDA: {props.name} ({gib:.0f} GiB)"
    if device.type == "mps":
        return "Apple MPS"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    return str(device)
