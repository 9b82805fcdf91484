"""The whole Fast path against diffusers: an LCM-LoRA in its published layout, the IP-Adapter, the
LCM sampler at guidance 1 — our engine against ``StableDiffusionPipeline`` + ``load_lora_weights`` +
``load_ip_adapter`` + ``LCMScheduler`` (the LCM-LoRA model card's recipe) on the tiny checkpoints."""

from __future__ import annotations

import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from ipa_studio.core.engine import Engine
from ipa_studio.core.fewstep import apply_preset, detect_fewstep
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.request import GenerationRequest, LoraSpec, ModelSpec, Reference
from tests.fixtures.fewstep_loras import write_lcm_lora
from tests.fixtures.reference import diffusers_pipeline

TOL = 1e-4


@pytest.fixture(scope="module")
def lcm_lora(tiny_sd15, tmp_path_factory):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    # Rank 64 as published; weights large enough that the LoRA visibly changes the result.
    return write_lcm_lora(unet, tmp_path_factory.mktemp("lcm") / "lcm-lora-sdv1-5.safetensors", scale=0.06)


@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_fast_preset_with_lcm_lora_and_adapter_matches_diffusers(
    guidance, lcm_lora, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    adapter = tiny_adapters[("global", "safetensors")]
    ref = make_reference_image(41, (70, 60))
    base = GenerationRequest(
        models=ModelSpec(tiny_sd15, adapter, tiny_image_encoder),
        references=(Reference(ref),),
        prompt="a paper boat on a pond",
        scale=0.7,
        seed=3,
        width=64,
        height=64,
    )
    request = apply_preset(base, detect_fewstep(lcm_lora)).replace(
        guidance=guidance, loras=(LoraSpec(lcm_lora, 1.0),)
    )
    assert (request.scheduler, request.steps) == ("lcm", 4)
    engine = Engine(device="cpu", dtype=torch.float32)
    ours = engine.generate(request).latents
    without = engine.generate(request.replace(loras=())).latents

    pipe = diffusers_pipeline(StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, adapter)
    pipe.load_lora_weights(str(lcm_lora.parent), weight_name=lcm_lora.name)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        theirs = pipe(
            prompt="a paper boat on a pond",
            ip_adapter_image=ref,
            num_inference_steps=4,
            guidance_scale=guidance,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(3),
            output_type="latent",
        ).images
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"max |Δlatent| = {diff:.2e}"
    assert (ours - without).abs().max().item() > 1e-2  # the LoRA really acted
