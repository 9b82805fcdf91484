"""``detect_controlnet``: what a ControlNet file or folder is, from configs and weight headers only.

Real ControlNets are 1.45 GB; the detector reads only names and shapes, so the files here hold just the
tensors it looks at, with their real SD1.5 / SD2.1 / SDXL shapes, in the real key layouts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ipa_studio.core.errors import ModelFileError
from ipa_studio.core.models.tiny import CROSS_DIM, build_controlnet_folder
from ipa_studio.core.preprocess import detect_controlnet, kind_from_name
from tests.fixtures.checkpoints import controlnet_shapes, write_shapes_only, write_shapes_only_pickle
from tests.fixtures.malicious import write_malicious_pickle


def _tensors(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(shape, dtype=torch.float16) for k, shape in shapes.items()}


def ldm_controlnet(cross: int = 768, prefix: str = "", cond: int = 3) -> dict[str, tuple[int, ...]]:
    """The keys the detector reads, as in lllyasviel's ``control_v11p_sd15_*.pth`` files."""
    return {
        f"{prefix}time_embed.0.weight": (1280, 320),
        f"{prefix}input_blocks.0.0.weight": (320, 4, 3, 3),
        f"{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, cross),
        f"{prefix}input_hint_block.0.weight": (16, cond, 3, 3),
        f"{prefix}zero_convs.0.0.weight": (320, 320, 1, 1),
        f"{prefix}middle_block_out.0.weight": (1280, 1280, 1, 1),
    }


def diffusers_controlnet(cross: int = 768, sdxl: bool = False) -> dict[str, tuple[int, ...]]:
    block = "down_blocks.1" if sdxl else "down_blocks.0"
    width = 640 if sdxl else 320
    shapes = {
        "conv_in.weight": (320, 4, 3, 3),
        "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
        f"{block}.attentions.0.transformer_blocks.0.attn2.to_k.weight": (width, cross),
        "controlnet_down_blocks.0.weight": (320, 320, 1, 1),
    }
    if sdxl:
        shapes["add_embedding.linear_1.weight"] = (1280, 2816)
    return shapes


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(shapes), str(path))
    return path


def write_diffusers_folder(folder: Path, *, cross: int = 768, **config: object) -> Path:
    folder.mkdir(parents=True)
    cfg = {"_class_name": "ControlNetModel", "cross_attention_dim": cross, "in_channels": 4, **config}
    (folder / "config.json").write_text(json.dumps(cfg))
    write_safetensors(folder / "diffusion_pytorch_model.safetensors", diffusers_controlnet(cross))
    return folder


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("control_v11p_sd15_openpose", "openpose"),
        ("control_v11f1p_sd15_depth", "depth"),
        ("sd-controlnet-openpose", "openpose"),
        ("control_sd15_depth.pth", "depth"),
        ("controlnet-zoe-depth-sd15", "depth"),
        ("dw-pose-sd15", "openpose"),
        ("control_v11p_sd15_canny", "unknown"),
        ("compose-net", "unknown"),  # "pose" inside a word is no pose
    ],
)
def test_kind_from_name(name: str, kind: str) -> None:
    assert kind_from_name(name) == kind


def test_sd15_diffusers_folder_is_usable_and_named_kind(tmp_path: Path) -> None:
    info = detect_controlnet(write_diffusers_folder(tmp_path / "control_v11p_sd15_openpose"))
    assert (info.kind, info.base, info.usable, info.reason) == ("openpose", "SD1.x", True, "")
    assert (info.format, info.cross_attention_dim, info.conditioning_channels) == ("diffusers", 768, 3)


def test_folder_kind_falls_back_to_name_or_path_in_config(tmp_path: Path) -> None:
    folder = write_diffusers_folder(
        tmp_path / "my-controlnet", _name_or_path="/home/someone/control_v11f1p_sd15_depth"
    )
    assert detect_controlnet(folder).kind == "depth"


def test_tiny_fixture_controlnet_fits_the_tiny_base(tmp_path: Path, tiny_sd15: Path) -> None:
    # The real model files the engine runs in the tests: a tiny SD1.5-shaped base (cross dim 32).
    folder = build_controlnet_folder(tmp_path / "control_v11p_sd15_openpose", tiny_sd15)
    fits = detect_controlnet(folder, base_cross_attention_dim=CROSS_DIM)
    assert (fits.kind, fits.usable, fits.cross_attention_dim) == ("openpose", True, CROSS_DIM)
    refused = detect_controlnet(folder)  # against a real SD1.5 base
    assert not refused.usable
    assert "32-wide" in refused.reason and "SD1.x" in refused.reason


@pytest.mark.parametrize("prefix", ["", "control_model."])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_original_layout_single_file(tmp_path: Path, prefix: str, suffix: str) -> None:
    # Full-size key sets in lllyasviel's layout: usable means the loader finds every weight.
    path = tmp_path / f"control_v11f1p_sd15_depth{suffix}"
    if suffix == ".safetensors":
        write_shapes_only(path, controlnet_shapes(prefix=prefix))
    else:
        write_shapes_only_pickle(path, controlnet_shapes(prefix=prefix))
    info = detect_controlnet(path)
    assert (info.kind, info.base, info.usable, info.format) == ("depth", "SD1.x", True, "single-file")
    # For a loader that reads folders only, the same file is explained with what to get instead.
    folders_only = detect_controlnet(path, single_file_loadable=False)
    assert (folders_only.kind, folders_only.base, folders_only.usable) == ("depth", "SD1.x", False)
    assert "diffusers folders" in folders_only.reason


def test_single_file_missing_weights_is_not_usable(tmp_path: Path) -> None:
    # Only the keys that tell what it is: recognised, but the loader could not build it from this.
    info = detect_controlnet(
        write_safetensors(tmp_path / "control_v11p_sd15_openpose.safetensors", ldm_controlnet())
    )
    assert (info.kind, info.base, info.usable) == ("openpose", "SD1.x", False)
    assert "ControlNet lacks" in info.reason


def test_lightning_style_state_dict_wrapper(tmp_path: Path) -> None:
    path = write_shapes_only_pickle(tmp_path / "control_sd15_openpose.ckpt", controlnet_shapes(), wrap=True)
    assert detect_controlnet(path).usable


@pytest.mark.parametrize(
    ("shapes", "base", "words"),
    [
        (ldm_controlnet(cross=1024), "SD2.x", "SD2.x"),
        (diffusers_controlnet(cross=2048, sdxl=True), "SDXL", "SDXL"),
        (diffusers_controlnet(cross=1024), "SD2.x", "SD2.x"),
    ],
)
def test_other_base_families_are_named_and_refused(tmp_path: Path, shapes, base: str, words: str) -> None:
    info = detect_controlnet(write_safetensors(tmp_path / "controlnet-depth.safetensors", shapes))
    assert (info.base, info.usable, info.kind) == (base, False, "depth")
    assert words in info.reason and "SD1.x" in info.reason


def test_sdxl_diffusers_folder_is_refused(tmp_path: Path) -> None:
    folder = write_diffusers_folder(tmp_path / "controlnet-openpose-sdxl", cross=2048)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "addition_embed_type": "text_time"}))
    info = detect_controlnet(folder)
    assert (info.base, info.usable) == ("SDXL", False)


def test_four_channel_control_images_are_refused(tmp_path: Path) -> None:
    info = detect_controlnet(write_safetensors(tmp_path / "odd.safetensors", ldm_controlnet(cond=4)))
    assert not info.usable and "4-channel control images" in info.reason


@pytest.mark.parametrize(
    ("shapes", "words"),
    [
        ({"image_proj.proj.weight": (3072, 1024), "ip_adapter.1.to_k_ip.weight": (320, 768)}, "IP-Adapter"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3)}, "Stable Diffusion model"),
        ({"lora_controlnet": (1,), "input_blocks.0.0.weight": (320, 4, 3, 3)}, "Control-LoRA"),
        ({"adapter.body.0.resnets.0.block1.weight": (320, 320, 3, 3)}, "T2I-Adapter"),
        ({"lora_unet_down_blocks_0.alpha": (1,)}, "LoRA"),
        ({"something.else": (3,)}, "not a ControlNet"),
    ],
)
def test_other_model_files_are_named(tmp_path: Path, shapes, words: str) -> None:
    info = detect_controlnet(write_safetensors(tmp_path / "control_openpose.safetensors", shapes))
    assert not info.usable and words in info.reason


def test_damaged_files_are_reported_without_raising(tmp_path: Path) -> None:
    good = write_safetensors(tmp_path / "good.safetensors", ldm_controlnet())
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    pointer = tmp_path / "pointer.safetensors"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1445157120\n")
    page = tmp_path / "page.pth"
    page.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    half_zip = tmp_path / "half.pth"
    torch.save(_tensors(ldm_controlnet()), half_zip)
    half_zip.write_bytes(half_zip.read_bytes()[:4000])
    expected = {truncated: "truncated", pointer: "git-lfs", page: "web page", half_zip: "truncated"}
    for path, words in expected.items():
        info = detect_controlnet(path)
        assert not info.usable and words in info.reason, (path.name, info.reason)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    info = detect_controlnet(write_malicious_pickle(tmp_path / "control_v11p_sd15_openpose.bin", marker))
    assert not info.usable and "unsafe" in info.reason
    assert not marker.exists()


def test_folder_problems(tmp_path: Path) -> None:
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    no_weights = write_diffusers_folder(tmp_path / "no_weights")
    shutil.move(
        no_weights / "diffusion_pytorch_model.safetensors",
        no_weights / "diffusion_pytorch_model.onnx",
    )
    t2i = write_diffusers_folder(tmp_path / "t2i")
    (t2i / "config.json").write_text(json.dumps({"_class_name": "T2IAdapter"}))
    mixed = write_diffusers_folder(tmp_path / "mixed", cross=1024)
    write_safetensors(mixed / "diffusion_pytorch_model.safetensors", diffusers_controlnet(768))
    expected = {
        no_config: "config.json is missing",
        no_weights: "found only diffusion_pytorch_model.onnx",
        t2i: "T2IAdapter, not a ControlNet",
        mixed: "mixes two models",
    }
    for folder, words in expected.items():
        info = detect_controlnet(folder)
        assert not info.usable and words in info.reason, (folder.name, info.reason)


def test_folder_with_only_fp16_variant_weights_is_usable(tmp_path: Path) -> None:
    # Most hub repos: diffusers loads them with variant="fp16", and so does the engine.
    folder = write_diffusers_folder(tmp_path / "control_v11p_sd15_openpose")
    shutil.move(
        folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.fp16.safetensors"
    )
    assert detect_controlnet(folder).usable


def test_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        detect_controlnet(tmp_path / "nowhere")
