"""Single-file image encoders (ComfyUI's clip_vision files) and ``.pth`` adapters (A1111's names),
each read by an independent reader first, then by IPA Studio, with the same generation as diffusers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from transformers import CLIPVisionModelWithProjection

from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import ModelFileError
from ipa_studio.core.models.detect import detect
from ipa_studio.core.models.library import ModelLibrary
from ipa_studio.core.models.loader import load_image_encoder
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.request import GenerationRequest, ModelSpec, Reference
from tests.fixtures.real_layouts import clip_vision_file_state
from tests.fixtures.reference import diffusers_pipeline

CPU = torch.device("cpu")
COMFY_NAME = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


def _generate(base: Path, adapter: Path, encoder: Path) -> torch.Tensor:
    request = GenerationRequest(
        models=ModelSpec(base, adapter, encoder),
        references=(Reference(make_reference_image(8, (64, 64))),),
        prompt="",
        scale=1.0,
        steps=2,
        seed=4,
        width=64,
        height=64,
        scheduler="ddim",
    )
    return Engine("cpu", torch.float32).generate(request).latents


def _diffusers_latents(pipe) -> torch.Tensor:
    pipe.set_ip_adapter_scale(1.0)
    with torch.no_grad():
        return pipe(
            prompt="",
            ip_adapter_image=make_reference_image(8, (64, 64)),
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(4),
            output_type="latent",
        ).images


@pytest.mark.parametrize("position_ids, dtype", [(True, torch.float32), (False, torch.float16)])
def test_comfyui_clip_vision_file_reads_like_transformers_and_generates_the_same(
    position_ids: bool,
    dtype: torch.dtype,
    tmp_path: Path,
    tiny_sd15: Path,
    tiny_image_encoder: Path,
    tiny_adapters: dict,
    tiny_as_bundled: Path,
) -> None:
    path = tmp_path / "clip_vision" / COMFY_NAME
    path.parent.mkdir()
    save_file(clip_vision_file_state(tiny_image_encoder, position_ids=position_ids, dtype=dtype), path)

    # Independent reader: the file is h94's models/image_encoder/model.safetensors under another
    # name, so transformers reads it from a folder with the encoder's config beside it.
    folder = tmp_path / "as-h94-folder"
    folder.mkdir()
    shutil.copy(tiny_as_bundled / "image_encoder" / "vit_h_14_config.json", folder / "config.json")
    shutil.copy(path, folder / "model.safetensors")
    theirs = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=torch.float32)

    found = detect(path)
    assert (found.kind, found.usable, found.reason) == ("image_encoder", True, None), found.reason
    assert found.details["hidden_size"] == theirs.config.hidden_size
    lib = ModelLibrary(tmp_path / "library")
    entry = lib.add(path, hash_files=False)
    assert (entry.kind, entry.usable) == ("image_encoder", True)
    adapter = tiny_adapters[("plus", "safetensors")]
    assert lib.image_encoder_for(adapter).path == path.resolve()  # the adapter finds it

    ours, processor = load_image_encoder(path, CPU, torch.float32)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert processor.crop_size["height"] == theirs.config.image_size

    pipe = diffusers_pipeline(StableDiffusionPipeline, tiny_sd15, folder, adapter)
    expected = _diffusers_latents(pipe)
    got = _generate(tiny_sd15, adapter, path)
    assert (got - expected).abs().max().item() <= 1e-4


def test_full_size_comfyui_clip_vision_header_is_a_usable_vit_h(tmp_path: Path) -> None:
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig

    from ipa_studio.core.models.convert import vision_config
    from tests.fixtures.checkpoints import write_shapes_only

    with init_empty_weights():
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_config()))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # ComfyUI tells ViT-H by its depth (layer 30 exists, 47 does not): comfy/clip_vision.py.
    assert "vision_model.encoder.layers.30.layer_norm1.weight" in shapes
    assert "vision_model.encoder.layers.47.layer_norm1.weight" not in shapes
    found = detect(write_shapes_only(tmp_path / COMFY_NAME, shapes))
    assert (found.kind, found.usable, found.architecture) == (
        "image_encoder",
        True,
        "CLIP ViT-H/14 image encoder",
    )
    assert (found.details["hidden_size"], found.details["projection_dim"]) == (1280, 1024)

    truncated = {k: v for k, v in shapes.items() if ".layers.31." not in k}
    damaged = detect(write_shapes_only(tmp_path / "cut.safetensors", truncated))
    assert not damaged.usable and "lacks 16 of the encoder's" in damaged.reason
    bigg = dict(shapes, **{"vision_model.embeddings.patch_embedding.weight": (1664, 3, 14, 14)})
    other = detect(write_shapes_only(tmp_path / "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors", bigg))
    assert not other.usable and "ViT-bigG/14" in other.reason


def test_open_clip_layout_image_encoder_is_named_not_called_unknown(tmp_path: Path) -> None:
    from tests.fixtures.checkpoints import write_shapes_only

    # open_clip's own names (what comfy/clip_vision.py convert_to_transformers maps).
    shapes = {
        "visual.conv1.weight": (1280, 3, 14, 14),
        "visual.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280),
        "visual.proj": (1280, 1024),
    }
    found = detect(write_shapes_only(tmp_path / "open_clip_pytorch_model.safetensors", shapes))
    assert (found.kind, found.usable) == ("image_encoder", False)
    assert "open_clip's layout" in found.reason


def test_damaged_encoder_file_is_refused_before_loading(
    tmp_path: Path, tiny_image_encoder: Path, tiny_as_bundled
):
    state = clip_vision_file_state(tiny_image_encoder)
    state.pop("visual_projection.weight")
    path = tmp_path / COMFY_NAME
    save_file(state, path)
    assert not detect(path).usable
    with pytest.raises(ModelFileError, match="cannot be used as the image encoder: .*visual_projection"):
        load_image_encoder(path, CPU, torch.float32)


def test_pth_adapter_reads_like_diffusers(
    tmp_path: Path, tiny_sd15: Path, tiny_image_encoder: Path, tiny_adapters: dict
) -> None:
    # A1111's sd-webui-controlnet lists IP-Adapters as .pth: the official .bin pickle, renamed.
    path = tmp_path / "ip-adapter_sd15.pth"
    shutil.copy(tiny_adapters[("global", "bin")], path)
    pipe = diffusers_pipeline(StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, path)  # reads .pth
    found = detect(path)
    assert (found.kind, found.usable, found.format) == ("adapter", True, "pickle")
    entry = ModelLibrary(tmp_path / "library").add(path, hash_files=False)
    assert (entry.kind, entry.usable) == ("adapter", True)
    assert (
        _generate(tiny_sd15, path, tiny_image_encoder) - _diffusers_latents(pipe)
    ).abs().max().item() <= 1e-4
