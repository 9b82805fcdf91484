"""LoRAs and textual inversions are library kinds: named for what they are (never "not a diffusion
model" or "unsafe"), usable when they fit SD1.5, refused with the reason when not. Each fixture
(builders and evidence in ``tests/fixtures/real_layouts.py``) is first read by diffusers' own loaders.
The engine's use of them is tested in ``test_lora.py`` and ``test_embeddings.py``."""

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
    # The tiny models' layers are 32 wide: a LoRA for them is no SD1.5 LoRA, and says so.
    assert (found.kind, found.architecture, found.usable) == ("lora", "LoRA", False)
    assert found.reason == "it is a LoRA for a model with 32-wide text; SD1.5 models have 768"
    assert (found.details["lora_format"], found.details["targets"], found.details["rank"]) == (
        fmt,
        targets,
        4,
    )
    assert found.details["cross_attention_dim"] == unet.config.cross_attention_dim
    entry = ModelLibrary(tmp_path / "library").add(path, hash_files=False)
    assert (entry.kind, entry.details["lora_format"]) == ("lora", fmt)


def _full_size_lora(layout: str) -> dict[str, tuple[int, ...]]:
    """Header stubs at SD1.5's widths for one attn2 layer (320 wide, 768-wide text) and one text
    layer, in each layout (the same names as the tiny fixtures above, read by diffusers there)."""
    unet = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    te = "text_model.encoder.layers.0.self_attn"
    if layout == "kohya":
        k, q = (
            "lora_unet_" + (unet + ".to_k").replace(".", "_"),
            "lora_te_" + (te + ".q_proj").replace(".", "_"),
        )
        return {
            f"{k}.lora_down.weight": (16, 768), f"{k}.lora_up.weight": (320, 16), f"{k}.alpha": (),
            f"{q}.lora_down.weight": (16, 768), f"{q}.lora_up.weight": (768, 16), f"{q}.alpha": (),
        }  # fmt: skip
    if layout == "PEFT":
        return {
            f"unet.{unet}.to_k.lora_A.weight": (8, 768), f"unet.{unet}.to_k.lora_B.weight": (320, 8),
            f"text_encoder.{te}.q_proj.lora_A.weight": (8, 768),
            f"text_encoder.{te}.q_proj.lora_B.weight": (768, 8),
        }  # fmt: skip
    return {
        f"unet.{unet}.processor.to_k_lora.down.weight": (4, 768),
        f"unet.{unet}.processor.to_k_lora.up.weight": (320, 4),
    }


@pytest.mark.parametrize("layout", ["kohya", "PEFT", "diffusers"])
def test_full_size_loras_are_usable_library_entries(layout: str, tmp_path: Path) -> None:
    from tests.fixtures.checkpoints import write_shapes_only

    path = write_shapes_only(tmp_path / "add_detail.safetensors", _full_size_lora(layout), "F16")
    found = detect(path)
    assert (found.kind, found.usable, found.reason, found.details["base"]) == ("lora", True, None, "SD1.x")
    assert found.details["lora_format"] == layout
    library = ModelLibrary(tmp_path / "library")
    entry = library.add(path, hash_files=False)
    assert (entry.kind, entry.usable) == ("lora", True)
    assert [e.name for e in library.entries("lora", usable_only=True)] == [entry.name]


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
    assert found.reason == (
        "it is a LyCORIS LoHa, a layout IPA Studio cannot read (diffusers cannot either); "
        "use a plain LoRA (lora_down / lora_up) of it"
    )
    sdxl = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (16, 2048),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": (640, 16),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (16, 1280),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (1280, 16),
    }
    found = detect(write_shapes_only(tmp_path / "xl.safetensors", sdxl, "F16"))
    assert (found.kind, found.usable, found.details["base"]) == ("lora", False, "SDXL")
    assert (
        found.reason == "it is a LoRA for SDXL; IPA Studio runs SD1.5 models, and its layers do not fit them"
    )


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
def test_textual_inversions_are_usable_embeddings_not_unsafe(case: str, layout: str, tmp_path: Path) -> None:
    from diffusers.loaders.textual_inversion import (
        TextualInversionLoaderMixin,
        load_textual_inversion_state_dicts,
    )

    from ipa_studio.core.prompts import load_bundled_tokenizer

    vectors = torch.randn(2, 768)  # SD1.5's text width
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

    # Independent readers first (the layout; the engine's use is held to load_textual_inversion on a
    # model in test_embeddings.py).
    if case == "a1111-parameterdict.pt":
        # diffusers loads weights-only and refuses the pickled module class; A1111 reads it with its
        # restricted unpickler that allows ParameterDict (modules/safe.py), then takes _parameters.
        data = torch.load(path, weights_only=False)  # our own fixture: trusted
        table = getattr(data["string_to_param"], "_parameters", data["string_to_param"])
        assert torch.equal(table["*"].detach(), vectors)
    else:
        states = load_textual_inversion_state_dicts([str(path)])
        _tokens, embeddings = TextualInversionLoaderMixin._retrieve_tokens_and_embeddings(
            ["<my-style>"], states, load_bundled_tokenizer()
        )
        assert torch.equal(embeddings[0].reshape(-1, 768), vectors)

    found = detect(path)
    assert (found.kind, found.architecture, found.usable, found.reason) == (
        "embedding",
        "textual-inversion embedding",
        True,
        None,
    )
    assert (found.details["embedding_format"], found.details["vectors"], found.details["width"]) == (
        layout,
        len(vectors),
        768,
    )
    entry = ModelLibrary(tmp_path / "library").add(path, hash_files=False)
    assert (entry.kind, entry.usable) == ("embedding", True)


def test_full_size_embeddings_name_their_base(tmp_path: Path) -> None:
    from tests.fixtures.checkpoints import write_shapes_only

    sd15 = detect(write_shapes_only(tmp_path / "easynegative.safetensors", {"emb_params": (8, 768)}, "F32"))
    assert (sd15.kind, sd15.details["base"], sd15.details["vectors"]) == ("embedding", "SD1.x", 8)
    sdxl = detect(
        write_shapes_only(tmp_path / "xl.safetensors", {"clip_l": (4, 768), "clip_g": (4, 1280)}, "F32")
    )
    assert (sdxl.kind, sdxl.details["base"], sdxl.usable) == ("embedding", "SDXL", False)
    sd2 = detect(write_shapes_only(tmp_path / "sd2.safetensors", {"emb_params": (8, 1024)}, "F32"))
    assert (sd2.kind, sd2.details["base"], sd2.usable) == ("embedding", "SD2.x", False)
    assert sd2.reason == (
        "it is an embedding for SD2.x with 1024-wide vectors; this model's text encoder takes 768-wide ones"
    )
    # A lone weight of the wrong width is not offered as an embedding.
    lone = detect(write_shapes_only(tmp_path / "lone.safetensors", {"scale_factor": (77,)}, "F32"))
    assert lone.kind == "unknown"
