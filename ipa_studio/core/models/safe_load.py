"""Reading weight files without ever running code from them.

``.safetensors`` is plain data. ``.bin`` / ``.ckpt`` / ``.pt`` are pickles; they are read with
PyTorch's weights-only unpickler, which only rebuilds tensors and plain containers. There is
deliberately no fallback to a full unpickle: a file that needs one is refused. Before PyTorch sees
a pickle, ``pickle_scan`` bounds what unpickling and walking it can cost (nesting, sharing, storage
sizes), so a small hostile file cannot hang, crash or exhaust the process either.

Ordinary SD ``.ckpt`` files were saved by PyTorch Lightning and name a few classes besides tensors
(the ``ModelCheckpoint`` callback class as a dict key, numpy scalars for scores). Those names are
allowed during our loads only, mapped to inert stand-ins (``_TrainingLeftover``) or to numpy's
scalar constructors, never to the real classes, so nothing from the file's training code runs.
"""

from __future__ import annotations

import pickle
import threading
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors

from ipa_studio.core.errors import ModelFileError, UnsafeFileError
from ipa_studio.core.files import special_file_kind
from ipa_studio.core.models.pickle_scan import check_pickle_file

PICKLE_SUFFIXES = {".bin", ".ckpt", ".pt", ".pth"}
SAFETENSORS_SUFFIX = ".safetensors"


def _sniff(path: Path) -> bytes:
    special = special_file_kind(path)
    if special is not None:
        # Opening a FIFO waits for a writer forever and a device never ends: refuse before opening.
        raise ModelFileError(f"'{path}' is {special}, not a weight file.")
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


class _TrainingLeftover:
    """Inert stand-in for the training-framework objects ordinary checkpoints carry.

    The unpickler may create it (called with any arguments, or through ``__new__``) and hand it a
    state; it keeps the state and has no behaviour.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> _TrainingLeftover:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return "<training leftover, ignored>"


class _ParameterTable(dict):
    """Inert stand-in for ``torch.nn.ParameterDict``, which old textual-inversion ``.pt`` files pickle
    whole (A1111 reads ``string_to_param._parameters`` from them). Only the tensors are kept, as a
    plain mapping; the module's other state (hooks, flags) is dropped and nothing of torch.nn runs."""

    def __setstate__(self, state: Any) -> None:
        params = state.get("_parameters") if isinstance(state, dict) else None
        if isinstance(params, dict):
            self.update(params)


# Globals that PyTorch Lightning / CompVis-era checkpoints reference next to their weights.
_LEFTOVER_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "argparse.Namespace",
)


# torch keeps allowed globals in one process-wide set and the scoped context removes its entries on
# exit, so two overlapping scoped loads (engine worker + preprocessing thread) could strip each
# other's allowance mid-load; pickle loads take turns instead.
_GLOBALS_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def checkpoint_globals() -> tuple[Any, ...]:
    """The extra (object, "module.name") pairs allowed while reading a pickle checkpoint."""
    import numpy as np

    pairs: list[Any] = [(_TrainingLeftover, name) for name in _LEFTOVER_NAMES]
    pairs.append((_ParameterTable, "torch.nn.modules.container.ParameterDict"))
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    # numpy scalars pickle as scalar(dtype, raw bytes): plain data, no code. numpy 1 and 2 name the
    # function differently; files written by either must load.
    pairs += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar")]
    pairs.append((np.dtype, "numpy.dtype"))
    for name in dir(getattr(np, "dtypes", None)):
        cls = getattr(np.dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype) and cls is not np.dtypes.ObjectDType:
            pairs.append((cls, f"numpy.dtypes.{name}"))
    return tuple(pairs)


def load_weights(path: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor] | dict:
    """Load a checkpoint's (possibly nested) dict of tensors onto the CPU, safely.

    Raises ``ModelFileError`` naming what is wrong (missing, empty, web page, truncated …) and
    ``UnsafeFileError`` when a pickle holds anything but tensors and plain containers.
    ``mmap``: map a zip-format pickle instead of reading it (cheap look at keys and shapes).
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
        return _load_pickle(path, head, mmap=mmap)
    raise ModelFileError(
        f"'{path.name}' has an unknown file type '{suffix}'. Use .safetensors (preferred), .bin or .ckpt."
    )


def unsafe_pickle_error(path: Path) -> UnsafeFileError:
    """The refusal of a pickle that holds more than weights, in our words.

    PyTorch's own message suggests retrying with ``weights_only=False``, which would run the file's
    code; it must never reach the user.
    """
    return UnsafeFileError(
        f"'{path.name}' was refused as unsafe: it contains code or objects other than weights, "
        "and IPA Studio never runs code from model files. Use a .safetensors version of it."
    )


def check_pickles_in(folder: Path) -> None:
    """Check every pickle weight file in a model folder (and its sub-folders) before a library such
    as transformers or diffusers unpickles it: the same refusals as ``load_weights``."""
    for file in sorted(folder.rglob("*")):
        if file.suffix.lower() in PICKLE_SUFFIXES and not file.name.startswith(".") and file.is_file():
            head = _sniff(file)
            impostor = describe_non_weights(head)
            if impostor:
                raise ModelFileError(f"'{file.name}' cannot be used: {impostor}.")
            _check_pickle(file, head)


def _check_pickle(path: Path, head: bytes) -> None:
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"'{path.name}' is truncated or damaged (its archive index is missing). Download it again."
        )
    # Nesting, sharing and storage sizes are bounded before PyTorch builds anything from the file.
    check_pickle_file(path)


def _load_pickle(path: Path, head: bytes, *, mmap: bool = False) -> dict:
    is_zip = head.startswith(b"PK")
    _check_pickle(path, head)
    try:
        with _GLOBALS_LOCK, torch.serialization.safe_globals(list(checkpoint_globals())):
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as exc:
        raise unsafe_pickle_error(path) from exc
    except MemoryError:
        raise
    except Exception as exc:
        # The file is untrusted input: whatever PyTorch raises while reading it (RuntimeError for a
        # bad record, TypeError or AttributeError for a wrongly built object …) means "damaged".
        raise ModelFileError(
            f"'{path.name}' is truncated or damaged and cannot be read ({type(exc).__name__}). "
            "Download it again."
        ) from exc
    if not isinstance(state, dict):
        raise ModelFileError(f"'{path.name}' does not hold a dictionary of weights.")
    return state
