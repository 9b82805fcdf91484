"""LoRAs and textual inversions are named for what they are (IPA Studio does not apply them yet),
never "not a diffusion model" or "unsafe", and their layout is kept in ``details`` for the code that
will apply them. Each fixture (builders and evidence in ``tests/fixtures/real_layouts.py``) is first
read by diffusers' own loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from ipa_studio.core.models.detect import detect
from ipa_studio.core.models.library import ModelLibrary
from tests.fixtures.real_layouts import (
    a1111_embedding,
    diffusers_attn_procs_lora,
    kohya_lora,
    peft_lora,
)


@pytest.fixture(scope="module")
def unet(tiny_sd15: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")


@pytest.fixture(scope="module")
def text_encoder(tiny_sd15: Path) -> CLIPTextModel:
    return CLIPTextModel.from_pretrained(tiny_sd15, subfolder="text_encoder")


def _diffusers_reads_lora(path: Path, unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """diffusers' reading of a LoRA file, short of PEFT (not installed here): ``lora_state_dict``
    (which converts kohya names) and ``convert_unet_state_dict_to_peft`` (which converts the old
    diffusers names); every UNet entry must then name a real layer of the UNet, at its width."""
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    state, _alphas = StableDiffusionPipeline.lora_state_dict(str(path.parent), weight_name=path.name)
    unet_part = {k.removeprefix("unet."): v for k, v in state.items() if not k.startswith("text_encoder.")}
    peft = convert_unet_state_dict_to_peft(unet_part)
    for key, value in peft.items():
        module, which = key.rsplit(".lora_", 1)
        layer = unet.get_submodule(module)
        if which.startswith("A"):
            assert value.shape == (value.shape[0], layer.in_features), key
        else:
            assert value.shape == (layer.out_features, value.shape[1]), key
    return state


@pytest.mark.parametrize(
    "case, fmt, targets",
    [
        ("kohya.safetensors", "kohya", ["text_encoder", "unet"]),
        ("attn_procs.bin", "diffusers attention processors", ["unet"]),
        ("pytorch_lora_weights_old.safetensors", "diffusers", ["unet"]),
        ("pytorch_lora_weights.safetensors", "PEFT", ["unet"]),
    ],
)
def test_loras_are_named_as_loras_with_their_format(
    case: str, fmt: str, targets: list[str], tmp_path: Path, unet, text_encoder
) -> None:
    path = tmp_path / case
    if case.startswith("kohya"):
        save_file(kohya_lora(unet, text_encoder), path)
    elif case == "attn_procs.bin":
        torch.save(diffusers_attn_procs_lora(unet), path)
    elif case.endswith("_old.safetensors"):
        save_file(diffusers_attn_procs_lora(unet, prefix="unet."), path)
    else:
        save_file(peft_lora(unet), path)
    state = _diffusers_reads_lora(path, unet)
    assert state  # diffusers took it as a LoRA

    found = detect(path)
    assert (found.kind, found.architecture, found.usable) == ("lora", "LoRA", False)
    assert found.reason == "a LoRA; IPA Studio does not apply LoRAs (yet)"
    assert (found.details["lora_format"], found.details["targets"], found.details["rank"]) == (
        fmt,
        targets,
        4,
    )
    assert found.details["cross_attention_dim"] == unet.config.cross_attention_dim
    entry = ModelLibrary(tmp_path / "library").add(path, hash_files=False)
    assert (entry.kind, entry.details["lora_format"]) == ("lora", fmt)


def test_full_size_kohya_lora_header_names_its_base(tmp_path: Path) -> None:
    from tests.fixtures.checkpoints import write_shapes_only

    shapes = {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (16, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 16),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": (),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a": (320, 8),
    }
    found = detect(write_shapes_only(tmp_path / "style.safetensors", shapes, "F32"))
    assert (found.kind, found.details["base"], found.details["lora_format"]) == (
        "lora",
        "SD1.x",
        "LyCORIS LoHa",
    )


@pytest.fixture
def pipe(tiny_sd15: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None)


@pytest.mark.parametrize(
    "case, layout",
    [
        ("a1111.pt", "A1111 .pt (string_to_param)"),
        ("a1111-parameterdict.pt", "A1111 .pt (string_to_param)"),
        ("a1111.safetensors", "A1111 safetensors (emb_params)"),
        ("learned_embeds.bin", "diffusers learned_embeds"),
        ("learned_embeds.safetensors", "diffusers learned_embeds"),
    ],
)
def test_textual_inversions_are_named_as_embeddings_not_unsafe(
    case: str, layout: str, tmp_path: Path, pipe: StableDiffusionPipeline
) -> None:
    width = pipe.text_encoder.config.hidden_size
    vectors = torch.randn(2, width)
    path = tmp_path / case
    if case == "a1111.pt":
        torch.save(a1111_embedding(vectors), path)
    elif case == "a1111-parameterdict.pt":
        torch.save(a1111_embedding(vectors, parameter_dict=True), path)
    elif case == "a1111.safetensors":
        save_file({"emb_params": vectors}, path)  # A1111 Embedding.save for .safetensors
    elif case == "learned_embeds.bin":
        vectors = vectors[:1]
        torch.save({"<my-style>": vectors[0]}, path)  # diffusers examples/textual_inversion save_progress
    else:
        vectors = vectors[:1]
        save_file({"<my-style>": vectors[0].contiguous()}, path)

    # Independent readers first.
    if case == "a1111-parameterdict.pt":
        # diffusers loads weights-only and refuses the pickled module class; A1111 reads it with its
        # restricted unpickler that allows ParameterDict (modules/safe.py), then takes _parameters.
        data = torch.load(path, weights_only=False)  # our own fixture: trusted
        table = getattr(data["string_to_param"], "_parameters", data["string_to_param"])
        assert torch.equal(table["*"].detach(), vectors)
    else:
        pipe.load_textual_inversion(str(path), token="<my-style>")
        ids = pipe.tokenizer.convert_tokens_to_ids(
            ["<my-style>"] + [f"<my-style>_{i}" for i in range(1, len(vectors))]
        )
        rows = pipe.text_encoder.get_input_embeddings().weight[ids]
        assert torch.equal(rows.detach(), vectors)

    found = detect(path)
    assert (found.kind, found.architecture, found.usable) == (
        "embedding",
        "textual-inversion embedding",
        False,
    )
    assert found.reason == "an embedding; IPA Studio does not load them"
    assert (found.details["embedding_format"], found.details["vectors"], found.details["width"]) == (
        layout,
        len(vectors),
        width,
    )
    entry = ModelLibrary(tmp_path / "library").add(path, hash_files=False)
    assert entry.kind == "embedding"


def test_full_size_embeddings_name_their_base(tmp_path: Path) -> None:
    from tests.fixtures.checkpoints import write_shapes_only

    sd15 = detect(write_shapes_only(tmp_path / "easynegative.safetensors", {"emb_params": (8, 768)}, "F32"))
    assert (sd15.kind, sd15.details["base"], sd15.details["vectors"]) == ("embedding", "SD1.x", 8)
    sdxl = detect(
        write_shapes_only(tmp_path / "xl.safetensors", {"clip_l": (4, 768), "clip_g": (4, 1280)}, "F32")
    )
    assert (sdxl.kind, sdxl.details["base"]) == ("embedding", "SDXL")
