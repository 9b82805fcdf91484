"""Is each needed model file there and of the right shape? Quick checks on disk, no weights loaded.

These run on the GUI thread when the setup view opens, so they only look at names and sizes. The
engine still checks the contents when it loads them and says precisely what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KINDS = ("base", "adapter", "image_encoder")
_BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_ADAPTER_SUFFIXES = (".safetensors", ".bin")
_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str


def check_model(kind: str, path: str) -> Check:
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
        return Check(False, "This is a file; choose the image_encoder folder that contains it")
    if not (p / "config.json").is_file():
        return Check(False, "No config.json in this folder: not an image encoder folder")
    if not any((p / w).is_file() for w in ("model.safetensors", "pytorch_model.bin")):
        return Check(False, "No weights file (model.safetensors) in this folder")
    return Check(True, "Ready")
