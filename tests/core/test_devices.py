"""Device choice, precision and naming. CUDA and MPS are simulated so this runs on any machine."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ipa_studio.core import devices
from ipa_studio.core.devices import default_dtype, describe_device, pick_device
from ipa_studio.core.errors import IPAStudioError


@pytest.fixture
def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)  # CUDA must still win


@pytest.fixture
def mac(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)


def test_auto_prefers_cuda(two_gpus: None) -> None:
    assert pick_device() == torch.device("cuda")
    assert pick_device("auto") == torch.device("cuda")


def test_auto_then_mps(mac: None) -> None:
    assert pick_device() == torch.device("mps")


def test_auto_falls_back_to_cpu(no_accelerators: None) -> None:
    assert pick_device() == torch.device("cpu")
    assert pick_device("") == torch.device("cpu")


def test_named_devices(two_gpus: None) -> None:
    assert pick_device("cuda") == torch.device("cuda")
    assert pick_device("CUDA:1") == torch.device("cuda", 1)
    assert pick_device(" cpu ") == torch.device("cpu")
    assert pick_device("mps") == torch.device("mps")
    assert pick_device(torch.device("cuda", 0)) == torch.device("cuda", 0)


def test_cpu_is_always_available(no_accelerators: None) -> None:
    assert pick_device("cpu") == torch.device("cpu")


def test_missing_gpu_index_is_refused(two_gpus: None) -> None:
    with pytest.raises(IPAStudioError, match=r"'cuda:2'.*2 CUDA GPUs \(cuda:0, cuda:1\)"):
        pick_device("cuda:2")


def test_unavailable_devices_are_refused(no_accelerators: None) -> None:
    with pytest.raises(IPAStudioError, match="CUDA device 'cuda' was asked for"):
        pick_device("cuda")
    with pytest.raises(IPAStudioError, match="Apple MPS was asked for"):
        pick_device("mps")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "nvidia"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(IPAStudioError, match=f"'{name}' is not a device name"):
        pick_device(name)


def test_unsupported_torch_device_types_are_refused() -> None:
    with pytest.raises(IPAStudioError, match="not supported"):
        pick_device("meta")


def test_default_dtype() -> None:
    assert default_dtype(torch.device("cuda")) == torch.float16
    assert default_dtype("cuda:1") == torch.float16
    assert default_dtype("mps") == torch.float32
    # bf16 where the CPU computes it natively (tests/core/test_cpu_precision.py), fp32 elsewhere.
    assert default_dtype(torch.device("cpu")) in (torch.float32, torch.bfloat16)


def test_describe_cpu_and_mps() -> None:
    threads = torch.get_num_threads()
    expected = f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    assert describe_device("cpu") == expected
    assert describe_device(torch.device("mps")) == "Apple MPS"


def test_describe_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def props(index: int) -> SimpleNamespace:
        seen.append(index)
        return SimpleNamespace(name="NVIDIA GeForce RTX 4090", total_memory=25_393_692_672)

    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    assert describe_device("cuda:1") == "CUDA: NVIDIA GeForce RTX 4090 (24 GiB)"
    assert describe_device("cuda") == "CUDA: NVIDIA GeForce RTX 4090 (24 GiB)"
    assert seen == [1, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_device() -> None:
    device = pick_device()
    assert device.type == "cuda"
    assert describe_device(device).startswith("CUDA: ")
    assert torch.ones(2, device=device, dtype=default_dtype(device)).sum().item() == 2
