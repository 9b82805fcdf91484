"""Is each needed model file there and of the right shape? Quick checks on disk, no weights loaded.

These run on the GUI thread when the setup view opens, so they only look at names and sizes. What a
file really is (an SDXL checkpoint, a LoRA saved under a model's name) takes the model library's
detection, which reads the weights' headers on the library thread; when its verdict is known it is
passed in as ``found`` and has the last word. The engine still checks the contents when it loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("base", "adapter", "image_encoder")
_BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# Plain weights, or the fp16 variant files most hub repos hold instead (the loader reads both).
_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
)
_ADAPTER_SUFFIXES = (".safetensors", ".bin", ".pth")
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str


_KIND_NAMES = {
    "base": "a base model",
    "adapter": "an IP-Adapter",
    "image_encoder": "an image encoder",
    "controlnet": "a ControlNet",
    "lora": "a LoRA",
    "vae": "a VAE",
    "embedding": "an embedding",
}


def check_model(kind: str, path: str, found: Any | None = None) -> Check:
    """Is ``path`` usable as ``kind``? ``found``: the library's detection of it (``LibraryEntry`` or
    ``Detection``), when known."""
    quick = _quick_check(kind, path)
    if not quick.ok or found is None:
        return quick
    if found.kind not in _KIND_NAMES or (found.kind == kind and not found.usable):
        return Check(False, f"Cannot be used: {found.reason}")
    if found.kind != kind:
        what = f"{_KIND_NAMES[found.kind]} ({found.architecture})"
        return Check(False, f"This is {what}, not {_KIND_NAMES[kind]}")
    return Check(True, f"Ready · {found.architecture}")


def _quick_check(kind: str, path: str) -> Check:
    if not path:
        return Check(False, "Not chosen yet")
    p = Path(path).expanduser()
    if not p.exists():
        return Check(False, f"Not found: nothing at {p}")
    if kind == "base":
        return _check_base(p)
    if kind == "adapter":
        return _check_adapter(p)
    if kind == "image_encoder":
        return _check_encoder(p)
    raise ValueError(f"unknown model kind {kind!r}")


def _check_base(p: Path) -> Check:
    if p.is_file():
        if p.suffix.lower() not in _CHECKPOINT_SUFFIXES:
            return Check(False, "Not a model file: expected a .safetensors or .ckpt checkpoint, or a folder")
        if p.stat().st_size == 0:
            return Check(False, "The file is empty (download incomplete?)")
        return Check(True, "Ready (single-file checkpoint)")
    missing = [part for part in _BASE_PARTS if not (p / part).is_dir()]
    if missing:
        return Check(False, f"Not a complete Stable Diffusion folder: {', '.join(missing)} missing")
    for part in ("unet", "vae"):
        if not any((p / part / w).is_file() for w in _WEIGHTS):
            return Check(False, f"The {part} folder has no weights file (download incomplete?)")
    return Check(True, "Ready")


def _check_adapter(p: Path) -> Check:
    if p.is_dir():
        return Check(False, "This is a folder; choose the adapter file itself (.safetensors or .bin)")
    if p.suffix.lower() not in _ADAPTER_SUFFIXES:
        return Check(False, "Not an adapter file: expected a .safetensors or .bin file")
    if p.stat().st_size == 0:
        return Check(False, "The file is empty (download incomplete?)")
    return Check(True, "Ready")


def _check_encoder(p: Path) -> Check:
    if p.is_file():
        # ComfyUI keeps the ViT-H encoder as one file (clip_vision/CLIP-ViT-H-14-…safetensors).
        if p.suffix.lower() != ".safetensors":
            return Check(False, "Not an image encoder: expected its folder or a .safetensors file")
        return Check(True, "Ready (single-file image encoder)")
    if not (p / "config.json").is_file():
        return Check(False, "No config.json in this folder: not an image encoder folder")
    if not any((p / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        return Check(False, "No weights file (model.safetensors) in this folder")
    return Check(True, "Ready")
