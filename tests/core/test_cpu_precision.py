"""CPU number formats: bf16 by default where the CPU has it natively, and bf16 results equal to fp32
results within bf16's own rounding.

The tolerance: bf16 keeps 8 significant bits, so each weight and activation is off by up to 2⁻⁹
relative; through a UNet call, 4 steps and the decoder such errors add up to about a per cent of the
latents' range. The test holds bf16 to 3 % of the fp32 latents' largest value (measured on the
tiny models: 0.3-2.4 %), and the decoded pixels to 2 levels of 255 on average (measured: 0.1-0.9),
while a different seed (a truly different picture) is far outside both (80-170 % and 10-44 levels),
so the check can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ipa_studio.core import devices
from ipa_studio.core.devices import PRECISIONS, cpu_has_native_bf16, default_dtype, parse_precision
from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import IPAStudioError
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.request import ControlSpec, GenerationRequest, InitImage, MaskSpec, ModelSpec, Reference

LATENT_TOL = 0.03
PIXEL_TOL = 2.0


def _flags() -> set[str]:
    for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_native_bf16_is_read_from_the_cpu_flags():
    flags = _flags()
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_default_precision_per_device(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert default_dtype("cpu") is torch.bfloat16
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert default_dtype("cpu") is torch.float32
    assert default_dtype("cuda") is torch.float16
    assert default_dtype("mps") is torch.float32


def test_an_engine_without_a_precision_takes_the_default():
    assert Engine(device="cpu").dtype is default_dtype("cpu")
    assert Engine(device="cpu", dtype=torch.float32).dtype is torch.float32


@pytest.mark.parametrize(
    ("text", "dtype"), [("bf16", torch.bfloat16), (" FP32 ", torch.float32), ("auto", None)]
)
def test_parse_precision(text, dtype):
    assert parse_precision(text) is dtype


def test_parse_precision_refuses_unknown_names():
    with pytest.raises(IPAStudioError, match="'fp8' is not a number format; use auto, fp32, bf16, fp16"):
        parse_precision("fp8")
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16"}


@pytest.fixture(scope="module")
def engines():
    return Engine(device="cpu", dtype=torch.float32), Engine(device="cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint", "controlnet"])
@pytest.mark.parametrize("scheduler", ["ddim", "lcm"])
def test_bf16_differs_from_fp32_only_by_rounding(
    mode, scheduler, engines, tiny_sd15, tiny_sd15_inpaint, tiny_image_encoder, tiny_adapters, tiny_controlnet
):
    base = tiny_sd15_inpaint if mode == "inpaint" else tiny_sd15
    r = GenerationRequest(
        models=ModelSpec(base, tiny_adapters[("plus", "safetensors")], tiny_image_encoder),
        references=(Reference(make_reference_image(31, (64, 48))),),
        prompt="a lighthouse at dusk",
        scale=0.8,
        steps=4,
        guidance=1.0 if scheduler == "lcm" else 6.0,
        seed=9,
        width=64,
        height=64,
        scheduler=scheduler,
    )
    init = make_reference_image(32, (64, 64))
    if mode == "img2img":
        r = r.replace(init=InitImage(init, 0.7))
    elif mode == "inpaint":
        r = r.replace(init=InitImage(init, 0.9), mask=MaskSpec(make_mask((64, 64), (8, 8, 48, 40))))
    elif mode == "controlnet":
        r = r.replace(controls=(ControlSpec(make_reference_image(33, (64, 64)), tiny_controlnet, 0.8),))
    fp32_engine, bf16_engine = engines
    full = fp32_engine.generate(r)
    half = bf16_engine.generate(r)
    assert half.latents.dtype is torch.float32  # latents stay fp32; only the networks run in bf16
    scale = full.latents.abs().max().item()
    latent_diff = (half.latents - full.latents).abs().max().item() / scale
    pixels = np.asarray(half.images[0], np.float32) - np.asarray(full.images[0], np.float32)
    pixel_diff = float(np.abs(pixels).mean())
    other = fp32_engine.generate(r.replace(seed=10))
    other_diff = (other.latents - full.latents).abs().max().item() / scale
    other_pixels = float(np.abs(np.asarray(other.images[0], np.float32) - np.asarray(full.images[0])).mean())
    assert latent_diff <= LATENT_TOL, f"bf16 latents off by {latent_diff:.3%} of their range"
    assert pixel_diff <= PIXEL_TOL, f"bf16 pixels off by {pixel_diff:.2f} levels on average"
    assert other_diff > 10 * LATENT_TOL and other_pixels > 2 * PIXEL_TOL
