"""Our engine against diffusers' own IP-Adapter (``load_ip_adapter`` + ``set_ip_adapter_scale``).

Same tiny checkpoints on disk, same seed, scheduler and settings: the final latents must agree to
1e-4 in fp32, in every mode, for the global and plus variants, λ ∈ {0, 0.5, 1}, with and without
a text prompt.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from ipa_studio.core.engine import Engine
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.request import (
    ControlSpec,
    GenerationRequest,
    InitImage,
    MaskSpec,
    ModelSpec,
    Reference,
)
from tests.fixtures.reference import diffusers_pipeline

TOL = 1e-4
STEPS = 4
SEED = 1234
MODES = ["txt2img", "img2img", "inpaint", "controlnet"]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def images():
    return {
        "ref": make_reference_image(11, (80, 60)),
        "ref2": make_reference_image(12, (50, 70)),
        "init": make_reference_image(13, (64, 64)),
        "mask": make_mask((64, 64), (16, 8, 48, 40)),
        "control": make_reference_image(14, (64, 64)),
    }


@pytest.fixture(scope="module")
def reference_pipes(tiny_sd15, tiny_sd15_inpaint, tiny_image_encoder, tiny_controlnet):
    """diffusers pipelines per (mode, variant), built lazily and kept for the module."""
    cache = {}

    def get(mode: str, adapter_path):
        key = (mode, str(adapter_path))
        if key not in cache:
            cls, folder = {
                "txt2img": (StableDiffusionPipeline, tiny_sd15),
                "img2img": (StableDiffusionImg2ImgPipeline, tiny_sd15),
                "inpaint": (StableDiffusionInpaintPipeline, tiny_sd15_inpaint),
                "inpaint4": (StableDiffusionInpaintPipeline, tiny_sd15),
                "controlnet": (StableDiffusionControlNetPipeline, tiny_sd15),
            }[mode]
            extra = (
                {"controlnet": ControlNetModel.from_pretrained(tiny_controlnet)}
                if mode == "controlnet"
                else {}
            )
            pipe = diffusers_pipeline(cls, folder, tiny_image_encoder, adapter_path, **extra)
            cache[key] = pipe
        return cache[key]

    return get


def _run_reference(pipe, mode, images, *, prompt, scale, refs, guidance=7.5, adapter=True):
    kwargs = dict(
        prompt=prompt,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="latent",
    )
    if adapter:
        pipe.set_ip_adapter_scale(scale)
        kwargs["ip_adapter_image"] = [refs] if len(refs) > 1 else refs[0]
    if mode == "txt2img":
        kwargs.update(height=64, width=64)
    elif mode == "img2img":
        kwargs.update(image=images["init"], strength=0.6)
    elif mode in ("inpaint", "inpaint4"):
        kwargs.update(image=images["init"], mask_image=images["mask"], strength=0.8, height=64, width=64)
    else:
        kwargs.update(image=images["control"], controlnet_conditioning_scale=0.8, height=64, width=64)
    with torch.no_grad():
        return pipe(**kwargs).images


def _request(
    mode, models, images, *, prompt, scale, refs, guidance=7.5, controlnet=None
) -> GenerationRequest:
    req = GenerationRequest(
        models=models,
        references=tuple(Reference(im) for im in refs),
        prompt=prompt,
        scale=scale,
        steps=STEPS,
        guidance=guidance,
        seed=SEED,
        width=64,
        height=64,
        scheduler="ddim",
    )
    if mode == "img2img":
        return req.replace(init=InitImage(images["init"], 0.6))
    if mode in ("inpaint", "inpaint4"):
        return req.replace(init=InitImage(images["init"], 0.8), mask=MaskSpec(images["mask"]))
    if mode == "controlnet":
        return req.replace(controls=(ControlSpec(images["control"], controlnet, 0.8),))
    return req


class _Models:
    """ModelSpec plus the ControlNet path, per mode."""

    def __init__(self, base, adapter, encoder, controlnet):
        self.spec = ModelSpec(base=base, adapter=adapter, image_encoder=encoder)
        self.controlnet_path = controlnet


def _models_for(mode, adapter, tiny_sd15, tiny_sd15_inpaint, tiny_image_encoder, tiny_controlnet):
    base = tiny_sd15_inpaint if mode == "inpaint" else tiny_sd15
    return _Models(base, adapter, tiny_image_encoder, tiny_controlnet)


def _ours(engine, mode, m: _Models, images, **kw):
    return engine.generate(_request(mode, m.spec, images, controlnet=m.controlnet_path, **kw)).latents


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["global", "plus"])
@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prompt", ["", "a watercolor fox in the snow"])
def test_matches_diffusers_ip_adapter(
    mode,
    variant,
    scale,
    prompt,
    engine,
    images,
    reference_pipes,
    tiny_adapters,
    tiny_sd15,
    tiny_sd15_inpaint,
    tiny_image_encoder,
    tiny_controlnet,
):
    adapter = tiny_adapters[(variant, "safetensors")]
    m = _models_for(mode, adapter, tiny_sd15, tiny_sd15_inpaint, tiny_image_encoder, tiny_controlnet)
    ours = _ours(engine, mode, m, images, prompt=prompt, scale=scale, refs=[images["ref"]])
    theirs = _run_reference(
        reference_pipes(mode, adapter), mode, images, prompt=prompt, scale=scale, refs=[images["ref"]]
    )
    assert ours.shape == theirs.shape
    assert torch.isfinite(ours).all()
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"max |Δlatent| = {diff:.2e}"


@pytest.mark.parametrize("variant", ["global", "plus"])
def test_lambda_changes_the_result(variant, engine, images, tiny_adapters, tiny_sd15, tiny_image_encoder):
    """Guards the equality test against a degenerate fixture where the adapter has no effect."""
    spec = ModelSpec(tiny_sd15, tiny_adapters[(variant, "safetensors")], tiny_image_encoder)
    base = _request("txt2img", spec, images, prompt="", scale=0.0, refs=[images["ref"]])
    plain = engine.generate(base).latents
    full = engine.generate(base.replace(scale=1.0)).latents
    other_ref = engine.generate(base.replace(scale=1.0, references=(Reference(images["ref2"]),))).latents
    assert (plain - full).abs().max() > 1e-2
    assert (full - other_ref).abs().max() > 1e-2


@pytest.mark.parametrize("mode", ["txt2img", "inpaint4"])
def test_lambda_zero_equals_plain_pipeline(
    mode, engine, images, reference_pipes, tiny_adapters, tiny_sd15, tiny_image_encoder
):
    spec = ModelSpec(tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder)
    ours = engine.generate(
        _request(mode, spec, images, prompt="a house", scale=0.0, refs=[images["ref"]])
    ).latents
    plain = _run_reference(
        reference_pipes(mode, None), mode, images, prompt="a house", scale=0.0, refs=[], adapter=False
    )
    assert (ours - plain).abs().max().item() <= 1e-6


def test_inpaint_with_ordinary_unet_matches(
    engine, images, reference_pipes, tiny_adapters, tiny_sd15, tiny_image_encoder
):
    adapter = tiny_adapters[("plus", "bin")]
    spec = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    ours = engine.generate(
        _request("inpaint4", spec, images, prompt="moss", scale=0.7, refs=[images["ref"]])
    ).latents
    theirs = _run_reference(
        reference_pipes("inpaint4", adapter),
        "inpaint4",
        images,
        prompt="moss",
        scale=0.7,
        refs=[images["ref"]],
    )
    assert (ours - theirs).abs().max().item() <= TOL


def test_two_references_match_diffusers_multi_image(
    engine, images, reference_pipes, tiny_adapters, tiny_sd15, tiny_image_encoder
):
    adapter = tiny_adapters[("global", "safetensors")]
    spec = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    refs = [images["ref"], images["ref2"]]
    ours = engine.generate(_request("txt2img", spec, images, prompt="", scale=0.8, refs=refs)).latents
    theirs = _run_reference(
        reference_pipes("txt2img", adapter), "txt2img", images, prompt="", scale=0.8, refs=refs
    )
    assert (ours - theirs).abs().max().item() <= TOL


def test_full_variant_matches(engine, images, reference_pipes, tiny_adapters, tiny_sd15, tiny_image_encoder):
    adapter = tiny_adapters[("full", "bin")]
    spec = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    ours = engine.generate(
        _request("txt2img", spec, images, prompt="", scale=0.6, refs=[images["ref"]])
    ).latents
    theirs = _run_reference(
        reference_pipes("txt2img", adapter), "txt2img", images, prompt="", scale=0.6, refs=[images["ref"]]
    )
    assert (ours - theirs).abs().max().item() <= TOL


def test_per_block_scale_matches_diffusers(
    engine, images, reference_pipes, tiny_adapters, tiny_sd15, tiny_image_encoder
):
    adapter = tiny_adapters[("global", "safetensors")]
    spec = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    ours = engine.generate(
        _request(
            "txt2img",
            spec,
            images,
            prompt="",
            scale={"down_blocks": 0.0, "mid_block": 0.3, "up_blocks": 1.0},
            refs=[images["ref"]],
        )
    ).latents
    theirs = _run_reference(
        reference_pipes("txt2img", adapter),
        "txt2img",
        images,
        prompt="",
        scale={"down": 0.0, "mid": 0.3, "up": 1.0},
        refs=[images["ref"]],
    )
    assert (ours - theirs).abs().max().item() <= TOL


@pytest.mark.parametrize("start", ["new picture", "img2img"])
def test_inpainting_model_without_mask_matches_diffusers_full_mask(
    start, engine, images, reference_pipes, tiny_adapters, tiny_sd15_inpaint, tiny_image_encoder
):
    """A 9-channel model with no mask repaints everything: diffusers' inpainting pipeline with an
    all-white mask (a new picture is strength 1 over any picture, which the full mask blanks)."""
    from PIL import Image

    adapter = tiny_adapters[("global", "safetensors")]
    spec = ModelSpec(tiny_sd15_inpaint, adapter, tiny_image_encoder)
    req = _request("txt2img", spec, images, prompt="a boat", scale=0.7, refs=[images["ref"]])
    strength = 1.0
    if start == "img2img":
        strength = 0.6
        req = req.replace(init=InitImage(images["init"], strength))
    ours = engine.generate(req).latents
    pipe = reference_pipes("inpaint", adapter)
    pipe.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        theirs = pipe(
            prompt="a boat",
            image=images["init"] if start == "img2img" else Image.new("RGB", (64, 64), (200, 30, 90)),
            mask_image=Image.new("L", (64, 64), 255),
            strength=strength,
            height=64,
            width=64,
            ip_adapter_image=images["ref"],
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="latent",
        ).images
    assert (ours - theirs).abs().max().item() <= TOL
