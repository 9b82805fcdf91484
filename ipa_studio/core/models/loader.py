"""Loading model components from disk, with errors that say which file is wrong and why.

Everything is loaded with ``local_files_only``: the engine never reaches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ipa_studio.core.errors import ModelFileError

_BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class BaseModel:
    """The frozen SD1.5 components the engine runs, shared by every generation mode."""

    path: Path
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels == 9

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def _wrap(what: str, path: Path, exc: Exception) -> ModelFileError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelFileError(f"The {what} in '{path}' could not be loaded: {detail}")


def load_base_model(path: str | Path, device: torch.device, dtype: torch.dtype) -> BaseModel:
    """Load an SD1.5 diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"The base model '{path}' does not exist.")
    if path.is_file():
        raise ModelFileError(
            f"'{path.name}' is a single-file checkpoint. This version of IPA Studio loads base models "
            "as diffusers folders (with unet/, vae/, text_encoder/, tokenizer/, scheduler/ inside)."
        )
    missing = [p for p in _BASE_PARTS if not (path / p).is_dir()]
    if missing:
        raise ModelFileError(
            f"'{path}' is not a complete Stable Diffusion folder: {', '.join(missing)} missing."
        )
    opts = {"local_files_only": True}
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **opts)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **opts)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype, **opts)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **opts)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _wrap("base model", path, exc) from exc
    from diffusers import DDIMScheduler

    try:
        scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler", **opts))
    except (OSError, ValueError) as exc:
        raise _wrap("scheduler config", path, exc) from exc
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ModelFileError(
            f"'{path}' mixes parts of different models: the UNet reads "
            f"{unet.config.cross_attention_dim}-wide text features but the text encoder makes "
            f"{text_encoder.config.hidden_size}-wide ones."
        )
    for module in (unet, vae, text_encoder):
        if device.type != "cpu":  # from_pretrained already put them on the CPU
            module.to(device)
        module.eval().requires_grad_(False)
    return BaseModel(path, unet, vae, text_encoder, tokenizer, scheduler_config)


def load_image_encoder(path: str | Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """Load a CLIP vision tower with projection and the preprocessing the official adapters expect."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(
            f"The image encoder '{path}' is not a folder. Use the 'models/image_encoder' folder "
            "(CLIP ViT-H/14: config.json and model.safetensors) that comes with the SD1.5 adapters."
        )
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _wrap("image encoder", path, exc) from exc
    if device.type != "cpu":
        encoder.to(device)
    encoder.eval().requires_grad_(False)
    size = encoder.config.image_size
    # The official encoder folder ships no preprocessor config; these are CLIP's defaults at the
    # encoder's resolution, the same processor diffusers builds in load_ip_adapter.
    processor = CLIPImageProcessor(size=size, crop_size=size)
    return encoder, processor


def load_controlnet(path: str | Path, device: torch.device, dtype: torch.dtype) -> Any:
    from diffusers import ControlNetModel

    path = Path(path)
    if not path.is_dir():
        raise ModelFileError(f"The ControlNet '{path}' is not a diffusers folder.")
    try:
        model = ControlNetModel.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise _wrap("ControlNet", path, exc) from exc
    if device.type != "cpu":
        model.to(device)
    return model.eval().requires_grad_(False)
