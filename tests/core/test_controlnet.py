"""ControlNet generation: several controls at once, step windows, and isolation from the adapter.

* Two controls equal diffusers' ``StableDiffusionControlNetPipeline`` with a list of ControlNets
  (``MultiControlNetModel``) plus ``load_ip_adapter``, on the same tiny checkpoints and seed, and differ
  from either control alone.
* ``start`` / ``end`` decide on which steps a ControlNet runs, by diffusers' rule; the calls are counted.
* The adapter's image tokens never reach a ControlNet's own cross-attention, and plain and ControlNet
  generation share one loaded base model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from ipa_studio.core import engine as engine_module
from ipa_studio.core.adapter import DecoupledAttnProcessor
from ipa_studio.core.engine import Engine, StepInfo
from ipa_studio.core.models.tiny import build_controlnet_folder, make_reference_image
from ipa_studio.core.request import ControlSpec, GenerationRequest, ModelSpec, Reference
from tests.fixtures.reference import diffusers_pipeline

TOL = 1e-4
SEED = 99
TEXT_TOKENS = 77


@pytest.fixture(scope="module")
def second_controlnet(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path) -> Path:
    """Another tiny ControlNet with different weights (stands in for a depth net next to a pose net)."""
    return build_controlnet_folder(tmp_path_factory.mktemp("models") / "controlnet-2", tiny_sd15, seed=5)


@pytest.fixture(scope="module")
def maps() -> tuple:
    return make_reference_image(31, (64, 64)), make_reference_image(32, (64, 64))


@pytest.fixture(scope="module")
def ref():
    return make_reference_image(33, (70, 50))


@pytest.fixture()
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


def _request(spec: ModelSpec, ref, controls: tuple[ControlSpec, ...], steps: int = 4) -> GenerationRequest:
    return GenerationRequest(
        models=spec,
        references=(Reference(ref),) if ref is not None else (),
        prompt="a dancer on a stage",
        scale=0.7,
        steps=steps,
        guidance=7.5,
        seed=SEED,
        width=64,
        height=64,
        controls=controls,
    )


def _two_controls(maps, first: Path, second: Path) -> tuple[ControlSpec, ControlSpec]:
    return (
        ControlSpec(maps[0], first, scale=0.8),
        ControlSpec(maps[1], second, scale=0.6, start=0.25, end=0.75),
    )


def test_two_controls_match_diffusers_multicontrolnet(
    engine, maps, ref, tiny_sd15, tiny_image_encoder, tiny_adapters, tiny_controlnet, second_controlnet
) -> None:
    adapter = tiny_adapters[("global", "safetensors")]
    spec = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    ours = engine.generate(_request(spec, ref, _two_controls(maps, tiny_controlnet, second_controlnet)))

    pipe = diffusers_pipeline(
        StableDiffusionControlNetPipeline,
        tiny_sd15,
        tiny_image_encoder,
        adapter,
        controlnet=[ControlNetModel.from_pretrained(p) for p in (tiny_controlnet, second_controlnet)],
    )
    pipe.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        theirs = pipe(
            prompt="a dancer on a stage",
            ip_adapter_image=ref,
            image=list(maps),
            controlnet_conditioning_scale=[0.8, 0.6],
            control_guidance_start=[0.0, 0.25],
            control_guidance_end=[1.0, 0.75],
            num_inference_steps=4,
            guidance_scale=7.5,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="latent",
        ).images
    diff = (ours.latents - theirs).abs().max().item()
    assert diff <= TOL, f"max |Δlatent| = {diff:.2e}"


def test_two_controls_differ_from_each_single_one(
    engine, maps, tiny_sd15, tiny_controlnet, second_controlnet
) -> None:
    spec = ModelSpec(tiny_sd15)
    first, second = _two_controls(maps, tiny_controlnet, second_controlnet)
    second = ControlSpec(second.image, second.model, second.scale)  # full window: both act every step
    both = engine.generate(_request(spec, None, (first, second))).latents
    only_first = engine.generate(_request(spec, None, (first,))).latents
    only_second = engine.generate(_request(spec, None, (second,))).latents
    assert (both - only_first).abs().max() > 1e-2
    assert (both - only_second).abs().max() > 1e-2
    assert (only_first - only_second).abs().max() > 1e-2


def test_start_end_choose_the_guided_steps(
    engine, maps, tiny_sd15, tiny_controlnet, second_controlnet, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps_done = 0
    calls: list[tuple[float, int]] = []  # (conditioning scale, step index)
    original = ControlNetModel.forward

    def counting_forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((kwargs["conditioning_scale"], steps_done))
        return original(self, *args, **kwargs)

    def on_step(info: StepInfo) -> None:
        nonlocal steps_done
        steps_done = info.step

    monkeypatch.setattr(ControlNetModel, "forward", counting_forward)
    request = _request(ModelSpec(tiny_sd15), None, _two_controls(maps, tiny_controlnet, second_controlnet), 8)
    engine.generate(request, on_step=on_step)
    assert steps_done == 8
    # Full window: every step. start=0.25, end=0.75 over 8 steps: step i runs when i/8 >= 0.25 and
    # (i+1)/8 <= 0.75 (diffusers' control_guidance_start / _end rule), i.e. steps 2…5.
    assert [step for scale, step in calls if scale == 0.8] == list(range(8))
    assert [step for scale, step in calls if scale == 0.6] == [2, 3, 4, 5]


def test_image_tokens_never_reach_the_controlnet(
    engine, maps, ref, tiny_sd15, tiny_image_encoder, tiny_adapters, tiny_controlnet, monkeypatch
) -> None:
    loaded: list[torch.nn.Module] = []
    real_load = engine_module.load_controlnet

    def capture(*args, **kwargs):  # type: ignore[no-untyped-def]
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(engine_module, "load_controlnet", capture)
    spec = ModelSpec(tiny_sd15, tiny_adapters[("plus", "safetensors")], tiny_image_encoder)
    control = (ControlSpec(maps[0], tiny_controlnet, scale=1.0),)
    engine.load(_request(spec, ref, control))
    (controlnet,) = loaded

    # Every cross-attention of the ControlNet records what it attends to; its residuals are recorded too.
    seen: list[torch.Tensor] = []
    residuals: list[torch.Tensor] = []
    attn2 = [m for name, m in controlnet.named_modules() if name.endswith("attn2")]
    assert attn2
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, _a, kw: seen.append(kw["encoder_hidden_states"]), with_kwargs=True
        )
        for m in attn2
    ]
    hooks.append(controlnet.register_forward_hook(lambda _m, _a, out: residuals.append(out[1])))
    try:
        with_ref = engine.generate(_request(spec, ref, control, steps=1))
        first_mid = residuals[0]
        residuals.clear()
        other_ref = engine.generate(_request(spec, make_reference_image(34), control, steps=1))
    finally:
        for h in hooks:
            h.remove()

    # Exactly the text embedding (negative prompt, then prompt): 77 tokens, no image tokens appended.
    base = engine.base

    def embed(prompt: str) -> torch.Tensor:
        ids = base.tokenizer(prompt, padding="max_length", max_length=TEXT_TOKENS, return_tensors="pt")
        with torch.no_grad():
            return base.text_encoder(ids.input_ids)[0]

    text = torch.cat([embed(""), embed("a dancer on a stage")])
    assert len(seen) == 2 * len(attn2)
    for states in seen:
        assert states.shape == (2, TEXT_TOKENS, text.shape[-1])
        assert torch.equal(states, text)
    # The adapter sits on the UNet's cross-attention only, never on the ControlNet's.
    assert not any(isinstance(p, DecoupledAttnProcessor) for p in controlnet.attn_processors.values())
    unet_ip = [p for p in base.unet.attn_processors.values() if isinstance(p, DecoupledAttnProcessor)]
    assert len(unet_ip) == len([k for k in base.unet.attn_processors if ".attn2." in k]) > 0
    # Another reference changes the image but not a single bit of the ControlNet's output on step 1.
    assert torch.equal(residuals[0], first_mid)
    assert (with_ref.latents - other_ref.latents).abs().max() > 1e-3


def test_plain_and_controlnet_generation_share_the_base_model(
    engine, maps, ref, tiny_sd15, tiny_image_encoder, tiny_adapters, tiny_controlnet
) -> None:
    spec = ModelSpec(tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder)
    plain_request = _request(spec, ref, ())
    plain = engine.generate(plain_request).latents
    base, unet = engine.base, engine.base.unet
    weights = {name: p.data_ptr() for name, p in unet.named_parameters()}
    guided = engine.generate(_request(spec, ref, (ControlSpec(maps[0], tiny_controlnet),))).latents
    assert engine.base is base and engine.base.unet is unet
    assert {name: p.data_ptr() for name, p in unet.named_parameters()} == weights
    loaded = engine.stats.components_loaded
    assert [c for c in loaded if c.startswith("base:")] == [f"base:{tiny_sd15}"]
    assert [c for c in loaded if c.startswith("controlnet:")] == [f"controlnet:{tiny_controlnet}"]
    assert (plain - guided).abs().max() > 1e-3
    # The ControlNet leaves nothing behind: the plain request gives the same latents again.
    assert torch.equal(engine.generate(plain_request).latents, plain)
