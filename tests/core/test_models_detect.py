"""Detection before loading: what a file is, from key names and shapes, and why it cannot be used."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ipa_studio.core.errors import ModelFileError
from ipa_studio.core.models.convert import export_single_file
from ipa_studio.core.models.detect import detect, read_safetensors_header
from tests.fixtures.checkpoints import (
    adapter_shapes,
    sd2_shapes,
    sd15_shapes,
    sdxl_shapes,
    write_shapes_only,
)
from tests.fixtures.malicious import write_malicious_pickle


@pytest.fixture(scope="module")
def sd15_keys() -> dict[str, tuple[int, ...]]:
    return sd15_shapes()


def test_sd15_key_set_is_the_published_one(sd15_keys: dict[str, tuple[int, ...]]) -> None:
    # The SD1.5 checkpoints on the hub hold 686 UNet and 248 VAE tensors; if our layout conversion
    # disagreed, detection would be tested against made-up names.
    assert sum(k.startswith("model.diffusion_model.") for k in sd15_keys) == 686
    assert sum(k.startswith("first_stage_model.") for k in sd15_keys) == 248
    assert sd15_keys["model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"] == (
        320,
        768,
    )
    assert sd15_keys["first_stage_model.decoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


@pytest.mark.parametrize(
    "case, kind, arch, usable, reason",
    [
        ("sd15", "base", "SD1.x", True, None),
        ("sd15-inpaint", "base", "SD1.x inpainting", True, None),
        ("sd2", "base", "SD2.x", False, "SD2.x checkpoint: IPA Studio runs SD1.5 models"),
        ("sdxl", "base", "SDXL", False, "SDXL checkpoint: IPA Studio runs SD1.5 models"),
        ("sdxl-inpaint", "base", "SDXL inpainting", False, "SDXL checkpoint"),
        ("unet-only", "base", "SD1.x", False, "no VAE and no text encoder"),
    ],
)
def test_base_checkpoints(
    tmp_path: Path,
    sd15_keys: dict[str, tuple[int, ...]],
    case: str,
    kind: str,
    arch: str,
    usable: bool,
    reason: str | None,
) -> None:
    shapes = {
        "sd15": lambda: sd15_keys,
        "sd15-inpaint": lambda: sd15_shapes(in_channels=9),
        "sd2": sd2_shapes,
        "sdxl": sdxl_shapes,
        "sdxl-inpaint": lambda: sdxl_shapes(in_channels=9),
        "unet-only": lambda: {k: v for k, v in sd15_keys.items() if k.startswith("model.")},
    }[case]()
    found = detect(write_shapes_only(tmp_path / f"{case}.safetensors", shapes))
    assert (found.kind, found.architecture, found.usable) == (kind, arch, usable)
    if reason is None:
        assert found.reason is None
    else:
        assert reason in found.reason
    assert found.format == "safetensors"
    assert found.details["in_channels"] == (9 if "inpaint" in case else 4)


@pytest.mark.parametrize(
    "variant, kwargs, arch, tokens, encoder, usable",
    [
        ("global", {}, "IP-Adapter for SD1.5", 4, "ViT-H/14", True),
        ("plus", {}, "IP-Adapter plus for SD1.5", 16, "ViT-H/14", True),
        ("full", {}, "IP-Adapter full-face for SD1.5", 257, "ViT-H/14", True),
        # ip-adapter_sd15_vit-G: an SD1.5 adapter that reads ViT-bigG/14 embeddings (1280 wide).
        ("global", {"embed": 1280}, "IP-Adapter for SD1.5", 4, "ViT-bigG/14", True),
        ("global", {"cross": 2048, "embed": 1280}, "IP-Adapter for SDXL", 4, "ViT-bigG/14", False),
    ],
)
def test_adapters(
    tmp_path: Path, variant: str, kwargs: dict, arch: str, tokens: int, encoder: str, usable: bool
) -> None:
    found = detect(write_shapes_only(tmp_path / "adapter.safetensors", adapter_shapes(variant, **kwargs)))
    assert found.kind == "adapter" and found.architecture == arch and found.usable is usable
    assert found.details["num_tokens"] == tokens
    assert found.details["encoder"] == encoder
    assert found.details["variant"] == variant
    if not usable:
        assert found.reason == "an IP-Adapter for SDXL: IPA Studio runs SD1.5 models"


def test_faceid_adapter_is_named(tmp_path: Path) -> None:
    found = detect(write_shapes_only(tmp_path / "faceid.safetensors", adapter_shapes("global", faceid=True)))
    assert found.kind == "adapter" and not found.usable
    assert "FaceID" in found.reason


def test_tiny_adapters_and_folders(
    tiny_adapters: dict[tuple[str, str], Path],
    tiny_sd15: Path,
    tiny_sd15_inpaint: Path,
    tiny_image_encoder: Path,
) -> None:
    for (variant, fmt), path in tiny_adapters.items():
        found = detect(path)
        assert found.kind == "adapter" and found.details["variant"] == variant, path
        assert found.format == ("safetensors" if fmt == "safetensors" else "pickle")
        assert found.details["encoder_width"] == (24 if variant == "global" else 32)
    base = detect(tiny_sd15)
    assert (base.kind, base.format, base.usable) == ("base", "diffusers folder", True)
    assert detect(tiny_sd15_inpaint).details["in_channels"] == 9
    enc = detect(tiny_image_encoder)
    assert (enc.kind, enc.details["hidden_size"], enc.details["projection_dim"]) == ("image_encoder", 32, 24)


def test_tiny_single_file_is_sd1_shaped_but_not_standard(tmp_path: Path, tiny_sd15: Path) -> None:
    found = detect(export_single_file(tiny_sd15, tmp_path / "tiny.safetensors"))
    assert found.kind == "base" and found.architecture == "SD1.x-shaped (32-wide text)"
    assert not found.usable and "not SD1.5's 768" in found.reason


def test_sdxl_diffusers_folder(tmp_path: Path) -> None:
    folder = tmp_path / "sdxl"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text('{"cross_attention_dim": 2048, "in_channels": 4}')
    (folder / "model_index.json").write_text("{}")
    found = detect(folder)
    assert found.architecture == "SDXL" and found.reason == "SDXL model: IPA Studio runs SD1.5 models"


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("page.safetensors", b"<!DOCTYPE html><html><body>Sign in</body></html>", "web page"),
        (
            "lfs.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n",
            "git-lfs",
        ),
        ("empty.ckpt", b"", "empty"),
        ("notes.safetensors", b"\x05\x00\x00\x00\x00\x00\x00\x00{}", "not a valid .safetensors"),
        ("model.onnx", b"\x08\x07\x12\x04onnx", "unknown file type"),
    ],
)
def test_non_model_files_are_named(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    found = detect(path)
    assert found.kind == "invalid" and not found.usable
    assert reason in found.reason


def test_truncated_safetensors_is_reported_as_truncated(tmp_path: Path, tiny_adapters: dict) -> None:
    data = tiny_adapters[("plus", "safetensors")].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) * 2 // 3])
    found = detect(path)
    assert found.kind == "invalid" and found.reason.startswith("'cut.safetensors' is truncated")
    with pytest.raises(ModelFileError, match="truncated"):
        read_safetensors_header(path)


def test_weights_of_something_else_are_not_a_diffusion_model(tmp_path: Path) -> None:
    path = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, path)
    found = detect(path)
    assert found.kind == "unknown" and found.reason.startswith("not a diffusion model")
    assert "conv1.weight" in found.reason and "none of its 2 weights belong" in found.reason
    single = tmp_path / "bias.safetensors"
    save_file({"conv1.weight": torch.zeros(8, 3, 7, 7)}, single)
    assert "its only weight does not belong" in detect(single).reason


@pytest.mark.parametrize(
    "keys, kind",
    [
        # Half a LoRA layer (no up weight): a damaged LoRA, named as one.
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 320)}, "lora"),
        (
            {
                "encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3),
                "decoder.conv_in.weight": (512, 4, 3, 3),
            },
            "vae",
        ),
        ({"emb_params": (4, 1024)}, "embedding"),  # an SD2 embedding
        ({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)}, "controlnet"),
    ],
)
def test_other_model_kinds_are_listed_with_a_reason(tmp_path: Path, keys: dict, kind: str) -> None:
    found = detect(write_shapes_only(tmp_path / "x.safetensors", keys))
    assert found.kind == kind and not found.usable and found.reason


def test_malicious_pickle_is_invalid_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_malicious_pickle(tmp_path / "evil.ckpt", marker)
    found = detect(path)
    assert found.kind == "invalid" and "unsafe" in found.reason
    assert not marker.exists()


def test_detection_reads_only_the_header(tmp_path: Path, sd15_keys: dict) -> None:
    # A 2 GB (sparse) checkpoint is classified in a blink: if detection read the tensors, it would
    # have to page in gigabytes of zeros.
    import time

    path = write_shapes_only(tmp_path / "big.safetensors", sd15_keys)
    assert path.stat().st_size > 2e9
    started = time.perf_counter()
    assert detect(path).usable
    assert time.perf_counter() - started < 1.0
