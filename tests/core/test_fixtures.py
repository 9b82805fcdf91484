"""The tiny model fixtures are what every other test stands on: check they are real and not degenerate.

"Real" = diffusers / transformers load them through their ordinary entry points (the same ones that load
the full-size downloads); "not degenerate" = outputs are finite, vary, and depend on each input.
"""

from __future__ import annotations

import filecmp
import json
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipa_studio.core.models.tiny import (
    attn2_layers,
    build_image_encoder_folder,
    make_mask,
    make_reference_image,
    write_ip_adapter,
)
from ipa_studio.core.models.tokenizer import TOKENIZER_FILES, write_clip_tokenizer_files
from tests.fixtures.malicious import write_legacy_malicious_pickle, write_malicious_pickle

SENTENCES = [
    "a photo of a cat",
    "A Portrait of an OLD man, oil painting; 4k!!",
    "don't stop, it's 2024 — they'll see",
    "héllo wörld café, 東京 at night",
    "",
]
BUNDLED_TOKENIZER = Path(__file__).resolve().parents[2] / "ipa_studio" / "resources" / "tokenizer"


def _generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(0)


def _sd_pipeline(folder: Path, **components):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False, **components
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _relative_change(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).abs().mean() / a.abs().mean())


# --- tokenizer --------------------------------------------------------------------------------------


def test_tokenizer_matches_open_clip(tmp_path: Path) -> None:
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_clip_tokenizer_files(tmp_path / "tokenizer"))
    reference = SimpleTokenizer()

    assert len(tokenizer) == 49408
    assert tokenizer.bos_token_id == 49406 and tokenizer.eos_token_id == 49407
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 49407
    assert tokenizer.model_max_length == 77
    assert (tmp_path / "tokenizer" / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    for text in SENTENCES:
        expected = [reference.sot_token_id, *reference.encode(text), reference.eot_token_id]
        assert tokenizer(text).input_ids == expected, text
    # Well-known ids of the OpenAI vocabulary, independent of open_clip.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Padding as the SD pipelines use it: pad to 77 with <|endoftext|>.
    padded = tokenizer("a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[:4] == [49406, 320, 2368, 49407] and set(padded[4:]) == {49407}


def test_bundled_tokenizer_resource_is_up_to_date(tmp_path: Path) -> None:
    fresh = write_clip_tokenizer_files(tmp_path / "tokenizer")
    for name in TOKENIZER_FILES:
        assert filecmp.cmp(fresh / name, BUNDLED_TOKENIZER / name, shallow=False), name


# --- SD1.5 folders -----------------------------------------------------------------------------------


def test_sd15_folder_layout(tiny_sd15: Path) -> None:
    index = json.loads((tiny_sd15 / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    for sub, weights in [
        ("unet", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
        ("text_encoder", "model.safetensors"),
    ]:
        assert (tiny_sd15 / sub / "config.json").is_file() and (tiny_sd15 / sub / weights).is_file()
    assert (tiny_sd15 / "scheduler" / "scheduler_config.json").is_file()
    assert all((tiny_sd15 / "tokenizer" / name).is_file() for name in TOKENIZER_FILES)
    # 16 cross-attention layers at the odd processor indices, like SD1.5.
    layers = attn2_layers(tiny_sd15)
    assert [index for index, _ in layers] == list(range(1, 32, 2))
    # attn_processors order is down, up, then mid (index 31), as in the official checkpoints.
    assert [width for _, width in layers] == [32] * 4 + [64] * 5 + [32] * 6 + [64]


def test_sd15_pipeline_generates_non_degenerate_images(tiny_sd15: Path) -> None:
    from diffusers import PNDMScheduler

    pipe = _sd_pipeline(tiny_sd15)
    assert isinstance(pipe.scheduler, PNDMScheduler)
    assert pipe.unet.config.in_channels == 4 and pipe.vae_scale_factor == 8

    kwargs = dict(num_inference_steps=2, height=64, width=64, generator=_generator())
    image = pipe("a photo of a cat", output_type="np", **kwargs).images
    assert image.shape == (1, 64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0.02

    # The prompt must matter (cross-attention works) and so must the seed.
    cat = pipe("a photo of a cat", output_type="latent", **kwargs).images
    kwargs["generator"] = _generator()
    car = pipe("a red car on a beach", output_type="latent", **kwargs).images
    assert _relative_change(cat, car) > 0.1


def test_sd15_inpaint_folder_loads_and_inpaints(tiny_sd15_inpaint: Path) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        tiny_sd15_inpaint, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9
    init = make_reference_image(5, size=(64, 64))
    out = pipe(
        "a cat",
        image=init,
        mask_image=make_mask((64, 64), (16, 16, 48, 48)),
        num_inference_steps=2,
        height=64,
        width=64,
        generator=_generator(),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all() and out.std() > 0.02


def test_controlnet_residuals_depend_on_the_control_image(tiny_sd15: Path, tiny_controlnet: Path) -> None:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    controlnet = ControlNetModel.from_pretrained(tiny_controlnet)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_sd15, controlnet=controlnet, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)

    def run(control: Image.Image, scale: float) -> torch.Tensor:
        return pipe(
            "a cat",
            image=control,
            controlnet_conditioning_scale=scale,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=_generator(),
            output_type="latent",
        ).images

    pose_a = make_reference_image(10, size=(64, 64))
    pose_b = make_reference_image(11, size=(64, 64))
    with_a = run(pose_a, 1.0)
    assert torch.isfinite(with_a).all()
    assert _relative_change(with_a, run(pose_b, 1.0)) > 0.02
    assert _relative_change(with_a, run(pose_a, 0.0)) > 0.05


# --- image encoder -------------------------------------------------------------------------------------


def test_image_encoder_folder(tiny_image_encoder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    assert {p.name for p in tiny_image_encoder.iterdir()} >= {"config.json", "model.safetensors"}
    encoder = CLIPVisionModelWithProjection.from_pretrained(tiny_image_encoder)
    processor = CLIPImageProcessor(size=32, crop_size=32)
    pixels = processor(images=[make_reference_image(0), make_reference_image(1)], return_tensors="pt")
    with torch.no_grad():
        out = encoder(pixels.pixel_values, output_hidden_states=True)
    assert out.image_embeds.shape == (2, 24)  # projection_dim != UNet cross-attention dim (32)
    assert out.hidden_states[-2].shape == (2, 17, 32)  # 4x4 patches + CLS
    assert _relative_change(out.image_embeds[0], out.image_embeds[1]) > 0.05


def test_builds_are_deterministic(tmp_path: Path, tiny_sd15: Path, tiny_image_encoder: Path) -> None:
    a = build_image_encoder_folder(tmp_path / "a", seed=7)
    b = build_image_encoder_folder(tmp_path / "b", seed=7)
    assert filecmp.cmp(a / "model.safetensors", b / "model.safetensors", shallow=False)
    common = dict(variant="plus", sd15_folder=tiny_sd15, image_encoder_folder=tiny_image_encoder, fmt="bin")
    x = write_ip_adapter(tmp_path / "x.safetensors", **{**common, "fmt": "safetensors"})
    y = write_ip_adapter(tmp_path / "y.safetensors", **{**common, "fmt": "safetensors"})
    assert filecmp.cmp(x, y, shallow=False)
    assert np.array_equal(np.asarray(make_reference_image(3)), np.asarray(make_reference_image(3)))


# --- IP-Adapter checkpoints ------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    if path.suffix == ".bin":
        return torch.load(path, weights_only=True)
    from safetensors.torch import load_file

    flat = load_file(path)
    assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in flat)
    return {
        group: {k.removeprefix(group + "."): v for k, v in flat.items() if k.startswith(group + ".")}
        for group in ("image_proj", "ip_adapter")
    }


def test_adapter_files_have_the_official_layout(tiny_adapters: dict[tuple[str, str], Path]) -> None:
    expected_ip = {f"{i}.to_{kv}_ip.weight" for i in range(1, 32, 2) for kv in "kv"}
    for (variant, _fmt), path in tiny_adapters.items():
        sd = _read_checkpoint(path)
        assert set(sd) == {"image_proj", "ip_adapter"}
        assert set(sd["ip_adapter"]) == expected_ip
        assert sd["ip_adapter"]["1.to_k_ip.weight"].shape == (32, 32)
        assert sd["ip_adapter"]["31.to_v_ip.weight"].shape == (64, 32)  # mid block
        proj = sd["image_proj"]
        if variant == "global":
            assert proj["proj.weight"].shape == (4 * 32, 24) and proj["norm.weight"].shape == (32,)
        elif variant == "plus":
            assert proj["latents"].shape == (1, 16, 32) and proj["proj_in.weight"].shape == (32, 32)
            assert proj["layers.3.0.to_kv.weight"].shape == (128, 32)
            assert proj["layers.0.1.3.weight"].shape == (32, 128)
            assert len(proj) == 7 + 4 * 11  # 51 keys, as in ip-adapter-plus_sd15
        else:
            assert proj["proj.0.weight"].shape == (32, 32) and proj["proj.3.weight"].shape == (32,)


def test_mismatching_adapter_overrides(tmp_path: Path, tiny_sd15: Path, tiny_image_encoder: Path) -> None:
    def write(name: str, variant: str, **overrides) -> dict[str, dict[str, torch.Tensor]]:
        path = write_ip_adapter(
            tmp_path / name,
            variant=variant,
            sd15_folder=tiny_sd15,
            image_encoder_folder=tiny_image_encoder,
            fmt="bin" if name.endswith(".bin") else "safetensors",
            **overrides,
        )
        return _read_checkpoint(path)

    sdxl = write("sdxl.safetensors", "global", cross_attention_dim=2048)  # SDXL-shaped to_k_ip
    assert sdxl["ip_adapter"]["1.to_k_ip.weight"].shape == (32, 2048)
    assert sdxl["image_proj"]["proj.weight"].shape == (4 * 2048, 24)
    big_g = write("big_g.safetensors", "plus", embed_dim=1280)  # ViT-bigG-shaped encoder input
    assert big_g["image_proj"]["proj_in.weight"].shape == (32, 1280)
    half = write("half.bin", "full", dtype=torch.float16)  # the official files are float16
    assert half["image_proj"]["proj.0.weight"].dtype == torch.float16


@pytest.fixture(scope="module")
def ip_pipe_factory(tiny_sd15: Path, tiny_image_encoder: Path):
    """Build a fresh SD pipeline with the tiny image encoder (load_ip_adapter mutates the UNet)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    def make():
        encoder = CLIPVisionModelWithProjection.from_pretrained(tiny_image_encoder)
        return _sd_pipeline(
            tiny_sd15, image_encoder=encoder, feature_extractor=CLIPImageProcessor(size=32, crop_size=32)
        )

    return make


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("variant", ["global", "plus", "full"])
def test_adapter_loads_in_diffusers_and_lambda_matters(
    variant: str,
    fmt: str,
    tiny_adapters: dict[tuple[str, str], Path],
    ip_pipe_factory,
    reference_images: list[Image.Image],
) -> None:
    from diffusers.models.embeddings import (
        ImageProjection,
        IPAdapterFullImageProjection,
        IPAdapterPlusImageProjection,
    )

    path = tiny_adapters[(variant, fmt)]
    pipe = ip_pipe_factory()
    pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None)
    projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
    expected_class = {
        "global": ImageProjection,
        "plus": IPAdapterPlusImageProjection,
        "full": IPAdapterFullImageProjection,
    }[variant]
    assert type(projection) is expected_class

    def run(scale: float, reference: Image.Image, output_type: str = "latent"):
        pipe.set_ip_adapter_scale(scale)
        return pipe(
            "",
            ip_adapter_image=reference,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=_generator(),
            output_type=output_type,
        ).images

    image = run(1.0, reference_images[0], output_type="np")
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all() and image.std() > 0.02
    full = run(1.0, reference_images[0])
    assert _relative_change(full, run(0.0, reference_images[0])) > 0.1  # λ visibly matters
    assert _relative_change(full, run(1.0, reference_images[1])) > 0.05  # so does the reference


# --- malicious pickles ---------------------------------------------------------------------------------


def _pickle_globals(data: bytes) -> set[str]:
    """Names the pickle would import, read from its opcodes (pickletools never executes anything)."""
    names, strings = set(), []
    for opcode, arg, _pos in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
    return names | {s for s in strings if s == "touch"}


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickles_are_armed_but_not_fired(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    writer = write_legacy_malicious_pickle if legacy else write_malicious_pickle
    path = writer(tmp_path / "evil.bin", marker)
    assert path.is_file() and not marker.exists()  # writing must not run the payload

    if legacy:
        data = path.read_bytes()
        assert not zipfile.is_zipfile(path)
    else:
        with zipfile.ZipFile(path) as archive:
            (data_pkl,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            data = archive.read(data_pkl)
    names = _pickle_globals(data)
    assert "pathlib.Path" in names and "touch" in names and "__builtin__.getattr" in names

    # torch's restricted unpickler must refuse it, and nothing may have run.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()


# --- pictures --------------------------------------------------------------------------------------------


def test_reference_images_and_masks() -> None:
    a, b = make_reference_image(0), make_reference_image(1)
    assert a.mode == "RGB" and a.size == (80, 60)
    assert make_reference_image(0, size=(33, 17)).size == (33, 17)
    arr_a, arr_b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    assert arr_a.std() > 20 and np.abs(arr_a - arr_b).mean() > 20
    mask = np.asarray(make_mask((64, 48), (8, 4, 24, 20)))
    assert mask.shape == (48, 64) and mask.dtype == np.uint8
    assert (mask[4:20, 8:24] == 255).all() and mask.sum() == 255 * 16 * 16
