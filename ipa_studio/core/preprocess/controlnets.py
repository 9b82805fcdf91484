"""What a ControlNet file or folder is, read from ``config.json`` or weight headers only.

``detect_controlnet`` answers, without loading any weights: is this a ControlNet at all, for which
base family (SD1.x / SD2.x / SDXL, from the cross-attention width), can the engine run it with the
loaded base, and which kind of map it wants (openpose / depth, from its name: the weights of a pose
ControlNet and a depth ControlNet have the same shapes, so only the name tells them apart).

Formats understood:

* diffusers folder: ``config.json`` (``_class_name: ControlNetModel``) next to
  ``diffusion_pytorch_model.safetensors`` / ``.bin``;
* single file, original layout (``control_v11p_sd15_openpose.pth``): keys ``input_hint_block.*``,
  ``zero_convs.*``, ``input_blocks.*``, optionally under ``control_model.``;
* single file, diffusers layout: ``controlnet_cond_embedding.*``, ``down_blocks.*``.

``.safetensors`` headers are read as JSON (a few kB); zip-format pickles are opened memory-mapped with
the weights-only unpickler, so only their structure is read and no code in them can run.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ipa_studio.core.errors import ModelFileError, UnsafeFileError
from ipa_studio.core.models.safe_load import PICKLE_SUFFIXES, describe_non_weights, load_weights

ControlNetKind = Literal["openpose", "depth", "unknown"]
Format = Literal["diffusers", "single-file"]
BaseFamily = Literal["SD1.x", "SD2.x", "SDXL", "unknown"]

SD15_CROSS_ATTENTION_DIM = 768
CROSS_ATTENTION_BASES: dict[int, BaseFamily] = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_MAX_HEADER = 100_000_000  # a real safetensors header is kilobytes; more means a foreign file

_KIND_PATTERNS: tuple[tuple[ControlNetKind, re.Pattern[str]], ...] = (
    ("openpose", re.compile(r"openpose|dw_?pose|(?<![a-z])pose(?![a-z])")),
    ("depth", re.compile(r"depth|zoe|midas|leres")),
)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class ControlNetInfo:
    path: Path
    kind: ControlNetKind
    base: BaseFamily
    usable: bool
    reason: str
    """Why it cannot be used; empty when ``usable``."""
    format: Format
    cross_attention_dim: int | None = None
    conditioning_channels: int | None = None


class _NotUsable(Exception):
    """Internal: the file is readable but cannot be a usable ControlNet; the message says why."""


def kind_from_name(*names: str) -> ControlNetKind:
    """The map kind named in a repo, folder or file name (``control_v11p_sd15_openpose`` → openpose)."""
    for name in names:
        text = name.lower().replace("-", "_").replace(".", "_")
        for kind, pattern in _KIND_PATTERNS:
            if pattern.search(text):
                return kind
    return "unknown"


def detect_controlnet(
    path: str | Path,
    *,
    base_cross_attention_dim: int = SD15_CROSS_ATTENTION_DIM,
    single_file_loadable: bool = True,
) -> ControlNetInfo:
    """Describe the ControlNet at ``path`` (a diffusers folder or a single weight file).

    ``usable`` means the engine can run it: it fits a base model whose UNet has
    ``base_cross_attention_dim`` (768: SD1.5), reads 3-channel control images, and is in a format the
    loader reads. The loader reads diffusers folders and single files (``single_file_loadable=False``
    judges for a loader that reads folders only; kind, base and widths are reported either way). Raises
    ``ModelFileError`` only when ``path`` does not exist; anything wrong with the contents is
    reported in ``reason``.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"The ControlNet '{path}' does not exist.")
    if path.is_dir():
        return _detect_folder(path, base_cross_attention_dim)
    info = _detect_file(path, base_cross_attention_dim)
    if info.usable and not single_file_loadable:
        return dataclasses.replace(
            info,
            usable=False,
            reason="It is a single-file ControlNet; IPA Studio loads ControlNets as diffusers folders "
            f"(config.json + {DIFFUSERS_WEIGHTS[0]}): get the diffusers version of it.",
        )
    return info


# --------------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------------


def _verdict(
    path: Path,
    fmt: Format,
    kind: ControlNetKind,
    cross: int | None,
    sdxl: bool,
    cond_channels: int | None,
    in_channels: int | None,
    base_cross: int,
) -> ControlNetInfo:
    base: BaseFamily = "SDXL" if sdxl else CROSS_ATTENTION_BASES.get(cross or -1, "unknown")
    reason = ""
    if sdxl or (cross is not None and cross != base_cross):
        fits = CROSS_ATTENTION_BASES.get(base_cross, f"{base_cross}-wide")
        made_for = f"an {base}" if base != "unknown" else f"a {cross}-wide cross-attention"
        reason = f"It is {made_for} ControlNet; the base model needs {fits} ControlNets."
    elif cross is None:
        reason = "Its cross-attention layers are missing, so the base model it belongs to is unknown."
    elif cond_channels not in (None, 3):
        reason = f"It reads {cond_channels}-channel control images; only RGB (3-channel) maps are supported."
    elif in_channels not in (None, 4):
        reason = f"It works on {in_channels}-channel latents; SD1.5 uses 4."
    return ControlNetInfo(path, kind, base, not reason, reason, fmt, cross, cond_channels)


def _not_usable(path: Path, fmt: Format, kind: ControlNetKind, why: str) -> ControlNetInfo:
    return ControlNetInfo(path, kind, "unknown", False, why, fmt)


# --------------------------------------------------------------------------------------------------
# Diffusers folder
# --------------------------------------------------------------------------------------------------


def _detect_folder(path: Path, base_cross: int) -> ControlNetInfo:
    config_path = path / "config.json"
    kind = kind_from_name(path.name)
    if not config_path.is_file():
        return _not_usable(
            path, "diffusers", kind, "config.json is missing: a diffusers ControlNet folder needs it."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _not_usable(path, "diffusers", kind, f"config.json cannot be read ({type(exc).__name__}).")
    if not isinstance(config, dict):
        return _not_usable(path, "diffusers", kind, "config.json does not describe a model.")
    if kind == "unknown":
        kind = kind_from_name(str(config.get("_name_or_path") or ""))
    cls = config.get("_class_name")
    if cls != "ControlNetModel":
        what = f"a {cls}" if cls else "no diffusers model"
        return _not_usable(path, "diffusers", kind, f"Its config.json describes {what}, not a ControlNet.")

    from ipa_studio.core.models.detect import find_weights

    found = find_weights(path)
    weights = found[0] if found is not None else None
    if weights is None:
        variants = sorted(p.name for p in path.glob("diffusion_pytorch_model.*"))
        found = f" (found only {', '.join(variants)})" if variants else ""
        return _not_usable(
            path, "diffusers", kind, f"The weights file {DIFFUSERS_WEIGHTS[0]} is missing{found}."
        )
    cross = config.get("cross_attention_dim")
    if weights.name.endswith(".safetensors"):
        try:
            shapes = _safetensors_shapes(weights)
        except _NotUsable as exc:
            return _not_usable(path, "diffusers", kind, str(exc))
        header_cross = _cross_dim(shapes)
        if header_cross is not None and isinstance(cross, int) and header_cross != cross:
            return _not_usable(
                path,
                "diffusers",
                kind,
                f"config.json says {cross}-wide cross-attention but the weights are {header_cross}-wide: "
                "the folder mixes two models.",
            )
    return _verdict(
        path,
        "diffusers",
        kind,
        cross if isinstance(cross, int) else None,
        config.get("addition_embed_type") == "text_time",
        config.get("conditioning_channels", 3),
        config.get("in_channels", 4),
        base_cross,
    )


# --------------------------------------------------------------------------------------------------
# Single file
# --------------------------------------------------------------------------------------------------


def _detect_file(path: Path, base_cross: int) -> ControlNetInfo:
    kind = kind_from_name(path.stem)
    try:
        if path.suffix.lower() == ".safetensors":
            shapes = _safetensors_shapes(path)
        elif path.suffix.lower() in PICKLE_SUFFIXES:
            shapes = _pickle_shapes(path)
        else:
            raise _NotUsable(f"'{path.suffix}' is not a weight file type (.safetensors, .pth, .bin, .ckpt).")
        info = _verdict_from_keys(path, kind, shapes, base_cross)
    except _NotUsable as exc:
        return _not_usable(path, "single-file", kind, str(exc))
    from ipa_studio.core.models.convert import controlnet_config, controlnet_problems

    bundled = controlnet_config()
    if info.usable and info.cross_attention_dim == bundled["cross_attention_dim"]:
        # Usable means loadable: the loader's own conversion must find every weight of the SD1.5
        # ControlNet it builds from the bundled config.
        problems = controlnet_problems(shapes, bundled)
        if problems:
            why = "It is damaged or not a standard SD1.5 ControlNet: " + "; ".join(problems[:2]) + "."
            return dataclasses.replace(info, usable=False, reason=why)
    return info


def _verdict_from_keys(
    path: Path, kind: ControlNetKind, shapes: dict[str, tuple[int, ...]], base_cross: int
) -> ControlNetInfo:
    # Full "ControlNet + base" checkpoints keep the ControlNet under control_model.; stand-alone files don't.
    prefix = "control_model."
    keys = {k.removeprefix(prefix): v for k, v in shapes.items() if k.startswith(prefix)} or shapes
    if "input_hint_block.0.weight" in keys:  # original ControlNet layout
        hint, conv_in = "input_hint_block.0.weight", "input_blocks.0.0.weight"
        sdxl = "label_emb.0.0.weight" in keys
    elif "controlnet_cond_embedding.conv_in.weight" in keys:  # diffusers layout
        hint, conv_in = "controlnet_cond_embedding.conv_in.weight", "conv_in.weight"
        sdxl = "add_embedding.linear_1.weight" in keys
    else:
        raise _NotUsable(_what_else(shapes))
    cond = keys[hint][1] if len(keys[hint]) > 1 else None
    in_ch = keys[conv_in][1] if conv_in in keys and len(keys[conv_in]) > 1 else None
    return _verdict(path, "single-file", kind, _cross_dim(keys), sdxl, cond, in_ch, base_cross)


def _what_else(shapes: dict[str, tuple[int, ...]]) -> str:
    keys = list(shapes)

    def any_key(test: str) -> bool:
        return any(test in k for k in keys)

    if any_key("lora_controlnet"):
        return "It is a Control-LoRA; only full ControlNets are supported."
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys):
        return "It is an IP-Adapter, not a ControlNet: choose it as the adapter."
    if any_key("lora_"):
        return "It is a LoRA, not a ControlNet."
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "It is a Stable Diffusion model checkpoint, not a ControlNet: choose it as the base model."
    if any(k.startswith(("adapter.", "body.")) for k in keys):
        return "It is a T2I-Adapter, not a ControlNet."
    return "It is not a ControlNet: none of its weights are ControlNet layers."


def _cross_dim(shapes: dict[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a ``.safetensors`` header, after checking the file holds all the data."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            impostor = describe_non_weights(head + f.read(504))
            if impostor:
                raise _NotUsable(f"'{path.name}' cannot be used: {impostor}.")
            if len(head) < 8:
                raise _NotUsable(f"'{path.name}' is too short to be a .safetensors file.")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, _MAX_HEADER):
                raise _NotUsable(f"'{path.name}' is not a valid .safetensors file (bad header length).")
            f.seek(8)
            header = json.loads(f.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _NotUsable(f"'{path.name}' is not a valid .safetensors file ({type(exc).__name__}).") from exc
    if not isinstance(header, dict):
        raise _NotUsable(f"'{path.name}' is not a valid .safetensors file.")
    header.pop("__metadata__", None)
    try:
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()}
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise _NotUsable(f"'{path.name}' is not a valid .safetensors file (damaged header).") from exc
    if 8 + length + end > size:
        raise _NotUsable(
            f"'{path.name}' is truncated: the file ends before all its tensors. The download was "
            "probably interrupted; download it again."
        )
    return shapes


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise _NotUsable(f"'{path.name}' cannot be read: {exc.strerror or exc}.") from exc
    impostor = describe_non_weights(head)
    if impostor:
        raise _NotUsable(f"'{path.name}' cannot be used: {impostor}.")
    try:
        if head.startswith(b"PK"):
            if not zipfile.is_zipfile(path):
                raise _NotUsable(f"'{path.name}' is truncated (its archive index is missing).")
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        else:
            state = load_weights(path)  # old pickle format: cannot be memory-mapped
    except pickle.UnpicklingError as exc:
        raise _NotUsable(
            f"'{path.name}' was refused as unsafe: it contains code or objects other than weights."
        ) from exc
    except (UnsafeFileError, ModelFileError) as exc:
        raise _NotUsable(str(exc)) from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise _NotUsable(f"'{path.name}' is truncated or damaged ({type(exc).__name__}).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise _NotUsable(f"'{path.name}' does not hold a dictionary of weights.")
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
