"""Loading model components from disk, with errors that say which file is wrong and why.

Everything is loaded with ``local_files_only``: the engine never reaches the network. A single-file
SD1.5 checkpoint (``.safetensors`` / ``.ckpt`` in the original layout) is read once through the safe
loader, checked by ``detect`` before anything is built, converted with diffusers' own key conversion
and assigned into models built from the SD1.5 configs and tokenizer bundled in ``resources/`` —
no hub, no cache, no download. Single-file ControlNets and image encoders are read the same way,
with the bundled SD1.5 ControlNet and CLIP ViT-H/14 configs. Diffusers folders whose weights exist
only as variant files (``*.fp16.safetensors``, most hub repos) are loaded with that variant.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from importlib import resources
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


def _variant(folder: Path) -> str | None:
    """The weights variant to ask diffusers / transformers for: None when the plain files are there,
    "fp16" (…) when only ``*.fp16.safetensors`` files are."""
    from ipa_studio.core.models.detect import find_weights

    found = find_weights(folder)
    return found[1] if found is not None else None


def _wrap(what: str, path: Path, exc: Exception) -> ModelFileError:
    chain, cause = [], exc
    while cause is not None and len(chain) < 10:  # libraries wrap the unpickler's error in their own
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e) for e in chain):
        # PyTorch's refusal advises retrying with weights_only=False, which would run the file's code.
        from ipa_studio.core.models.safe_load import PICKLE_SUFFIXES, unsafe_pickle_error

        pickles = [f for f in path.rglob("*") if f.suffix.lower() in PICKLE_SUFFIXES] if path.is_dir() else []
        return unsafe_pickle_error(pickles[0] if len(pickles) == 1 else path)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelFileError(f"The {what} in '{path}' could not be loaded: {detail}")


# What a library's from_pretrained may raise for a bad folder (a pickle it refuses included).
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError)


def _complete(what: str, path: Path, loaded: tuple[Any, dict]) -> Any:
    """The model from ``from_pretrained(..., output_loading_info=True)``, refused when its weights
    file lacks tensors: transformers fills those with random values, diffusers leaves them on the
    meta device (a cryptic "Tensor on device meta" later), and either way the results are wrong."""
    model, info = loaded
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [m[0] if isinstance(m, (tuple, list)) else m for m in info.get("mismatched_keys") or []]
    if not missing:
        tensors = [*model.named_parameters(), *model.named_buffers()]
        missing = sorted(name for name, t in tensors if t.device.type == "meta")
    if missing or mismatched:
        names = missing or mismatched
        problem = "lack" if missing else "have the wrong shape for"
        raise ModelFileError(
            f"The {what} in '{path}' is incomplete: its weights {problem} {len(names)} of the tensors it "
            f"needs (for example '{names[0]}'), so it would compute with random values. Download it again."
        )
    return model


def load_base_model(
    path: str | Path, device: torch.device, dtype: torch.dtype, *, config: str | Path | None = None
) -> BaseModel:
    """Load an SD1.5 base model: a diffusers folder (unet/, vae/, text_encoder/, tokenizer/,
    scheduler/) or a single-file checkpoint in the original layout (``.safetensors``, ``.ckpt``).

    ``config`` (single files only): a diffusers-layout folder whose ``unet/``, ``vae/``,
    ``text_encoder/`` (and optionally ``tokenizer/``, ``scheduler/``) configs describe the checkpoint,
    instead of the bundled SD1.5 ones — for checkpoints with non-standard widths.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"The base model '{path}' does not exist.")
    if path.is_file():
        return _load_single_file(path, device, dtype, Path(config) if config is not None else None)
    missing = [p for p in _BASE_PARTS if not (path / p).is_dir()]
    if missing:
        raise ModelFileError(
            f"'{path}' is not a complete Stable Diffusion folder: {', '.join(missing)} missing."
        )
    from ipa_studio.core.models.safe_load import check_pickles_in

    check_pickles_in(path)
    opts = {"local_files_only": True}
    info = {"output_loading_info": True}
    try:
        unet = _complete(
            "UNet",
            path,
            UNet2DConditionModel.from_pretrained(
                path, subfolder="unet", torch_dtype=dtype, variant=_variant(path / "unet"), **opts, **info
            ),
        )
        vae = _complete(
            "VAE",
            path,
            AutoencoderKL.from_pretrained(
                path, subfolder="vae", torch_dtype=dtype, variant=_variant(path / "vae"), **opts, **info
            ),
        )
        text_encoder = _complete(
            "text encoder",
            path,
            CLIPTextModel.from_pretrained(
                path,
                subfolder="text_encoder",
                dtype=dtype,
                variant=_variant(path / "text_encoder"),
                **opts,
                **info,
            ),
        )
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **opts)
    except _LOAD_ERRORS as exc:
        raise _wrap("base model", path, exc) from exc
    from diffusers import DDIMScheduler

    try:
        scheduler_config = dict(DDIMScheduler.load_config(path, subfolder="scheduler", **opts))
    except (OSError, ValueError) as exc:
        raise _wrap("scheduler config", path, exc) from exc
    return _finish(path, unet, vae, text_encoder, tokenizer, scheduler_config, device)


def _finish(
    path: Path,
    unet: Any,
    vae: Any,
    text_encoder: Any,
    tokenizer: Any,
    scheduler_config: dict,
    device: torch.device,
) -> BaseModel:
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ModelFileError(
            f"'{path}' mixes parts of different models: the UNet reads "
            f"{unet.config.cross_attention_dim}-wide text features but the text encoder makes "
            f"{text_encoder.config.hidden_size}-wide ones."
        )
    for module in (unet, vae, text_encoder):
        if device.type != "cpu":  # the weights were loaded on the CPU
            module.to(device)
        module.eval().requires_grad_(False)
    return BaseModel(path, unet, vae, text_encoder, tokenizer, scheduler_config)


# --------------------------------------------------------------------------- single-file checkpoints


def bundled_resources() -> Path:
    """The package's ``resources/`` folder on disk (configs, tokenizer, catalog)."""
    return Path(str(resources.files("ipa_studio").joinpath("resources")))


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def single_file_configs(config: Path | None = None) -> dict[str, Any]:
    """unet / vae / text_encoder / scheduler config dicts and the tokenizer folder for a single file."""
    sd15 = bundled_resources() / "sd15"
    out: dict[str, Any] = {
        "unet": _json(sd15 / "unet_config.json"),
        "vae": _json(sd15 / "vae_config.json"),
        "text_encoder": _json(sd15 / "text_encoder_config.json"),
        "scheduler": _json(sd15 / "scheduler_config.json"),
        "tokenizer": bundled_resources() / "tokenizer",
    }
    if config is not None:
        for part in ("unet", "vae", "text_encoder"):
            file = config / part / "config.json"
            if not file.is_file():
                raise ModelFileError(f"The config folder '{config}' has no {part}/config.json.")
            out[part] = _json(file)
        if (config / "scheduler" / "scheduler_config.json").is_file():
            out["scheduler"] = _json(config / "scheduler" / "scheduler_config.json")
        if (config / "tokenizer").is_dir():
            out["tokenizer"] = config / "tokenizer"
    return out


def _assign(
    module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, name: str, dtype: torch.dtype
):
    # Contiguous: the layout conversion leaves views (VAE attention convs → linear) whose strides
    # would send matmuls down other kernels, with results that differ in the last bits.
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    try:
        missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise ModelFileError(f"'{name}' does not have the shapes of an SD1.5 {what}: {first[:300]}") from exc
    if missing:
        raise ModelFileError(
            f"'{name}' is incomplete: its {what} lacks {len(missing)} weights (for example '{missing[0]}')."
        )
    if unexpected:
        raise ModelFileError(
            f"'{name}' does not match the SD1.5 layout: its {what} has {len(unexpected)} weights SD1.5 "
            f"does not (for example '{unexpected[0]}')."
        )
    return module


def _check_single_file(found: Any, config: Path | None) -> Any:
    # A config folder makes non-standard widths loadable; every other refusal stands.
    nonstandard_ok = config is not None and found.architecture.startswith("SD1.x-shaped")
    if found.kind != "base" or not (found.usable or nonstandard_ok):
        reason = found.reason or f"it is a {found.architecture}, not a base model"
        raise ModelFileError(f"'{found.path.name}' cannot be used as the base model: {reason}.")
    return found


def _load_single_file(path: Path, device: torch.device, dtype: torch.dtype, config: Path | None) -> BaseModel:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ipa_studio.core.models.convert import from_single_file, single_file_problems
    from ipa_studio.core.models.detect import classify_shapes, detect, flatten_state
    from ipa_studio.core.models.safe_load import load_weights

    if path.suffix.lower() == ".safetensors":
        # The header says what the file is: refuse an SDXL or a truncated file before reading GBs.
        _check_single_file(detect(path), config)
    # The one read of the file; everything below works on this dict.
    state = flatten_state(load_weights(path))
    fmt = "safetensors" if path.suffix.lower() == ".safetensors" else "pickle"
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = _check_single_file(classify_shapes(path, shapes, fmt), config)

    cfg = single_file_configs(config)
    if config is None:
        cfg["unet"]["in_channels"] = found.details["in_channels"]
    else:
        # Detection checked the file against the bundled configs; a config folder replaces them.
        problems = single_file_problems(shapes, cfg["unet"], cfg["vae"], cfg["text_encoder"])
        if problems:
            raise ModelFileError(
                f"'{path.name}' does not fit the config folder '{config}': {'; '.join(problems[:2])}."
            )
    unet_sd, vae_sd, text_sd = from_single_file(state, cfg["unet"], cfg["vae"])
    del state
    # Empty (meta) modules: the checkpoint's tensors are assigned, never copied into random weights.
    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel.from_config(cfg["unet"])
        vae = AutoencoderKL.from_config(cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    _assign(unet, unet_sd, "UNet", path.name, dtype)
    _assign(vae, vae_sd, "VAE", path.name, dtype)
    _assign(text_encoder, text_sd, "text encoder", path.name, dtype)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(cfg["tokenizer"], local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _wrap("bundled tokenizer", cfg["tokenizer"], exc) from exc
    scheduler_config = {
        k: v for k, v in cfg["scheduler"].items() if not k.startswith("_") or k == "_class_name"
    }
    return _finish(path, unet, vae, text_encoder, tokenizer, scheduler_config, device)


def load_image_encoder(
    path: str | Path, device: torch.device, dtype: torch.dtype, *, config: str | Path | None = None
) -> tuple[Any, Any]:
    """Load a CLIP vision tower with projection and the preprocessing the official adapters expect.

    ``path``: a transformers folder (h94/IP-Adapter's ``models/image_encoder``: config.json and
    model.safetensors) or that weight file on its own (how ComfyUI keeps it, as
    ``clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors``), built with the bundled ViT-H/14
    config — or with ``config`` (a folder with config.json, or the config.json) when given.
    """
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"The image encoder '{path}' does not exist.")
    if path.is_file():
        encoder = _load_image_encoder_file(path, dtype, Path(config) if config is not None else None)
    else:
        from ipa_studio.core.models.safe_load import check_pickles_in

        check_pickles_in(path)
        try:
            encoder = _complete(
                "image encoder",
                path,
                CLIPVisionModelWithProjection.from_pretrained(
                    path, dtype=dtype, local_files_only=True, variant=_variant(path), output_loading_info=True
                ),
            )
        except _LOAD_ERRORS as exc:
            raise _wrap("image encoder", path, exc) from exc
    if device.type != "cpu":
        encoder.to(device)
    encoder.eval().requires_grad_(False)
    size = encoder.config.image_size
    # The official encoder folder ships no preprocessor config; these are CLIP's defaults at the
    # encoder's resolution, the same processor diffusers builds in load_ip_adapter.
    processor = CLIPImageProcessor(size=size, crop_size=size)
    return encoder, processor


def _config_json(config: Path) -> dict:
    file = config / "config.json" if config.is_dir() else config
    if not file.is_file():
        raise ModelFileError(f"The config '{config}' has no config.json.")
    return _json(file)


def _load_image_encoder_file(path: Path, dtype: torch.dtype, config: Path | None) -> Any:
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ipa_studio.core.models.convert import vision_config
    from ipa_studio.core.models.detect import detect, flatten_state, image_encoder_problems
    from ipa_studio.core.models.safe_load import load_weights

    if config is None:
        found = detect(path)
        if found.kind != "image_encoder" or not found.usable:
            reason = found.reason or f"it is a {found.architecture}, not an image encoder"
            raise ModelFileError(f"'{path.name}' cannot be used as the image encoder: {reason}.")
    cfg = vision_config(_config_json(config) if config is not None else None)
    state = {k: v for k, v in flatten_state(load_weights(path)).items() if not k.endswith("position_ids")}
    problems = image_encoder_problems({k: tuple(v.shape) for k, v in state.items()}, cfg)
    if problems:
        raise ModelFileError(f"'{path.name}' cannot be used as the image encoder: {'; '.join(problems[:2])}.")
    with init_empty_weights(include_buffers=False):
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg))
    return _assign(encoder, state, "image encoder", path.name, dtype)


def load_controlnet(
    path: str | Path, device: torch.device, dtype: torch.dtype, *, config: str | Path | None = None
) -> Any:
    """Load a ControlNet: a diffusers folder, or a single file as A1111 / ComfyUI users have them
    (ControlNet-v1-1 ``.pth`` with ``control_model.``, bare ``.safetensors``, diffusers-layout single
    files, ControlNet 1.0 files with their base model inside), built with the bundled SD1.5
    ControlNet config — or ``config`` (a folder with config.json, or the file) when given."""
    from diffusers import ControlNetModel

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"The ControlNet '{path}' does not exist.")
    if path.is_file():
        model = _load_controlnet_file(path, dtype, Path(config) if config is not None else None)
    else:
        from ipa_studio.core.models.safe_load import check_pickles_in

        check_pickles_in(path)
        try:
            model = _complete(
                "ControlNet",
                path,
                ControlNetModel.from_pretrained(
                    path,
                    torch_dtype=dtype,
                    local_files_only=True,
                    variant=_variant(path),
                    output_loading_info=True,
                ),
            )
        except _LOAD_ERRORS as exc:
            raise _wrap("ControlNet", path, exc) from exc
    if device.type != "cpu":
        model.to(device)
    return model.eval().requires_grad_(False)


def _load_controlnet_file(path: Path, dtype: torch.dtype, config: Path | None) -> Any:
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    from ipa_studio.core.models.convert import (
        controlnet_config,
        controlnet_from_single_file,
        controlnet_problems,
    )
    from ipa_studio.core.models.detect import flatten_state
    from ipa_studio.core.models.safe_load import load_weights
    from ipa_studio.core.preprocess.controlnets import detect_controlnet

    cfg = controlnet_config(_config_json(config) if config is not None else None)
    info = detect_controlnet(path, base_cross_attention_dim=int(cfg["cross_attention_dim"]))
    if not info.usable:
        raise ModelFileError(f"'{path.name}' cannot be used as a ControlNet: {info.reason}")
    state = flatten_state(load_weights(path))
    problems = controlnet_problems({k: tuple(v.shape) for k, v in state.items()}, cfg)
    if problems:
        raise ModelFileError(f"'{path.name}' cannot be used as a ControlNet: {'; '.join(problems[:2])}.")
    converted = controlnet_from_single_file(state, cfg)
    del state
    with init_empty_weights(include_buffers=False):
        model = ControlNetModel.from_config(cfg)
    return _assign(model, converted, "ControlNet", path.name, dtype)
