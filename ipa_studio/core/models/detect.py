"""What is this model file? Decided from key names and shapes, before anything is built.

``detect(path)`` never raises for a bad file: it returns a ``Detection`` whose ``usable`` is False and
whose ``reason`` says why in the user's words (truncated, a web page, SDXL, a LoRA …), so a model list
can show every file with its verdict. ``.safetensors`` headers are parsed directly (the tensors are not
read); pickles go through the safe loader, memory-mapped when they are zip files.

Rules (DESIGN §4): ``model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight``
last dim 768 = SD1.x, 1024 = SD2.x; SDXL has ``conditioner.embedders`` and 2048-wide cross-attention
(at ``input_blocks.4.1``); ``input_blocks.0.0.weight`` in-channels 9 = inpainting. IP-Adapters: text
width from ``to_k_ip`` (768 SD1.5, 2048 SDXL), image-feature width from the projection's input.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any, Literal

from ipa_studio.core.errors import ModelFileError
from ipa_studio.core.models.safe_load import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX, describe_non_weights

DetectedKind = Literal[
    "base", "adapter", "image_encoder", "controlnet", "lora", "vae", "embedding", "unknown", "invalid"
]

SD15_TEXT_WIDTH = 768
_TEXT_WIDTH_FAMILY = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
# Width of the image feature an adapter reads → the encoder that makes it.
EMBED_WIDTH_ENCODER = {1024: "ViT-H/14", 1280: "ViT-bigG/14", 768: "ViT-L/14"}
HIDDEN_WIDTH_ENCODER = {1280: "ViT-H/14", 1664: "ViT-bigG/14", 1024: "ViT-L/14"}
# Image tokens of the full-face adapter = the encoder's patch grid + CLS (224 px / patch 14).
_GRID_TOKENS = {"ViT-H/14": 257, "ViT-bigG/14": 257, "ViT-L/14": 257}

_SD15_ONLY = "IPA Studio runs SD1.5 models"


@dataclass(frozen=True)
class Detection:
    """The verdict on one model file or folder."""

    path: Path
    kind: DetectedKind
    architecture: str
    """Short human label: "SD1.x", "SD1.x inpainting", "SDXL", "IP-Adapter plus for SD1.5", …"""
    usable: bool
    reason: str | None
    """Why it cannot be used (None when usable)."""
    format: str
    """"safetensors", "pickle", "diffusers folder", "transformers folder" or "unknown"."""
    size_bytes: int
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Kind-specific facts: in_channels, cross_attention_dim, variant, num_tokens, encoder_width,
    encoder ("ViT-H/14"), uses_hidden_states, projection_dim, hidden_size, …"""

    def summary(self) -> str:
        verdict = "usable" if self.usable else f"not usable: {self.reason}"
        return f"{self.architecture} ({self.kind}, {self.format}) — {verdict}"

    def require_usable(self) -> Detection:
        """Return self, or raise ``ModelFileError`` with the reason."""
        if not self.usable:
            raise ModelFileError(f"'{self.path.name}' cannot be used: {self.reason}")
        return self


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _make(
    path: Path, kind: DetectedKind, arch: str, reason: str | None, fmt: str, **details: Any
) -> Detection:
    return Detection(
        path=path,
        kind=kind,
        architecture=arch,
        usable=reason is None,
        reason=reason,
        format=fmt,
        size_bytes=_size(path) if path.exists() else 0,
        details=MappingProxyType(details),
    )


# ----------------------------------------------------------------------------- reading shapes


# Bytes per element of the dtypes the safetensors format defines and PyTorch can hold (the format's
# own list, in the ``safetensors`` Rust crate's ``Dtype``). The 4- and 6-bit ones are left out: no
# Stable Diffusion file uses them and IPA Studio cannot read them.
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
    "C64": 8, "F64": 8, "I64": 8, "U64": 8,
}  # fmt: skip


def read_safetensors_header(
    path: str | Path,
) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, str]]:
    """({name: (dtype, shape)}, metadata) from a ``.safetensors`` header, without reading tensors.

    Raises ``ModelFileError`` for a file that is not safetensors, has a damaged header, or is
    truncated (shorter than its header says). The header is held to the rules the safetensors reader
    enforces when it loads the file (so a file this accepts, the loader accepts too): a known dtype
    per tensor, byte ranges exactly as long as dtype × shape, laid end to end from the start of the
    data with no overlap and no gap, ending where the file ends; ``__metadata__`` a table of texts.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"'{path.name}' is truncated: it is only {size} bytes long.")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise ModelFileError(
                f"'{path.name}' is not a valid .safetensors file: its header claims {n} bytes "
                f"but the file is {size} bytes (truncated, or not safetensors at all)."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ModelFileError(
            f"'{path.name}' is not a valid .safetensors file (its header is damaged)."
        ) from None
    if not isinstance(header, dict):
        raise ModelFileError(f"'{path.name}' is not a valid .safetensors file (its header is not a table).")

    def damaged(why: str) -> ModelFileError:
        return ModelFileError(f"'{path.name}' has a damaged .safetensors header: {why}.")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise damaged("its __metadata__ is not a table of texts")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if not isinstance(info, dict):
            raise damaged(f"the entry for tensor '{name}' is not a table")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BYTES:
            raise damaged(f"tensor '{name}' has the unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise damaged(f"tensor '{name}' has an invalid shape {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise damaged(f"tensor '{name}' has invalid data offsets {offsets!r}")
        begin, end = offsets
        if end < begin:
            raise damaged(f"the data offsets of tensor '{name}' run backwards ({begin} to {end})")
        numel = math.prod(shape)
        if end - begin != numel * SAFETENSORS_DTYPE_BYTES[dtype]:
            raise damaged(
                f"tensor '{name}' is {dtype} {list(shape)} = {numel * SAFETENSORS_DTYPE_BYTES[dtype]:,} "
                f"bytes, but its data offsets span {end - begin:,}"
            )
        tensors[name] = (dtype, tuple(shape))
        ranges.append((begin, end, name))
    position, previous = 0, None
    for begin, end, name in sorted(ranges):
        if begin < position:
            raise damaged(f"the data of tensors '{previous}' and '{name}' overlap")
        if begin > position:
            raise damaged(f"there are {begin - position:,} unused bytes before tensor '{name}'")
        position, previous = end, name
    if 8 + n + position > size:
        raise ModelFileError(
            f"'{path.name}' is truncated: it is {size} bytes but its tensors need {8 + n + position}. "
            "The download was probably interrupted; download it again."
        )
    if 8 + n + position < size:
        raise damaged(f"{size - 8 - n - position:,} bytes follow its last tensor")
    return tensors, dict(metadata)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def flatten_state(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested checkpoint dict → flat {"a.b.c": tensor}; an SD ``.ckpt``'s "state_dict" is unwrapped."""
    if not prefix:
        while isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, Mapping):
            out |= flatten_state(value, f"{prefix}{key}.")
        elif hasattr(value, "shape"):
            out[f"{prefix}{key}"] = value
    return out


def shapes_of(path: str | Path) -> tuple[dict[str, tuple[int, ...]], str]:
    """({key: shape}, format) of a weight file; raises ``ModelFileError`` / ``UnsafeFileError``."""
    shapes, fmt, _ = weight_table(path)
    return shapes, fmt


_TORCH_DTYPE_NAMES = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
    "torch.int64": "I64",
    "torch.int32": "I32",
}


def weight_table(path: str | Path) -> tuple[dict[str, tuple[int, ...]], str, dict[str, str]]:
    """({key: shape}, format, {key: dtype}) of a weight file, dtypes as safetensors names ("F16").

    ``.safetensors``: from the header alone. Pickles: memory-mapped when they are zip files, read
    through the safe loader. Raises ``ModelFileError`` / ``UnsafeFileError``.
    """
    from ipa_studio.core.models.safe_load import _sniff, load_weights

    path = Path(path)
    impostor = describe_non_weights(_sniff(path))
    if impostor:
        raise ModelFileError(f"'{path.name}' cannot be used: {impostor}.")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        tensors, _ = read_safetensors_header(path)
        return (
            {k: shape for k, (_, shape) in tensors.items()},
            "safetensors",
            {k: d for k, (d, _) in tensors.items()},
        )
    if suffix in PICKLE_SUFFIXES:
        state = flatten_state(load_weights(path, mmap=True))
        dtypes = {k: _TORCH_DTYPE_NAMES.get(str(v.dtype), str(v.dtype)) for k, v in state.items()}
        return {k: tuple(v.shape) for k, v in state.items()}, "pickle", dtypes
    raise ModelFileError(
        f"'{path.name}' has an unknown file type '{suffix}'. "
        "Use .safetensors (preferred), .bin, .ckpt or .pth."
    )


# ----------------------------------------------------------------------------- classification


def detect(path: str | Path) -> Detection:
    """Classify a model file or folder. Never raises for a bad model; a missing path raises."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"'{path}' does not exist.")
    if path.is_dir():
        return _with_controlnet_verdict(_detect_folder(path))
    try:
        shapes, fmt, dtypes = weight_table(path)
    except ModelFileError as exc:
        message = str(exc)
        prefix = f"'{path.name}' cannot be used: "
        reason = message[len(prefix) :] if message.startswith(prefix) else message
        return _make(path, "invalid", "unreadable file", reason.rstrip("."), "unknown")
    return _with_controlnet_verdict(classify_shapes(path, shapes, fmt, dtypes))


def _with_controlnet_verdict(found: Detection) -> Detection:
    """ControlNets are judged by the ControlNet module (which formats the engine loads, which map
    kind from the name, whether the loader's conversion finds every weight); this module only
    recognises them."""
    if found.kind != "controlnet":
        return found
    try:
        from ipa_studio.core.preprocess.controlnets import detect_controlnet
    except ImportError:  # the ControlNet support is not in this build: keep our own verdict
        return found
    from ipa_studio.core.models.convert import controlnet_config

    info = detect_controlnet(
        found.path, base_cross_attention_dim=int(controlnet_config()["cross_attention_dim"])
    )
    reason = None if info.usable else info.reason.rstrip(".")
    kind = f", {info.kind}" if info.kind != "unknown" else ""
    return _make(
        found.path,
        "controlnet",
        f"{info.base} ControlNet{kind}",
        reason,
        found.format,
        **{
            **dict(found.details),
            "cross_attention_dim": info.cross_attention_dim,
            "map_kind": info.kind,
            "base": info.base,
        },
    )


def classify_shapes(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    fmt: str,
    dtypes: Mapping[str, str] | None = None,
    *,
    config: Mapping[str, Any] | None = None,
) -> Detection:
    """Classify a flat {key: shape} table (what ``weight_table`` returns).

    ``config`` (SD1.x files only): the unet / vae / text_encoder config dicts the loader will build,
    instead of the bundled SD1.5 ones; the file is then checked against those.
    """
    keys = list(shapes)
    if not keys:
        return _make(path, "invalid", "empty checkpoint", "it holds no weights at all", fmt)
    if any(k.startswith("image_proj.") for k in keys) and any(k.startswith("ip_adapter.") for k in keys):
        return _classify_adapter(path, shapes, fmt)
    # Before the SD check: a ControlNet 1.0 file (control_sd15_*.pth) is a whole SD1.5 checkpoint
    # with the ControlNet under control_model.; it is a ControlNet, never a base model.
    if any(k.startswith("control_model.") or "input_hint_block" in k for k in keys) or (
        "controlnet_cond_embedding.conv_in.weight" in shapes
    ):
        cross = _controlnet_cross(shapes)
        family = _TEXT_WIDTH_FAMILY.get(cross or 0, "unknown base")
        bundled = any(k.startswith("model.diffusion_model.") for k in keys)
        return _make(
            path,
            "controlnet",
            f"{family} ControlNet",
            None,
            fmt,
            cross_attention_dim=cross,
            layout=_controlnet_layout(keys),
            with_base_model=bundled,
        )
    if any(k.startswith("model.diffusion_model.") for k in keys) or any(
        k.startswith("conditioner.embedders.") for k in keys
    ):
        return _classify_ldm(path, shapes, fmt, dtypes, config)
    lora = lora_format(keys)
    if lora is not None:
        # The verdict is the LoRA module's, which reads what the engine applies (core/lora.py).
        from ipa_studio.core.lora import describe_shapes as describe_lora

        info = describe_lora(path, shapes)
        facts = _lora_facts(shapes, lora)
        facts["base"] = info.base or facts["base"]
        reason = info.reason
        sd15 = _bundled_text_width()
        if reason is None and facts["cross_attention_dim"] not in (None, sd15):
            width = facts["cross_attention_dim"]
            reason = f"it is a LoRA for a model with {width}-wide text; SD1.5 models have {sd15}"
        return _make(path, "lora", "LoRA", reason, fmt, **facts, layers=info.layers)
    if "vision_model.embeddings.patch_embedding.weight" in shapes:
        return _classify_image_encoder_file(path, shapes, fmt)
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in shapes or "visual.conv1.weight" in shapes:
        # open_clip's own names (ComfyUI converts them in comfy/clip_vision.py convert_to_transformers).
        return _make(
            path,
            "image_encoder",
            "CLIP image encoder (open_clip layout)",
            "an image encoder in open_clip's layout; IPA Studio reads the transformers layout "
            "(h94/IP-Adapter's models/image_encoder/model.safetensors, or ComfyUI's "
            "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)",
            fmt,
            encoder_format="open_clip",
        )
    if any(k.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for k in keys) or (
        "encoder.down_blocks.0.resnets.0.conv1.weight" in shapes and "decoder.conv_in.weight" in shapes
    ):
        return _make(
            path,
            "vae",
            "VAE",
            "a VAE on its own; IPA Studio uses the VAE inside the base model",
            fmt,
        )
    embedding = _embedding_verdict(path, shapes)
    if embedding is not None:
        reason, facts = embedding
        return _make(path, "embedding", "textual-inversion embedding", reason, fmt, **facts)
    if "conv_in.weight" in shapes and "time_embedding.linear_1.weight" in shapes:
        return _make(
            path,
            "base",
            "UNet only (diffusers layout)",
            "only a UNet; a base model needs the VAE and text encoder too (use the whole diffusers folder)",
            fmt,
        )
    sample = ", ".join(keys[:3])
    which = "its only weight does not" if len(keys) == 1 else f"none of its {len(keys)} weights"
    return _make(
        path,
        "unknown",
        "not a diffusion model",
        f"not a diffusion model: {which} belong to Stable Diffusion, an IP-Adapter, an image encoder, "
        f"a ControlNet, a LoRA or an embedding (first keys: {sample})",
        fmt,
    )


def _controlnet_cross(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    # A ControlNet 1.0 file also holds the base UNet; the ControlNet's own layers are what count.
    own = {k: v for k, v in shapes.items() if k.startswith("control_model.")} or shapes
    for k, shape in own.items():
        if k.endswith("attn2.to_k.weight"):
            return shape[-1]
    return None


def _controlnet_layout(keys: list[str]) -> str:
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "ControlNet 1.0 (with its SD1.5 base)"
    if any(k.startswith("control_model.") for k in keys):
        return "original (control_model.)"
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return "diffusers"
    return "original (bare)"


# ----------------------------------------------------------------------------- LoRAs, embeddings

_LYCORIS_PARTS = {"hada_w1_a": "LyCORIS LoHa", "lokr_w1": "LyCORIS LoKr", "lokr_w1_a": "LyCORIS LoKr"}


def lora_format(keys: list[str]) -> str | None:
    """The LoRA layout of these keys, or None when they are not a LoRA.

    kohya / A1111 (``lora_unet_…``, ``lora_te_…`` with ``.alpha``), LyCORIS (LoHa ``hada_w1_a``, LoKr
    ``lokr_w1``), diffusers (``unet.….lora.down`` / ``….lora_linear_layer.down``), the old attention-
    processor ``.bin`` (``….processor.to_q_lora.down``, no ``unet.`` prefix) and PEFT (``lora_A`` /
    ``lora_B``) — the layouts diffusers' ``lora_state_dict`` and ``utils/state_dict_utils.py`` tell apart.
    """
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        for part, name in _LYCORIS_PARTS.items():
            if any(f".{part}" in k for k in keys):
                return name
        return "kohya"
    if any(
        ".lora_A." in k or ".lora_B." in k or k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys
    ):
        return "PEFT"
    if any("_lora.down." in k or "_lora.up." in k for k in keys):
        prefixed = any(k.startswith(("unet.", "text_encoder.")) for k in keys)
        return "diffusers" if prefixed else "diffusers attention processors"
    if any(".lora.down." in k or ".lora.up." in k or "lora_linear_layer" in k for k in keys):
        return "diffusers"
    if any("lora_down" in k or "lora_up" in k for k in keys):
        return "kohya"
    return None


def _lora_facts(shapes: Mapping[str, tuple[int, ...]], fmt: str) -> dict[str, Any]:
    targets = set()
    ranks = set()
    cross = None
    for key, shape in shapes.items():
        low = key.lower()
        if low.startswith(("lora_te", "text_encoder.")) or "text_model" in low or "self_attn" in low:
            targets.add("text_encoder")
        else:
            targets.add("unet")
        down = "lora_down" in low or ".lora.down" in low or "_lora.down" in low or "lora_a" in low
        if down and len(shape) >= 2:
            ranks.add(shape[0])
            if "attn2" in low and "to_k" in low:
                cross = shape[1]
        if "lora_linear_layer.down" in low and len(shape) >= 2:
            ranks.add(shape[0])
    return {
        "lora_format": fmt,
        "targets": sorted(targets),
        "rank": max(ranks) if ranks else None,
        "cross_attention_dim": cross,
        "base": _TEXT_WIDTH_FAMILY.get(cross or 0),
    }


def _bundled_text_width() -> int:
    """The SD1.5 text width (768) from the bundled text-encoder config single files are loaded with."""
    from ipa_studio.core.models.loader import bundled_resources

    path = bundled_resources() / "sd15" / "text_encoder_config.json"
    return int(json.loads(path.read_text(encoding="utf-8"))["hidden_size"])


def _embedding_verdict(
    path: Path, shapes: Mapping[str, tuple[int, ...]]
) -> tuple[str | None, dict[str, Any]] | None:
    """(reason, facts) of a textual inversion, judged by ``core/embeddings.py`` (the reader the engine
    uses) for SD1.5's 768-wide text encoder; None when the weights are not one."""
    from ipa_studio.core.embeddings import describe_shapes, embedding_key

    info = describe_shapes(path, shapes, _bundled_text_width())
    if info is None:
        return None
    facts: dict[str, Any] = {
        "embedding_format": info.format,
        "vectors": info.vectors,
        "width": info.width,
        "base": info.base,
        "name": info.name,
    }
    if info.format == "diffusers learned_embeds":
        facts["token"] = embedding_key(shapes)[0]  # type: ignore[index]
    return info.reason, facts


# ----------------------------------------------------------------------------- image encoders


def _classify_image_encoder_file(path: Path, shapes: Mapping[str, tuple[int, ...]], fmt: str) -> Detection:
    """A lone image-encoder weight file (ComfyUI's ``clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K``):
    transformers ``CLIPVisionModelWithProjection`` names (``vision_model.*``, ``visual_projection``),
    loaded with the bundled ViT-H/14 config. ComfyUI ``comfy/clip_vision.py`` ``load_clipvision_from_sd``
    tells the encoders apart by depth: layer 47 = ViT-bigG, 30 = ViT-H, 22 = ViT-L."""
    hidden = shapes["vision_model.embeddings.patch_embedding.weight"][0]
    proj = shapes.get("visual_projection.weight", (None,))[0]
    name = HIDDEN_WIDTH_ENCODER.get(hidden, f"{hidden}-wide")
    details = dict(hidden_size=hidden, projection_dim=proj, encoder=HIDDEN_WIDTH_ENCODER.get(hidden))
    arch = f"CLIP {name} image encoder"
    from ipa_studio.core.models.convert import vision_config

    if hidden != vision_config()["hidden_size"]:
        reason = (
            f"a {name} image encoder on its own; IPA Studio reads single-file image encoders for "
            "ViT-H/14 only (the SD1.5 adapters' encoder); use its folder with config.json instead"
        )
        return _make(path, "image_encoder", arch, reason, fmt, **details)
    problems = image_encoder_problems(shapes)
    reason = f"it does not match the ViT-H/14 image encoder: {problems[0]}" if problems else None
    return _make(path, "image_encoder", arch, reason, fmt, **details)


def image_encoder_problems(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any] | None = None
) -> list[str]:
    """What stops the loader from filling the bundled ViT-H/14 encoder (or ``config``'s) from these
    weights."""
    from ipa_studio.core.models.convert import expected_vision_shapes

    want = expected_vision_shapes(config)
    got = {k: v for k, v in shapes.items() if not k.endswith("position_ids")}
    problems = []
    missing = [k for k in want if k not in got]
    if missing:
        problems.append(
            f"it lacks {len(missing)} of the encoder's {len(want)} weights (for example '{missing[0]}')"
        )
    wrong = next((k for k in want if k in got and tuple(got[k]) != want[k]), None)
    if wrong:
        problems.append(
            f"its weight '{wrong}' is {list(got[wrong])} where the encoder has {list(want[wrong])}"
        )
    extra = [k for k in got if k not in want]
    if extra:
        problems.append(f"it has {len(extra)} weights the encoder does not (for example '{extra[0]}')")
    return problems


# ----------------------------------------------------------------------------- SD checkpoints


def _classify_ldm(
    path: Path,
    shapes: Mapping[str, tuple[int, ...]],
    fmt: str,
    dtypes: Mapping[str, str] | None,
    config: Mapping[str, Any] | None,
) -> Detection:
    from ipa_studio.core.models.convert import TEXT_PREFIX, describe_extras, single_file_problems

    unet = "model.diffusion_model."
    conv_in = shapes.get(unet + "input_blocks.0.0.weight")
    in_ch = conv_in[1] if conv_in and len(conv_in) == 4 else None
    k2 = shapes.get(unet + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight")
    k4 = shapes.get(unet + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight")
    cross = k2[-1] if k2 else (k4[-1] if k4 else None)
    sdxl = (
        any(k.startswith("conditioner.embedders.") for k in shapes)
        or unet + "label_emb.0.0.weight" in shapes
        or (k2 is None and k4 is not None and k4[-1] == 2048)
    )
    details: dict[str, Any] = {"in_channels": in_ch, "cross_attention_dim": cross}
    inpaint = " inpainting" if in_ch == 9 else ""
    if sdxl:
        return _make(path, "base", f"SDXL{inpaint}", f"SDXL checkpoint: {_SD15_ONLY}", fmt, **details)
    if unet + "input_blocks.10.0.skip_connection.bias" in shapes:
        return _make(path, "base", "SD x4 upscaler", f"an SD upscaler: {_SD15_ONLY}", fmt, **details)
    if cross == 1024 or any(k.startswith("cond_stage_model.model.") for k in shapes):
        return _make(
            path,
            "base",
            f"SD2.x{inpaint}",
            f"SD2.x checkpoint: {_SD15_ONLY} (SD2 uses another text encoder and 1024-wide attention)",
            fmt,
            **details,
        )
    if cross is None or in_ch is None:
        return _make(path, "base", "incomplete SD checkpoint", "its UNet is incomplete", fmt, **details)
    if in_ch == 8:
        arch = "SD1.x InstructPix2Pix"
        return _make(path, "base", arch, "an InstructPix2Pix model (8 input channels) is not supported", fmt)
    if in_ch not in (4, 9):
        return _make(path, "base", "SD-like", f"its UNet takes {in_ch} input channels (expected 4 or 9)", fmt)
    arch = f"SD1.x{inpaint}" if cross == SD15_TEXT_WIDTH else f"SD1.x-shaped{inpaint} ({cross}-wide text)"
    details |= describe_extras(shapes, dtypes)
    missing = []
    if not any(k.startswith("first_stage_model.") for k in shapes):
        missing.append("VAE")
    if details["text_encoder_layout"] is None:
        missing.append("text encoder")
    if missing:
        reason = f"it has no {' and no '.join(missing)} weights (a UNet-only file); use a full checkpoint"
        if any(k.startswith(TEXT_PREFIX) for k in shapes) and "text encoder" in missing:
            reason = "its text encoder is in a layout IPA Studio does not know (not CLIP ViT-L/14 names)"
        return _make(path, "base", arch, reason, fmt, **details)
    if config is None:
        from ipa_studio.core.models.loader import single_file_configs

        config = single_file_configs()
        config["unet"] = {**config["unet"], "in_channels": in_ch}
        if cross != config["unet"]["cross_attention_dim"]:
            # Loadable only with a config folder of its own; the bundled configs are SD1.5's.
            reason = f"its text features are {cross} wide, not SD1.5's 768: not a standard SD1.5 checkpoint"
            return _make(path, "base", arch, reason, fmt, **details)
    # The check the loader relies on: the file's weights, converted exactly as the loader converts
    # them, are every weight of the models it builds, at their shapes.
    problems = single_file_problems(shapes, config["unet"], config["vae"], config["text_encoder"])
    if problems:
        reason = "it is damaged or not a standard SD1.5 checkpoint: " + "; ".join(problems[:2])
        return _make(path, "base", arch, reason, fmt, **details)
    return _make(path, "base", arch, None, fmt, **details)


def _classify_adapter(path: Path, shapes: Mapping[str, tuple[int, ...]], fmt: str) -> Detection:
    from ipa_studio.core.adapter.checkpoint import _detect

    image_proj = {
        k[len("image_proj.") :]: SimpleNamespace(shape=s)
        for k, s in shapes.items()
        if k.startswith("image_proj.")
    }
    empty = next((k for k, s in shapes.items() if math.prod(s) == 0), None)
    if empty is not None:
        reason = f"it is damaged: its tensor '{empty}' is empty (shape {list(shapes[empty])})"
        return _make(path, "adapter", "IP-Adapter (damaged)", reason, fmt)
    try:
        variant, cross, width, tokens = _detect(image_proj, path.name)
    except ModelFileError as exc:
        text = str(exc).removeprefix(f"'{path.name}' ").removeprefix("is ").rstrip(".")
        return _make(path, "adapter", "IP-Adapter (unsupported kind)", text, fmt)
    ip_keys = [k for k in shapes if k.startswith("ip_adapter.")]
    layer_key = re.compile(r"^ip_adapter\.(\d+)\.to_[kv]_ip\.weight$")
    odd = next((k for k in ip_keys if not layer_key.match(k) or len(shapes[k]) != 2), None)
    if odd is not None:
        reason = f"it is damaged: '{odd}' is not a 2-D image-attention weight of the official layout"
        return _make(path, "adapter", "IP-Adapter (damaged)", reason, fmt)
    layers = sorted(int(k.split(".")[1]) for k in ip_keys if k.endswith(".to_k_ip.weight"))
    ip_cross = {shapes[f"ip_adapter.{i}.to_k_ip.weight"][-1] for i in layers}
    family = _TEXT_WIDTH_FAMILY.get(cross)
    hidden = variant != "global"
    encoder = (HIDDEN_WIDTH_ENCODER if hidden else EMBED_WIDTH_ENCODER).get(width)
    if variant == "full":
        tokens = _GRID_TOKENS.get(encoder or "")
    names = {"global": "IP-Adapter", "plus": "IP-Adapter plus", "full": "IP-Adapter full-face"}
    arch = f"{names[variant]} for {'SD1.5' if family == 'SD1.x' else family or f'{cross}-wide text'}"
    details = dict(
        variant=variant,
        cross_attention_dim=cross,
        encoder_width=width,
        uses_hidden_states=hidden,
        encoder=encoder,
        num_tokens=tokens,
        num_layers=len(layers),
    )
    if ip_cross and ip_cross != {cross}:
        return _make(
            path, "adapter", arch, "it is damaged: projection and attention widths differ", fmt, **details
        )
    if family == "SDXL" or family == "SD2.x":
        return _make(path, "adapter", arch, f"an IP-Adapter for {family}: {_SD15_ONLY}", fmt, **details)
    if family == "SD1.x" and len(layers) != 16:
        reason = f"it has image attention for {len(layers)} layers; SD1.5 has 16"
        return _make(path, "adapter", arch, reason, fmt, **details)
    return _make(path, "adapter", arch, None, fmt, **details)


# ----------------------------------------------------------------------------- folders

_WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
VARIANTS = ("fp16", "bf16", "fp32")


def find_weights(folder: Path) -> tuple[Path, str | None] | None:
    """(weights file, variant) of one diffusers / transformers component folder, or None.

    The plain names first (``diffusion_pytorch_model.safetensors``, ``model.safetensors``, ``.bin``),
    then the variant files most hub repos hold instead (``diffusion_pytorch_model.fp16.safetensors``,
    loaded by diffusers with ``variant="fp16"``); a sharded index counts as the weights too.
    """
    for variant in (None, *VARIANTS):
        infix = f".{variant}" if variant else ""
        for suffix in _WEIGHT_SUFFIXES:
            for stem in _WEIGHT_STEMS:
                for name in (f"{stem}{infix}{suffix}", f"{stem}{infix}{suffix}.index.json"):
                    if (folder / name).is_file():
                        return folder / name, variant
    return None


def _has_weights(folder: Path) -> bool:
    return find_weights(folder) is not None


def _read_json(path: Path) -> dict | None:
    from ipa_studio.core.files import special_file_kind

    if special_file_kind(path) is not None:
        return None  # a FIFO named config.json would block the read forever
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _detect_folder(path: Path) -> Detection:
    unet_cfg = _read_json(path / "unet" / "config.json")
    if unet_cfg is not None or (path / "model_index.json").is_file():
        return _detect_diffusers_base(path, unet_cfg)
    cfg = _read_json(path / "config.json")
    if cfg is None:
        from ipa_studio.core.models.scan import recognise

        install = recognise(path).name
        if install != "folder":
            reason = (
                f"a {install} folder, not one model: 'ipa-studio models add-folder' lists the models "
                "in it where they are"
            )
            return _make(path, "unknown", f"{install} folder", reason, "unknown")
        return _make(
            path,
            "unknown",
            "folder",
            "not a model folder: no config.json, and no unet/ folder of a diffusers model",
            "unknown",
        )
    if cfg.get("model_type") in ("clip_vision_model", "clip") or "CLIPVisionModelWithProjection" in cfg.get(
        "architectures", ()
    ):
        vision = cfg.get("vision_config", cfg)
        hidden, proj = vision.get("hidden_size"), cfg.get("projection_dim", vision.get("projection_dim"))
        name = HIDDEN_WIDTH_ENCODER.get(hidden, f"{hidden}-wide")
        reason = None if _has_weights(path) else "its weights file (model.safetensors) is missing"
        return _make(
            path,
            "image_encoder",
            f"CLIP {name} image encoder",
            reason,
            "transformers folder",
            hidden_size=hidden,
            projection_dim=proj,
            encoder=HIDDEN_WIDTH_ENCODER.get(hidden),
        )
    if cfg.get("_class_name") == "ControlNetModel":
        cross = cfg.get("cross_attention_dim")
        family = _TEXT_WIDTH_FAMILY.get(cross, "SD1.x-shaped")
        reason = None
        if family in ("SD2.x", "SDXL"):
            reason = f"a ControlNet for {family}: {_SD15_ONLY}"
        elif not _has_weights(path):
            reason = "its weights file (diffusion_pytorch_model.safetensors) is missing"
        return _make(
            path, "controlnet", f"{family} ControlNet", reason, "diffusers folder", cross_attention_dim=cross
        )
    kind = cfg.get("_class_name") or cfg.get("model_type") or "unknown"
    return _make(
        path, "unknown", f"{kind} folder", f"a {kind} folder, not a model IPA Studio uses", "unknown"
    )


def _detect_diffusers_base(path: Path, unet_cfg: dict | None) -> Detection:
    missing = [
        p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (path / p).is_dir()
    ]
    missing += [
        f"{p} weights"
        for p in ("unet", "vae", "text_encoder")
        if (path / p).is_dir() and not _has_weights(path / p)
    ]
    unet_cfg = unet_cfg or {}
    cross = unet_cfg.get("cross_attention_dim")
    in_ch = unet_cfg.get("in_channels")
    details: dict[str, Any] = {"in_channels": in_ch, "cross_attention_dim": cross}
    variants = {
        p: found[1] for p in ("unet", "vae", "text_encoder") if (found := find_weights(path / p)) and found[1]
    }
    if variants:
        details["weights_variant"] = variants
    inpaint = " inpainting" if in_ch == 9 else ""
    if (
        unet_cfg.get("addition_embed_type") == "text_time"
        or cross == 2048
        or (path / "text_encoder_2").is_dir()
    ):
        return _make(
            path, "base", f"SDXL{inpaint}", f"SDXL model: {_SD15_ONLY}", "diffusers folder", **details
        )
    if cross == 1024:
        return _make(
            path, "base", f"SD2.x{inpaint}", f"SD2.x model: {_SD15_ONLY}", "diffusers folder", **details
        )
    arch = f"SD1.x{inpaint}" if cross == SD15_TEXT_WIDTH else f"SD1.x-shaped{inpaint} ({cross}-wide text)"
    reason = f"it is incomplete: {', '.join(missing)} missing" if missing else None
    if reason is None and in_ch not in (4, 9):
        reason = f"its UNet takes {in_ch} input channels (expected 4 or 9)"
    return _make(path, "base", arch, reason, "diffusers folder", **details)
