"""Single-file ControlNets as A1111 / ComfyUI users have them, held against diffusers first.

Layouts (key names from ``tests/fixtures/real_layouts.controlnet_original_state``; evidence there):

* ControlNet-v1-1 ``control_v11p_sd15_openpose.pth``: ``control_model.*``, a plain torch pickle;
* ComfyUI's fp16 copies (``comfyanonymous/ControlNet-v1-1_fp16_safetensors``): the same names
  without the prefix, fp16 ``.safetensors``;
* a diffusers-layout single file (``diffusion_pytorch_model.safetensors`` saved under a model name);
* ControlNet 1.0 ``control_sd15_openpose.pth``: a whole SD1.5 checkpoint plus ``control_model.*`` —
  a ControlNet, never a base model.

The independent reader is diffusers' ``ControlNetModel.from_single_file`` with the ControlNet's config,
offline; ComfyUI's ``comfy/controlnet.py`` ``load_controlnet_state_dict`` recognises the same three key
layouts (``control_model.zero_convs.0.0.weight``, ``zero_convs.0.0.weight``,
``controlnet_cond_embedding.conv_in.weight``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from safetensors.torch import load_file, save_file

from ipa_studio.core.engine import Engine
from ipa_studio.core.models.detect import detect
from ipa_studio.core.models.library import ModelLibrary
from ipa_studio.core.models.loader import load_controlnet
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.request import ControlSpec, GenerationRequest, ModelSpec, Reference
from tests.fixtures.real_layouts import controlnet_original_state, folder_state, sd15_original_state
from tests.fixtures.reference import diffusers_pipeline

CPU = torch.device("cpu")
CASES = {
    # name: (file name, layout in details, dtype)
    "v1-1-pth": ("control_v11p_sd15_openpose.pth", "original (control_model.)", torch.float32),
    "comfy-fp16-safetensors": (
        "control_v11p_sd15_openpose_fp16.safetensors",
        "original (bare)",
        torch.float16,
    ),
    "diffusers-single-file": ("controlnet-openpose-sd15.safetensors", "diffusers", torch.float32),
    "controlnet-1.0-full": (
        "control_sd15_openpose.pth",
        "ControlNet 1.0 (with its SD1.5 base)",
        torch.float32,
    ),
}


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, tiny_controlnet: Path, tiny_sd15: Path
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("real-controlnets")
    weights = load_file(tiny_controlnet / "diffusion_pytorch_model.safetensors")
    out = {}
    for case, (name, _, dtype) in CASES.items():
        path = folder / name
        if case == "v1-1-pth":
            torch.save(controlnet_original_state(weights), path)
        elif case == "comfy-fp16-safetensors":
            save_file(
                {k: v.to(dtype) for k, v in controlnet_original_state(weights, prefix="").items()}, path
            )
        elif case == "diffusers-single-file":
            save_file(weights, path)
        else:
            unet, vae, text = folder_state(tiny_sd15)
            torch.save({**sd15_original_state(unet, vae, text), **controlnet_original_state(weights)}, path)
        out[case] = path
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_single_file_controlnet_reads_like_diffusers_and_controls_the_same(
    case: str,
    files: dict[str, Path],
    tiny_controlnet: Path,
    tiny_sd15: Path,
    tiny_image_encoder: Path,
    tiny_adapters: dict,
    tiny_as_bundled: Path,
    tmp_path: Path,
) -> None:
    path = files[case]
    _, layout, dtype = CASES[case]
    # 1. diffusers reads it, offline, to the weights it was made from.
    theirs = ControlNetModel.from_single_file(str(path), config=str(tiny_controlnet), local_files_only=True)
    source = ControlNetModel.from_pretrained(tiny_controlnet).state_dict()
    assert theirs.state_dict().keys() == source.keys()
    assert all(torch.equal(v.float(), source[k].to(dtype).float()) for k, v in theirs.state_dict().items())

    # 2. Detection and the library: a usable ControlNet (never a base model), with its layout.
    found = detect(path)
    assert (found.kind, found.usable, found.reason) == ("controlnet", True, None), found.reason
    assert (found.details["layout"], found.details["map_kind"]) == (layout, "openpose")
    lib = ModelLibrary(tmp_path / "library")
    entry = lib.add(path, hash_files=False)
    assert (entry.kind, entry.usable) == ("controlnet", True)
    assert lib.entries("base") == []

    # 3. The loader builds diffusers' tensors.
    ours = load_controlnet(path, CPU, torch.float32)
    mine = ours.state_dict()
    assert mine.keys() == source.keys()
    assert all(torch.equal(mine[k], v.float()) for k, v in theirs.state_dict().items())

    # 4. The same 2-step ControlNet generation as diffusers with its own reading of the file.
    adapter = tiny_adapters[("global", "safetensors")]
    pipe = diffusers_pipeline(
        StableDiffusionControlNetPipeline, tiny_sd15, tiny_image_encoder, adapter, controlnet=theirs.float()
    )
    control, ref = make_reference_image(14, (64, 64)), make_reference_image(3, (64, 64))
    pipe.set_ip_adapter_scale(0.5)
    with torch.no_grad():
        expected = pipe(
            prompt="a dancer",
            image=control,
            controlnet_conditioning_scale=0.8,
            ip_adapter_image=ref,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(2),
            output_type="latent",
        ).images
    request = GenerationRequest(
        models=ModelSpec(tiny_sd15, adapter, tiny_image_encoder),
        references=(Reference(ref),),
        prompt="a dancer",
        scale=0.5,
        steps=2,
        seed=2,
        width=64,
        height=64,
        scheduler="ddim",
        controls=(ControlSpec(control, path, 0.8),),
    )
    got = Engine("cpu", torch.float32).generate(request).latents
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, f"max |Δlatent| = {diff:.2e}"


def test_full_size_controlnet_files_are_usable_at_real_widths(tmp_path: Path) -> None:
    # Header-only stubs with SD1.5 ControlNet shapes (bundled config): every layout is usable, and a
    # ControlNet 1.0 file is a ControlNet even though it holds a whole SD1.5 checkpoint.
    from tests.fixtures.checkpoints import (
        controlnet_shapes,
        sd15_shapes,
        write_shapes_only,
        write_shapes_only_pickle,
    )

    stubs = {
        "control_v11p_sd15_openpose.pth": write_shapes_only_pickle(
            tmp_path / "control_v11p_sd15_openpose.pth", controlnet_shapes()
        ),
        "control_v11f1p_sd15_depth_fp16.safetensors": write_shapes_only(
            tmp_path / "control_v11f1p_sd15_depth_fp16.safetensors", controlnet_shapes(prefix="")
        ),
        "control_sd15_openpose.safetensors": write_shapes_only(
            tmp_path / "control_sd15_openpose.safetensors", {**sd15_shapes(), **controlnet_shapes()}
        ),
    }
    for name, path in stubs.items():
        found = detect(path)
        assert (found.kind, found.usable, found.details["cross_attention_dim"]) == (
            "controlnet",
            True,
            768,
        ), name
    sdxl_like = write_shapes_only(
        tmp_path / "control_sdxl.safetensors", controlnet_shapes(prefix="", cross=2048)
    )
    refused = detect(sdxl_like)
    assert refused.kind == "controlnet" and not refused.usable


def test_damaged_single_file_controlnet_is_refused_before_loading(
    files: dict[str, Path], tmp_path: Path, tiny_as_bundled: Path
) -> None:
    from ipa_studio.core.errors import ModelFileError

    # Every ControlNet layer but the last zero conv: recognised, named as damaged, never loaded.
    state = torch.load(files["v1-1-pth"], weights_only=True)
    last = max(int(k.split(".")[2]) for k in state if k.startswith("control_model.zero_convs."))
    path = tmp_path / "control_v11p_sd15_openpose.pth"
    torch.save(
        {k: v for k, v in state.items() if not k.startswith(f"control_model.zero_convs.{last}.")}, path
    )
    found = detect(path)
    assert found.kind == "controlnet" and not found.usable
    assert "ControlNet lacks 2 of its" in found.reason
    with pytest.raises(ModelFileError, match="cannot be used as a ControlNet"):
        load_controlnet(path, CPU, torch.float32)


def test_fp16_variant_folders_load_like_diffusers(
    tmp_path: Path, tiny_controlnet: Path, tiny_image_encoder: Path, tiny_as_bundled: Path
) -> None:
    # Hub repos often hold only diffusion_pytorch_model.fp16.safetensors / model.fp16.safetensors.
    import shutil

    from transformers import CLIPVisionModelWithProjection

    from ipa_studio.core.models.loader import load_image_encoder

    folders = {}
    for name, source, weights in (
        ("controlnet", tiny_controlnet, "diffusion_pytorch_model"),
        ("image_encoder", tiny_image_encoder, "model"),
    ):
        folder = shutil.copytree(source, tmp_path / name)
        state = load_file(folder / f"{weights}.safetensors")
        save_file({k: v.half() for k, v in state.items()}, folder / f"{weights}.fp16.safetensors")
        (folder / f"{weights}.safetensors").unlink()
        folders[name] = folder
    theirs = ControlNetModel.from_pretrained(folders["controlnet"], variant="fp16", torch_dtype=torch.float32)
    ours = load_controlnet(folders["controlnet"], CPU, torch.float32)
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    enc_theirs = CLIPVisionModelWithProjection.from_pretrained(
        folders["image_encoder"], variant="fp16", dtype=torch.float32
    )
    enc_ours, _ = load_image_encoder(folders["image_encoder"], CPU, torch.float32)
    assert all(torch.equal(v, enc_theirs.state_dict()[k]) for k, v in enc_ours.state_dict().items())
    found = detect(folders["controlnet"])
    assert found.usable, found.reason
    assert detect(folders["image_encoder"]).usable
