"""Reading weight files without ever running code from them.

``.safetensors`` is plain data. ``.bin`` / ``.ckpt`` / ``.pt`` are pickles; they are read with
PyTorch's weights-only unpickler, which only rebuilds tensors and plain containers. There is
deliberately no fallback to a full unpickle: a file that needs one is refused.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors

from ipa_studio.core.errors import ModelFileError, UnsafeFileError

PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth"}
SAFETENSORS_SUFFIX = ".safetensors"


def _sniff(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(512)
    except FileNotFoundError:
        raise ModelFileError(f"The file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise ModelFileError(f"'{path}' is a folder, not a weight file.") from None
    except OSError as exc:
        raise ModelFileError(f"The file '{path}' cannot be read: {exc.strerror or exc}.") from exc


def describe_non_weights(head: bytes) -> str | None:
    """Name the usual impostors: a web page or a git-lfs pointer saved in place of the weights."""
    text = head.lstrip().lower()
    if not head:
        return "it is empty (0 bytes); the download probably failed"
    if text.startswith(b"version https://git-lfs"):
        return "it is a git-lfs pointer, not the weights; download the real file (it is usually GBs)"
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text[:200]:
        return "it is a web page saved under a model's name, not the weights; download the file itself"
    if text.startswith(b"{") and b'"error"' in text:
        return "it is an error message from a server, not the weights"
    return None


def load_weights(path: str | Path) -> dict[str, torch.Tensor] | dict:
    """Load a checkpoint's (possibly nested) dict of tensors onto the CPU, safely.

    Raises ``ModelFileError`` naming what is wrong (missing, empty, web page, truncated …) and
    ``UnsafeFileError`` when a pickle holds anything but tensors and plain containers.
    """
    path = Path(path)
    head = _sniff(path)
    impostor = describe_non_weights(head)
    if impostor:
        raise ModelFileError(f"'{path.name}' cannot be used: {impostor}.")

    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        try:
            return _load_safetensors(str(path), device="cpu")
        except SafetensorError as exc:
            msg = str(exc)
            if "incomplete" in msg.lower() or "buffer" in msg.lower() or "too small" in msg.lower():
                raise ModelFileError(
                    f"'{path.name}' is truncated: the file ends before all its tensors. "
                    "The download was probably interrupted; download it again."
                ) from exc
            raise ModelFileError(f"'{path.name}' is not a valid .safetensors file ({msg}).") from exc
    if suffix in PICKLE_SUFFIXES:
        return _load_pickle(path, head)
    raise ModelFileError(
        f"'{path.name}' has an unknown file type '{suffix}'. Use .safetensors (preferred), .bin or .ckpt."
    )


def _load_pickle(path: Path, head: bytes) -> dict:
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"'{path.name}' is truncated or damaged (its archive index is missing). Download it again."
        )
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"'{path.name}' was refused as unsafe: it contains code or objects other than weights, "
            "and IPA Studio never runs code from model files. Use a .safetensors version of it."
        ) from exc
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(
            f"'{path.name}' is truncated or damaged and cannot be read ({type(exc).__name__}). "
            "Download it again."
        ) from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"'{path.name}' does not hold a dictionary of weights.")
    return state
