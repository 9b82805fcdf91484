"""Recognising few-step LoRAs and proposing their Fast preset (``core/fewstep.py``).

The LCM-LoRA fixture is built in the published layout (``tests/fixtures/fewstep_loras.py``) and
diffusers' own ``load_lora_weights`` must read it, and change the UNet, before ours judges it.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

from ipa_studio.core.errors import ModelFileError
from ipa_studio.core.fewstep import FastPreset, apply_preset, detect_fewstep, fewstep_from
from ipa_studio.core.request import GenerationRequest, ModelSpec
from tests.fixtures.fewstep_loras import kohya_style_lora, lcm_lora_state, write_lcm_lora


@pytest.fixture(scope="module")
def unet(tiny_sd15) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")


@pytest.fixture(scope="module")
def lcm_file(unet, tmp_path_factory):
    # The name the published file has on the hub, which people keep.
    return write_lcm_lora(unet, tmp_path_factory.mktemp("lcm") / "pytorch_lora_weights.safetensors")


def test_diffusers_reads_the_lcm_lora_fixture(lcm_file, tiny_sd15, unet):
    """The independent reader: every key maps onto a layer of the UNet, and the weights change."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(lcm_file.parent), weight_name=lcm_file.name, adapter_name="lcm")
    pipe.fuse_lora()
    after = pipe.unet.state_dict()
    # PEFT keeps each fused layer's weight as '<layer>.base_layer.weight'.
    changed = [
        k.replace(".base_layer", "")
        for k, v in after.items()
        if k.endswith(".base_layer.weight") and not torch.equal(v, before[k.replace(".base_layer", "")])
    ]
    assert len(changed) == len(lcm_lora_state(unet)) // 3  # every layer of the file, no other
    assert any("time_emb_proj" in k for k in changed)
    assert any("conv_shortcut" in k for k in changed)
    assert any("attn2.to_k" in k for k in changed)


def test_lcm_layout_without_a_telling_name_is_probably_lcm(lcm_file):
    preset = detect_fewstep(lcm_file)
    assert preset == FastPreset("LCM", "lcm", 4, 1.0, "its layout, the published LCM-LoRA's", certain=False)
    assert preset.describe().startswith("probably an LCM few-step LoRA")


def test_lcm_layout_with_another_rank_or_text_encoder_part_is_not_claimed(unet, tmp_path):
    other_rank = write_lcm_lora(unet, tmp_path / "a.safetensors", rank=32)
    assert detect_fewstep(other_rank) is None
    state = lcm_lora_state(unet)
    state["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(64, 32)
    save_file(state, str(tmp_path / "b.safetensors"))
    assert detect_fewstep(tmp_path / "b.safetensors") is None


def test_a_kohya_style_lora_is_not_few_step(unet, tmp_path):
    assert detect_fewstep(kohya_style_lora(unet, tmp_path / "watercolor_v2.safetensors")) is None


def test_kohya_metadata_names_the_kind(unet, tmp_path):
    """A kohya-trained LCM LoRA under a plain file name: its ``ss_output_name`` tells."""
    path = kohya_style_lora(
        unet, tmp_path / "my_lora.safetensors", metadata={"ss_output_name": "lcm_anime_8step"}
    )
    preset = detect_fewstep(path)
    assert (preset.kind, preset.scheduler, preset.steps, preset.guidance) == ("LCM", "lcm", 8, 1.0)
    assert preset.evidence == "its training metadata (ss_output_name)" and preset.certain


def test_modelspec_title_names_the_kind(unet, tmp_path):
    path = kohya_style_lora(
        unet,
        tmp_path / "x.safetensors",
        metadata={"modelspec.title": "Trajectory Consistency Distillation SD1.5"},
    )
    assert detect_fewstep(path).kind == "TCD"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [
        # Published names: latent-consistency/lcm-lora-sdv1-5, ByteDance/Hyper-SD, h1t/TCD-SD15.
        ("lcm-lora-sdv1-5", ("LCM", "lcm", 4, 1.0)),
        ("LCM_LoRA_Weights_SD15", ("LCM", "lcm", 4, 1.0)),
        ("Hyper-SD15-1step-lora", ("Hyper-SD", "tcd", 1, 1.0)),
        ("Hyper-SD15-2steps-lora", ("Hyper-SD", "tcd", 2, 1.0)),
        ("Hyper-SD15-4steps-lora", ("Hyper-SD", "tcd", 4, 1.0)),
        ("Hyper-SD15-8steps-lora", ("Hyper-SD", "tcd", 8, 1.0)),
        ("Hyper-SD15-8steps-CFG-lora", ("Hyper-SD", "tcd", 8, 5.0)),
        ("Hyper-SD15-12steps-CFG-lora", ("Hyper-SD", "tcd", 12, 5.0)),
        ("TCD-SD15-LoRA", ("TCD", "tcd", 4, 1.0)),
        ("sd15_lightning_8step_lora", ("Lightning", "tcd", 8, 1.0)),
        ("juggernaut_lightning", ("Lightning", "tcd", 4, 1.0)),
    ],
)
def test_published_names(stem, expected):
    preset = fewstep_from(stem, {}, None)
    assert (preset.kind, preset.scheduler, preset.steps, preset.guidance) == expected
    assert preset.evidence == "its file name"


@pytest.mark.parametrize("stem", ["watercolor", "clcm_style", "eclectic-portrait", "pytorch_lora_weights"])
def test_ordinary_names_are_not_few_step(stem):
    assert fewstep_from(stem, {}, None) is None


def test_damaged_header_is_a_clear_error(tmp_path):
    bad = tmp_path / "lcm.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelFileError, match="not a valid .safetensors"):
        detect_fewstep(bad)


def test_apply_preset_changes_only_sampler_steps_guidance():
    r = GenerationRequest(models=ModelSpec("base"), prompt="a cat", steps=30, guidance=7.5, seed=5)
    fast = apply_preset(r, fewstep_from("lcm-lora-sdv1-5", {}, None))
    assert (fast.scheduler, fast.steps, fast.guidance) == ("lcm", 4, 1.0)
    assert fast.replace(scheduler="ddim", steps=30, guidance=7.5) == r
