"""LCM and TCD, with the IP-Adapter on, against diffusers' own pipelines with those schedulers.

The oracle is what the LCM-LoRA / TCD-LoRA model cards run: a plain ``StableDiffusion*Pipeline``,
``load_ip_adapter``, and ``LCMScheduler`` / ``TCDScheduler`` built ``from_config`` of the model's
scheduler. Both guidance cases count: 1.0 (the unconditional half is skipped, in diffusers as in the
engine) and 1.5 (classifier-free guidance on, as the LCM-LoRA card allows up to 2).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    ControlNetModel,
    LCMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    TCDScheduler,
)

from ipa_studio.core.engine import TCD_GAMMA, Engine
from ipa_studio.core.errors import RequestError
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.request import ControlSpec, GenerationRequest, InitImage, MaskSpec, ModelSpec, Reference
from tests.fixtures.reference import diffusers_pipeline

TOL = 1e-4
SEED = 77
SCHEDULER_CLASSES = {"lcm": LCMScheduler, "tcd": TCDScheduler}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def images():
    return {
        "ref": make_reference_image(21, (70, 50)),
        "init": make_reference_image(22, (64, 64)),
        "mask": make_mask((64, 64), (8, 16, 40, 56)),
        "control": make_reference_image(23, (64, 64)),
    }


@pytest.fixture(scope="module")
def pipes(tiny_sd15, tiny_sd15_inpaint, tiny_image_encoder, tiny_controlnet, tiny_adapters):
    cache = {}
    adapter = tiny_adapters[("global", "safetensors")]

    def get(mode: str, scheduler: str):
        if (mode, scheduler) not in cache:
            cls, folder = {
                "txt2img": (StableDiffusionPipeline, tiny_sd15),
                "img2img": (StableDiffusionImg2ImgPipeline, tiny_sd15),
                "inpaint": (StableDiffusionInpaintPipeline, tiny_sd15_inpaint),
                "controlnet": (StableDiffusionControlNetPipeline, tiny_sd15),
            }[mode]
            extra = {}
            if mode == "controlnet":
                extra["controlnet"] = ControlNetModel.from_pretrained(tiny_controlnet)
            pipe = diffusers_pipeline(cls, folder, tiny_image_encoder, adapter, **extra)
            pipe.scheduler = SCHEDULER_CLASSES[scheduler].from_config(pipe.scheduler.config)
            cache[(mode, scheduler)] = pipe
        return cache[(mode, scheduler)]

    return get


def _theirs(pipe, mode, scheduler, images, steps, guidance):
    pipe.set_ip_adapter_scale(0.8)
    kwargs = dict(
        prompt="a red kite over a beach",
        ip_adapter_image=images["ref"],
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="latent",
    )
    if scheduler == "tcd":
        kwargs["eta"] = TCD_GAMMA  # the TCD model card's call: pipe(..., eta=0.3)
    if mode == "txt2img":
        kwargs.update(height=64, width=64)
    elif mode == "img2img":
        kwargs.update(image=images["init"], strength=0.6)
    elif mode == "inpaint":
        kwargs.update(image=images["init"], mask_image=images["mask"], strength=0.9, height=64, width=64)
    else:
        kwargs.update(image=images["control"], controlnet_conditioning_scale=0.7, height=64, width=64)
    with torch.no_grad():
        return pipe(**kwargs).images


def _ours(engine, models, mode, scheduler, images, steps, guidance, controlnet):
    r = GenerationRequest(
        models=models,
        references=(Reference(images["ref"]),),
        prompt="a red kite over a beach",
        scale=0.8,
        steps=steps,
        guidance=guidance,
        seed=SEED,
        width=64,
        height=64,
        scheduler=scheduler,
    )
    if mode == "img2img":
        r = r.replace(init=InitImage(images["init"], 0.6))
    elif mode == "inpaint":
        r = r.replace(init=InitImage(images["init"], 0.9), mask=MaskSpec(images["mask"]))
    elif mode == "controlnet":
        r = r.replace(controls=(ControlSpec(images["control"], controlnet, 0.7),))
    return engine.generate(r).latents


@pytest.mark.parametrize("scheduler", ["lcm", "tcd"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint", "controlnet"])
@pytest.mark.parametrize("guidance", [1.0, 1.5])
def test_few_step_sampler_matches_diffusers(
    scheduler,
    mode,
    guidance,
    engine,
    images,
    pipes,
    tiny_sd15,
    tiny_sd15_inpaint,
    tiny_image_encoder,
    tiny_adapters,
    tiny_controlnet,
):
    base = tiny_sd15_inpaint if mode == "inpaint" else tiny_sd15
    models = ModelSpec(base, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    steps = 4
    ours = _ours(engine, models, mode, scheduler, images, steps, guidance, tiny_controlnet)
    theirs = _theirs(pipes(mode, scheduler), mode, scheduler, images, steps, guidance)
    assert ours.shape == theirs.shape
    assert torch.isfinite(ours).all()
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"max |Δlatent| = {diff:.2e}"


def test_samplers_differ_from_ddim_and_each_other(
    engine, images, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    """Guards the equality test against a scheduler name that silently falls back to another."""
    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    out = {
        name: _ours(engine, models, "txt2img", name, images, 4, 1.0, None) for name in ("ddim", "lcm", "tcd")
    }
    assert (out["lcm"] - out["ddim"]).abs().max() > 1e-2
    assert (out["tcd"] - out["lcm"]).abs().max() > 1e-2


def test_guidance_one_runs_half_the_batch(engine, images, tiny_sd15, tiny_image_encoder, tiny_adapters):
    """Guidance 1 is the conditional prediction alone: the UNet sees one row per picture, not two."""
    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    engine.load(GenerationRequest(models=models))
    rows: list[int] = []
    hook = engine.base.unet.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        _ours(engine, models, "txt2img", "lcm", images, 4, 1.0, None)
        without = list(rows)
        rows.clear()
        _ours(engine, models, "txt2img", "lcm", images, 4, 1.5, None)
    finally:
        hook.remove()
    assert without == [1, 1, 1, 1]
    assert rows == [2, 2, 2, 2]


def test_too_many_steps_for_a_consistency_sampler_is_refused(engine, tiny_sd15):
    r = GenerationRequest(models=ModelSpec(tiny_sd15), steps=60, scheduler="lcm", width=64, height=64)
    with pytest.raises(RequestError, match="at most 50 steps"):
        engine.generate(r)


@pytest.mark.parametrize(("ours", "a1111"), [("lcm", "LCM"), ("tcd", "TCD")])
def test_metadata_names_the_sampler_as_a1111_does(ours, a1111):
    from ipa_studio.core.foreign_metadata import read_foreign_settings
    from ipa_studio.core.metadata import request_from_metadata, request_to_metadata

    r = GenerationRequest(models=ModelSpec("base"), steps=4, guidance=1.0, scheduler=ours)
    meta = request_to_metadata(r)
    assert f"Steps: 4, Sampler: {a1111}, CFG scale: 1," in meta["parameters"]
    assert request_from_metadata(meta).scheduler == ours
    # A picture made elsewhere with that sampler (only A1111's text, no JSON of ours) maps back too.
    foreign = read_foreign_settings({"parameters": meta["parameters"]})
    assert foreign is not None and foreign.scheduler == ours and not foreign.notes


@pytest.mark.parametrize(("scheduler", "label"), [("lcm", "LCM"), ("tcd", "TCD")])
def test_cli_generates_with_a_few_step_sampler_and_precision(
    scheduler, label, tiny_sd15, tiny_adapters, tiny_image_encoder, tmp_path
):
    import json

    from ipa_studio.cli import main
    from ipa_studio.core.images import read_png_metadata

    ref = tmp_path / "ref.png"
    make_reference_image(3, (70, 50)).save(ref)
    out = tmp_path / "fast.png"
    args = [
        "generate", "--model", str(tiny_sd15),
        "--adapter", str(tiny_adapters[("global", "safetensors")]),
        "--image-encoder", str(tiny_image_encoder), "--ref", str(ref),
        "--scheduler", scheduler, "--steps", "4", "--guidance", "1",
        "--precision", "bf16", "--width", "64", "--height", "64", "--quiet", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    meta = read_png_metadata(out)
    assert f"Steps: 4, Sampler: {label}, CFG scale: 1," in meta["parameters"]
    assert json.loads(meta["ipa-studio"])["request"]["scheduler"] == scheduler
