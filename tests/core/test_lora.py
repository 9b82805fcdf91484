"""LoRAs applied by our engine, with the IP-Adapter on, against diffusers' own ``load_lora_weights`` +
``load_ip_adapter`` on the same tiny checkpoints (latents ≤ 1e-4, fp32).

Every fixture is built from a published layout (builders and their evidence in
``tests/fixtures/real_layouts.py``) and is loaded by diffusers (with PEFT) before ours touches it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextModel

from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import ModelFileError, RequestError
from ipa_studio.core.lora import describe_lora
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.request import (
    ControlSpec,
    GenerationRequest,
    InitImage,
    LoraSpec,
    MaskSpec,
    ModelSpec,
    Reference,
)
from tests.fixtures.real_layouts import (
    diffusers_attn_procs_lora,
    diffusers_lora_layers,
    kohya_locon,
    kohya_lora,
    peft_lora,
    peft_text_lora,
)
from tests.fixtures.reference import diffusers_pipeline

pytest.importorskip("peft")  # diffusers' load_lora_weights needs it (in the dev extra)

TOL = 1e-4
STEPS = 3
SEED = 77
PROMPT = "a watercolor fox in the snow"


@pytest.fixture(scope="module")
def parts(tiny_sd15: Path) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    return (
        UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet"),
        CLIPTextModel.from_pretrained(tiny_sd15, subfolder="text_encoder"),
    )


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory: pytest.TempPathFactory, parts) -> dict[str, Path]:
    """One file per layout, named as users find them."""
    unet, text_encoder = parts
    folder = tmp_path_factory.mktemp("loras")
    torch.manual_seed(40)
    files = {
        # kohya / A1111 with an alpha that is not the rank (scale 0.5), UNet + text encoder.
        "kohya": ("detail_tweaker.safetensors", kohya_lora(unet, text_encoder, rank=4, alpha=2.0, scale=0.3)),
        # kohya LoCon: transformer linears, 1×1 proj convs and 3×3 ResNet / sampler convs.
        "kohya-locon": ("locon_style.safetensors", kohya_locon(unet)),
        # the same kohya layout as a pickle (.pt), read through the pickle guard.
        "kohya-pt": ("old_style.pt", kohya_lora(unet, text_encoder, rank=2, scale=0.3)),
        "diffusers-attn-procs": ("pytorch_lora_weights.bin", diffusers_attn_procs_lora(unet, prefix="unet.")),
        "diffusers-0.21": ("lora_compatible.safetensors", diffusers_lora_layers(unet, text_encoder)),
        "peft": (
            "pytorch_lora_weights.safetensors",
            {**peft_lora(unet), **peft_text_lora(text_encoder)},
        ),
    }
    out = {}
    for key, (name, state) in files.items():
        path = folder / key / name
        path.parent.mkdir()
        if name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in state.items()}, path)
        else:
            torch.save(state, path)
        out[key] = path
    return out


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def images():
    return {
        "ref": make_reference_image(21, (80, 60)),
        "init": make_reference_image(22, (64, 64)),
        "mask": make_mask((64, 64), (16, 8, 48, 40)),
        "control": make_reference_image(23, (64, 64)),
    }


def _diffusers_with_loras(
    cls, folder: Path, encoder: Path, adapter: Path, loras: list[tuple[Path, float, float]], **extra
):
    """diffusers' pipeline, IP-Adapter loaded the official way, then each LoRA by load_lora_weights,
    with per-component strengths through set_adapters."""
    pipe = diffusers_pipeline(cls, folder, encoder, adapter, **extra)
    names, weights = [], []
    for i, (path, strength, text_strength) in enumerate(loras):
        name = f"lora{i}"
        if path.suffix == ".pt":
            # diffusers reads only .safetensors / .bin by name; the layout is what is under test.
            state = torch.load(path, weights_only=True)
            pipe.load_lora_weights(state, adapter_name=name)
        else:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        names.append(name)
        weights.append({"unet": strength, "text_encoder": text_strength})
    pipe.set_adapters(names, adapter_weights=weights)
    return pipe


def _theirs(pipe, mode: str, images, scale: float = 0.7):
    pipe.set_ip_adapter_scale(scale)
    kwargs = dict(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(SEED),
        output_type="latent",
        ip_adapter_image=images["ref"],
        height=64,
        width=64,
    )
    if mode == "img2img":
        kwargs.update(image=images["init"], strength=0.7)
        del kwargs["height"], kwargs["width"]
    elif mode == "inpaint":
        kwargs.update(image=images["init"], mask_image=images["mask"], strength=0.8)
    elif mode == "controlnet":
        kwargs.update(image=images["control"], controlnet_conditioning_scale=0.8)
    with torch.no_grad():
        return pipe(**kwargs).images


def _request(models: ModelSpec, loras, mode: str, images, controlnet=None, scale: float = 0.7):
    req = GenerationRequest(
        models=models,
        references=(Reference(images["ref"]),),
        prompt=PROMPT,
        scale=scale,
        steps=STEPS,
        guidance=7.5,
        seed=SEED,
        width=64,
        height=64,
        loras=tuple(loras),
    )
    if mode == "img2img":
        return req.replace(init=InitImage(images["init"], 0.7))
    if mode == "inpaint":
        return req.replace(init=InitImage(images["init"], 0.8), mask=MaskSpec(images["mask"]))
    if mode == "controlnet":
        return req.replace(controls=(ControlSpec(images["control"], controlnet, 0.8),))
    return req


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize(
    "layout", ["kohya", "kohya-locon", "kohya-pt", "diffusers-attn-procs", "diffusers-0.21", "peft"]
)
def test_each_layout_matches_diffusers_with_the_ip_adapter(
    layout, lora_files, engine, images, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    path = lora_files[layout]
    adapter = tiny_adapters[("plus", "safetensors")]
    info = describe_lora(path)
    assert info.usable, info.reason
    pipe = _diffusers_with_loras(
        StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, adapter, [(path, 0.8, 0.6)]
    )
    theirs = _theirs(pipe, "txt2img", images)
    models = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    ours = engine.generate(_request(models, [LoraSpec(path, 0.8, 0.6)], "txt2img", images)).latents
    plain = engine.generate(_request(models, [], "txt2img", images)).latents
    assert _diff(ours, theirs) <= TOL
    # The LoRA really acts (else the equality above would prove nothing).
    assert _diff(ours, plain) > 1e-2


def test_two_loras_with_their_strengths_match_diffusers(
    lora_files, engine, images, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    adapter = tiny_adapters[("global", "safetensors")]
    loras = [(lora_files["kohya"], 0.9, 0.4), (lora_files["peft"], -0.5, 1.2)]
    pipe = _diffusers_with_loras(StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, adapter, loras)
    theirs = _theirs(pipe, "txt2img", images)
    models = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    specs = [LoraSpec(p, s, t) for p, s, t in loras]
    ours = engine.generate(_request(models, specs, "txt2img", images)).latents
    assert _diff(ours, theirs) <= TOL
    # Order does not matter; a disabled LoRA is not applied.
    swapped = engine.generate(_request(models, specs[::-1], "txt2img", images)).latents
    assert _diff(swapped, theirs) <= TOL
    one = engine.generate(
        _request(models, [specs[0], LoraSpec(loras[1][0], -0.5, 1.2, enabled=False)], "txt2img", images)
    ).latents
    only_first = engine.generate(_request(models, [specs[0]], "txt2img", images)).latents
    assert torch.equal(one, only_first)


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "controlnet"])
def test_other_modes_match_diffusers(
    mode,
    lora_files,
    engine,
    images,
    tiny_sd15,
    tiny_sd15_inpaint,
    tiny_image_encoder,
    tiny_adapters,
    tiny_controlnet,
):
    from diffusers import ControlNetModel

    adapter = tiny_adapters[("global", "bin")]
    path = lora_files["kohya"]
    cls = {
        "img2img": StableDiffusionImg2ImgPipeline,
        "inpaint": StableDiffusionInpaintPipeline,
        "controlnet": StableDiffusionControlNetPipeline,
    }[mode]
    extra = {"controlnet": ControlNetModel.from_pretrained(tiny_controlnet)} if mode == "controlnet" else {}
    # The kohya LoRA fits the inpainting UNet too: its layers are the same but for conv_in.
    folder = tiny_sd15_inpaint if mode == "inpaint" else tiny_sd15
    pipe = _diffusers_with_loras(cls, folder, tiny_image_encoder, adapter, [(path, 0.7, 0.7)], **extra)
    theirs = _theirs(pipe, mode, images)
    models = ModelSpec(folder, adapter, tiny_image_encoder)
    req = _request(models, [LoraSpec(path, 0.7)], mode, images, controlnet=tiny_controlnet)
    ours = engine.generate(req).latents
    assert _diff(ours, theirs) <= TOL


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_changing_and_removing_loras_restores_the_exact_base_and_keeps_the_adapter(
    lora_files, images, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    engine = Engine(device="cpu", dtype=torch.float32)
    adapter = tiny_adapters[("plus", "safetensors")]
    models = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    plain_req = _request(models, [], "txt2img", images)
    plain = engine.generate(plain_req).latents
    base = engine.base
    unet0, text0 = _state(base.unet), _state(base.text_encoder)
    processors = dict(base.unet.attn_processors)
    ip_weights = {k: v.detach().clone() for k, v in engine.adapter.state_dict().items()}
    loaded = list(engine.stats.components_loaded)

    for loras in (
        [LoraSpec(lora_files["kohya"], 1.0)],
        [LoraSpec(lora_files["kohya"], 0.3, 1.5), LoraSpec(lora_files["kohya-locon"], 0.6)],
        [LoraSpec(lora_files["peft"], 0.5)],
    ):
        engine.generate(_request(models, loras, "txt2img", images))
        assert engine.base is base  # never reloaded
        assert dict(base.unet.attn_processors) == processors  # the adapter's processors survive
        for k, v in engine.adapter.state_dict().items():
            assert torch.equal(v, ip_weights[k]), k  # W'k / W'v untouched by the LoRA
    changed = [k for k, v in base.unet.state_dict().items() if not torch.equal(v, unet0[k])]
    assert changed  # the last LoRA was applied
    again = engine.generate(plain_req).latents
    for k, v in base.unet.state_dict().items():
        assert torch.equal(v, unet0[k]), k
    for k, v in base.text_encoder.state_dict().items():
        assert torch.equal(v, text0[k]), k
    assert torch.equal(again, plain)
    assert dict(base.unet.attn_processors) == processors
    # Only the three LoRA files were read; no base model, encoder or adapter again.
    new = engine.stats.components_loaded[len(loaded) :]
    assert sorted(new) == sorted(f"lora:{lora_files[k]}" for k in ("kohya", "kohya-locon", "peft"))


def test_strength_change_reads_nothing_and_text_encodings_follow(
    lora_files, images, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    engine = Engine(device="cpu", dtype=torch.float32)
    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    path = lora_files["kohya"]
    a = engine.generate(_request(models, [LoraSpec(path, 0.5, 0.0)], "txt2img", images)).latents
    reads = len(engine.stats.components_loaded)
    b = engine.generate(_request(models, [LoraSpec(path, 0.5, 1.0)], "txt2img", images)).latents
    assert len(engine.stats.components_loaded) == reads
    assert _diff(a, b) > 1e-3  # the text strength changed the prompt's encoding (not a stale cache)
    c = engine.generate(_request(models, [LoraSpec(path, 0.5, 0.0)], "txt2img", images)).latents
    assert torch.equal(a, c)


def test_switching_base_model_takes_loras_off_the_kept_one(
    lora_files, images, tiny_sd15, tiny_sd15_inpaint, tiny_image_encoder, tiny_adapters
):
    engine = Engine(device="cpu", dtype=torch.float32, base_cache_bytes=10**10)
    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    plain = engine.generate(_request(models, [], "txt2img", images)).latents
    first = engine.base
    unet0 = _state(first.unet)
    engine.generate(_request(models, [LoraSpec(lora_files["kohya"], 1.0)], "txt2img", images))
    other = ModelSpec(tiny_sd15_inpaint, models.adapter, models.image_encoder)
    engine.generate(_request(other, [LoraSpec(lora_files["kohya"], 1.0)], "txt2img", images))
    assert engine.cached_base_path == Path(tiny_sd15)
    for k, v in first.unet.state_dict().items():
        assert torch.equal(v, unet0[k]), k
    back = engine.generate(_request(models, [], "txt2img", images)).latents
    assert torch.equal(back, plain)


# ------------------------------------------------------------------------------------------ refusals


def _sdxl_kohya() -> dict[str, torch.Tensor]:
    """kohya's SDXL names (sgm UNet blocks, two text encoders: lora_te1_ / lora_te2_), 2048-wide
    cross-attention (diffusers ``_maybe_map_sgm_blocks_to_diffusers``; kohya ``sdxl_train_network``)."""
    name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k"
    te2 = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    return {
        f"{name}.lora_down.weight": torch.zeros(4, 2048),
        f"{name}.lora_up.weight": torch.zeros(640, 4),
        f"{name}.alpha": torch.tensor(4.0),
        f"{te2}.lora_down.weight": torch.zeros(4, 1280),
        f"{te2}.lora_up.weight": torch.zeros(1280, 4),
    }


def test_refusals_are_worded(tmp_path: Path, images, tiny_sd15, tiny_image_encoder, tiny_adapters, parts):
    unet, _ = parts
    sdxl = tmp_path / "sdxl_style.safetensors"
    save_file(_sdxl_kohya(), sdxl)
    info = describe_lora(sdxl)
    assert (info.base, info.usable) == ("SDXL", False)
    assert (
        info.reason == "it is a LoRA for SDXL; IPA Studio runs SD1.5 models, and its layers do not fit them"
    )

    loha = tmp_path / "loha.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {f"{name}.hada_w1_a": torch.zeros(32, 2), f"{name}.hada_w1_b": torch.zeros(2, 32),
         f"{name}.hada_w2_a": torch.zeros(32, 2), f"{name}.hada_w2_b": torch.zeros(2, 32),
         f"{name}.alpha": torch.tensor(2.0)},
        loha,
    )  # fmt: skip
    info = describe_lora(loha)
    assert (info.format, info.usable) == ("LyCORIS LoHa", False)
    assert "LyCORIS LoHa, a layout IPA Studio cannot read" in info.reason

    not_lora = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, not_lora)
    info = describe_lora(not_lora)
    assert (info.usable, info.reason) == (False, "it is not a LoRA: none of its weights are LoRA layers")

    engine = Engine(device="cpu", dtype=torch.float32)
    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    for path, words in ((sdxl, "LoRA for SDXL"), (loha, "LyCORIS LoHa"), (not_lora, "not a LoRA")):
        with pytest.raises(ModelFileError, match=words):
            engine.generate(_request(models, [LoraSpec(path)], "txt2img", images))

    # A LoRA for another SD1.5-shaped model of other widths: named layer by layer, nothing changed.
    misfit = tmp_path / "misfit.safetensors"
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {f"{layer}.lora_down.weight": torch.zeros(4, 320), f"{layer}.lora_up.weight": torch.zeros(320, 4)},
        misfit,
    )
    state = _state(engine.base.unet)
    with pytest.raises(RequestError, match="does not fit this model: its layer"):
        engine.generate(_request(models, [LoraSpec(misfit)], "txt2img", images))
    for k, v in engine.base.unet.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_full_size_kohya_layout_fits_every_layer_of_sd15(tmp_path: Path):
    """At SD1.5's real widths (the bundled configs, built on the meta device: no memory), kohya's
    names for every layer a LoCon trains (attention, feed-forward, proj_in/out, ResNet and sampler
    convolutions, time-embedding projections) and for the text encoder's attention are read as an
    SD1.5 LoRA and each one finds its layer, at its shape."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig

    from ipa_studio.core.lora import LoraPatcher, read_lora
    from ipa_studio.core.models.loader import single_file_configs

    configs = single_file_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel(**{k: v for k, v in configs["unet"].items() if not k.startswith("_")})
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    torch.manual_seed(0)
    state = {**kohya_locon(unet, rank=1), **kohya_lora(unet, text_encoder, rank=1)}
    # kohya also trains each ResNet's time-embedding projection (a Linear outside the attentions).
    for path, m in unet.named_modules():
        if path.endswith("time_emb_proj"):
            name = "lora_unet_" + path.replace(".", "_")
            state[f"{name}.lora_down.weight"] = torch.zeros(1, m.in_features)
            state[f"{name}.lora_up.weight"] = torch.zeros(m.out_features, 1)
    path = tmp_path / "lcm_layout.safetensors"
    save_file(state, path)
    info = describe_lora(path)
    assert (info.usable, info.base, info.parts) == (True, "SD1.x", ("unet", "text_encoder"))
    weights = read_lora(path)
    LoraPatcher(unet, text_encoder).check(weights)  # raises naming the first layer that does not fit
    layers = sum(len(v) for v in weights.parts.values())
    # 16 transformer blocks × (8 attention + 2 feed-forward + proj_in/out), 22 ResNets × 2 convs,
    # 6 down/up-sampler convs, 22 time projections, 12 text layers × 4 attention projections.
    assert layers == info.layers == 16 * 12 + 22 * 2 + 6 + 22 + 12 * 4


def test_lora_without_adapter_then_adapter_added_and_removed(
    lora_files, images, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    path = lora_files["kohya"]
    adapter = tiny_adapters[("global", "safetensors")]
    # diffusers with the LoRA and no IP-Adapter at all.
    pipe = diffusers_pipeline(StableDiffusionPipeline, tiny_sd15, tiny_image_encoder)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[{"unet": 0.9, "text_encoder": 0.7}])
    with torch.no_grad():
        theirs = pipe(
            prompt=PROMPT,
            num_inference_steps=STEPS,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="latent",
            height=64,
            width=64,
        ).images
    engine = Engine(device="cpu", dtype=torch.float32)
    lora = [LoraSpec(path, 0.9, 0.7)]
    text_only = _request(ModelSpec(tiny_sd15), lora, "txt2img", images).replace(references=())
    first = engine.generate(text_only).latents
    assert _diff(first, theirs) <= TOL
    # The adapter installed over the LoRA'd UNet = the adapter and LoRA loaded together.
    with_adapter = _request(ModelSpec(tiny_sd15, adapter, tiny_image_encoder), lora, "txt2img", images)
    both = engine.generate(with_adapter).latents
    fresh = Engine(device="cpu", dtype=torch.float32).generate(with_adapter).latents
    assert torch.equal(both, fresh)
    # And taken off again, the LoRA stays as it was.
    assert torch.equal(engine.generate(text_only).latents, first)


def test_hostile_pickles_as_lora_or_embedding_run_nothing(tmp_path: Path, images, tiny_sd15):
    from ipa_studio.core.errors import UnsafeFileError
    from tests.fixtures.malicious import write_malicious_pickle

    marker = tmp_path / "pwned"
    lora = write_malicious_pickle(tmp_path / "add_detail.pt", marker)
    embedding = write_malicious_pickle(tmp_path / "easynegative.pt", tmp_path / "pwned2")
    engine = Engine(device="cpu", dtype=torch.float32)
    base = GenerationRequest(models=ModelSpec(tiny_sd15), prompt="easynegative", steps=1, width=64, height=64)
    with pytest.raises(UnsafeFileError, match="never runs code from model files"):
        engine.generate(base.replace(loras=(LoraSpec(lora),)))
    with pytest.raises(UnsafeFileError, match="never runs code from model files"):
        engine.generate(base.replace(embeddings=(embedding,)))
    with pytest.raises(UnsafeFileError):
        describe_lora(lora)
    assert not marker.exists() and not (tmp_path / "pwned2").exists()
