"""The app's own settings: model paths, folders, last used values and the window layout.

Stored as one JSON file in the platform's config folder (``platformdirs``), with a version number.
Two promises:

* **Writing is atomic**: a temporary file in the same folder is flushed and moved over the old one
  with ``os.replace``, so a crash or a full disk leaves the previous settings, never half a file.
* **Reading never fails**: a missing, unreadable or damaged file, a value of the wrong type or an
  unknown key falls back to the default for that value. Losing a remembered slider position is
  better than an app that will not start.

Qt-free: the GUI keeps Qt-specific blobs (window geometry) as base64 text here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from ipa_studio.core.errors import IPAStudioError

__all__ = [
    "APP_NAME",
    "SETTINGS_VERSION",
    "LastValues",
    "ModelPaths",
    "ReferenceValue",
    "Settings",
    "WindowLayout",
    "default_models_dir",
    "default_outputs_dir",
    "default_settings_path",
    "portable_models_dir",
    "load_settings",
    "save_settings",
]

APP_NAME = "IPA Studio"
SETTINGS_VERSION = 1
"""Bump when a stored value changes meaning; a new field with a default needs no bump."""

log = logging.getLogger(__name__)


@dataclass
class ModelPaths:
    """The three files a generation needs. Empty text = not chosen yet."""

    base: str = ""
    adapter: str = ""
    image_encoder: str = ""


@dataclass
class ReferenceValue:
    """A reference image of the panel: its file, its weight and its image-prompt controls."""

    path: str = ""
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    fit: str = "centre"
    """What the encoder sees: "centre", "crop", "pad" or "tile"."""
    crop: str = ""
    """The crop square as "left,top,side" in the picture's pixels ("" = none chosen yet)."""
    mask: str = ""
    """Its region mask file ("" = everywhere)."""


@dataclass
class LastValues:
    """What the panels showed when the app was last closed, so people continue where they stopped."""

    prompt: str = ""
    negative_prompt: str = ""
    scale: float = 0.6
    steps: int = 30
    guidance: float = 7.5
    seed: int = 0
    seed_locked: bool = False
    width: int = 512
    height: int = 512
    scheduler: str = "ddim"
    num_images: int = 1
    references: list[ReferenceValue] = field(default_factory=list, metadata={"items": ReferenceValue})
    block_map: str = ""
    """The balance panel's block map as ``prefix=weight,…`` (the command line's form); "" = every layer."""
    block_preset: str = ""
    """The preset the map came from ("" when edited)."""
    hires_on: bool = False
    hires_scale: float = 1.5
    hires_strength: float = 0.5
    hires_steps: int = 0
    hires_upscaler: str = "lanczos"


@dataclass
class WindowLayout:
    """Opaque layout blobs from the GUI toolkit (base64), keyed by what they belong to."""

    geometry: str = ""
    state: str = ""
    splitters: dict[str, str] = field(default_factory=dict)


@dataclass
class Settings:
    version: int = SETTINGS_VERSION
    models: ModelPaths = field(default_factory=ModelPaths)
    models_dir: str = ""
    """Where downloaded models go; empty = :func:`default_models_dir`."""
    outputs_dir: str = ""
    """Where generated images are saved; empty = :func:`default_outputs_dir`."""
    annotators_dir: str = ""
    """Where the pose/depth preprocessor weights are; empty = ``annotators`` in the models folder."""
    device: str = "auto"
    library_dir: str = ""
    """The reference library (saved references and their encoder features); empty = the user data
    folder's ``references``, the command line's default too."""
    clip_model: str = ""
    """The CLIP model folder the λ sweep scores with (CLIP-I / CLIP-T); empty = not chosen yet."""
    precision: str = "auto"
    """"auto" (fp16 on GPUs, bf16 on CPUs with native bf16, else fp32), "fp32", "bf16" or "fp16"."""
    dialog_folders: dict[str, str] = field(default_factory=dict)
    """The folder each kind of file dialog showed last ("reference", "mask", "model file" …)."""
    last: LastValues = field(default_factory=LastValues)
    window: WindowLayout = field(default_factory=WindowLayout)

    @property
    def outputs_path(self) -> Path:
        return Path(self.outputs_dir).expanduser() if self.outputs_dir else default_outputs_dir()

    @property
    def library_path(self) -> Path:
        if self.library_dir:
            return Path(self.library_dir).expanduser()
        from ipa_studio.core.references import default_store_dir

        return default_store_dir()

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).expanduser() if self.models_dir else default_models_dir()


def default_settings_path() -> Path:
    return platformdirs.user_config_path(APP_NAME, appauthor=False) / "settings.json"


def default_outputs_dir() -> Path:
    # The pictures folder, because that is where people look for images they made.
    return platformdirs.user_pictures_path() / APP_NAME


def default_models_dir() -> Path:
    """The models folder of a checkout or portable install when the app runs from one, else the
    platform's data folder (``~/.local/share/IPA Studio/models`` …)."""
    return portable_models_dir() or platformdirs.user_data_path(APP_NAME, appauthor=False) / "models"


PORTABLE_MARKER = ".ipa-studio-models"
"""The file that marks the ``models/`` folder of a checkout or portable install (the same marker
``core/models/scan.py`` reads to know the folder's layout)."""


def program_models_dirs() -> list[Path]:
    """Where a program-relative ``models/`` folder may be: beside a frozen build's executable, and
    at the top of the source tree this package runs from."""
    folders = [Path(__file__).resolve().parents[2] / "models"]
    if getattr(sys, "frozen", False):
        folders.insert(0, Path(sys.executable).resolve().parent / "models")
    return folders


def portable_models_dir(candidates: list[Path] | None = None) -> Path | None:
    """The ``models/`` folder next to the program, when there is one the user can write to: the
    repository's top-level ``models/`` in a checkout, or the one beside the executable of a portable
    (frozen) build. None for an ordinary install."""
    for folder in program_models_dirs() if candidates is None else candidates:
        if (folder / PORTABLE_MARKER).is_file() and os.access(folder, os.W_OK):
            return folder
    return None


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """The settings stored at ``path`` (default: :func:`default_settings_path`), or defaults.

    Never raises for a bad file: each value that is missing or of the wrong type gets its default,
    and the problem is logged.
    """
    path = Path(path) if path is not None else default_settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("settings file %s could not be read (%s); using defaults", path, exc)
        return Settings()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        log.warning("settings file %s is damaged (%s); using defaults", path, exc)
        return Settings()
    if not isinstance(data, dict):
        log.warning("settings file %s holds no settings object; using defaults", path)
        return Settings()
    settings = _from_dict(Settings, data)
    # Whatever version wrote it, the object in memory now has this version's shape.
    settings.version = SETTINGS_VERSION
    return settings


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``data``, keeping only values whose type matches the default."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if "items" in f.metadata:
            kwargs[f.name] = _checked_list(cls, f.name, f.metadata["items"], data[f.name])
            continue
        value = _checked(default, data[f.name])
        if value is _WRONG:
            log.warning(
                "setting %s.%s has the wrong type (%r); using the default", cls.__name__, f.name, data[f.name]
            )
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


_WRONG = object()


def _checked_list(owner: type, name: str, item_cls: type, value: Any) -> list[Any]:
    """A list of ``item_cls`` dataclasses; entries that are not objects are dropped (and logged)."""
    if not isinstance(value, list):
        log.warning("setting %s.%s is not a list (%r); using the default", owner.__name__, name, value)
        return []
    items = [_from_dict(item_cls, v) for v in value if isinstance(v, dict)]
    if len(items) != len(value):
        dropped = len(value) - len(items)
        log.warning("setting %s.%s: %d entries were not objects", owner.__name__, name, dropped)
    return items


def _checked(default: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(default):
        return _from_dict(type(default), value) if isinstance(value, dict) else _WRONG
    if isinstance(default, bool):
        return value if isinstance(value, bool) else _WRONG
    if isinstance(default, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        return float(value) if ok else _WRONG
    if isinstance(default, str):
        return value if isinstance(value, str) else _WRONG
    if isinstance(default, dict):
        ok = isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        return dict(value) if ok else _WRONG
    return _WRONG


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary file moved over it (``os.replace``):
    readers see the old file or the new one, never half of one. Raises ``OSError``."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def save_settings(settings: Settings, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``settings`` as JSON to ``path`` atomically; return the path.

    Raises :class:`IPAStudioError` when the folder cannot be written; the old file is then intact.
    """
    path = Path(path) if path is not None else default_settings_path()
    text = json.dumps(dataclasses.asdict(settings), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        write_text_atomic(path, text)
    except OSError as exc:
        raise IPAStudioError(
            f"The settings could not be saved to {path}: {exc.strerror or exc}. "
            "They will be lost when IPA Studio closes."
        ) from exc
    return path
