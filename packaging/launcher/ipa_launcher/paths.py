"""Where IPA Studio is installed, and what is wrong with a folder someone picked.

Each problem here is one that broke installs of desktop AI apps again and again: spaces and
non-ASCII characters (build tools and DLL loaders that mangle them), Windows' 260-character path
limit (PyTorch's deepest files are ~180 characters below the environment), folders that OneDrive or
iCloud sync (100 000 files uploaded, and files locked or evicted under a running app), and disks
that fill up half way.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath

from . import APP_NAME
from .state import MARKER

# The longest path below the install folder, measured on an installed environment
# (env/Lib/site-packages/PySide6/... and torch/include/...), with some room for newer releases.
DEEPEST_FILE = 180
WINDOWS_MAX_PATH = 260
GB = 1024**3


@dataclass(frozen=True)
class FolderProblem:
    severity: str  # "error": cannot install here; "warning": can, but may break later
    code: str
    message: str


def default_install_folder(
    system: str, env: Mapping[str, str] | None = None, home: Path | None = None
) -> Path:
    """The folder proposed first: per user (no administrator rights), with no space in its name."""
    env = os.environ if env is None else env
    home = home or Path.home()
    if system == "windows":
        base = env.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / "Programs" / "IPAStudio"
    if system == "macos":
        return home / "Library" / "IPAStudio"
    data = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(data) / "ipa-studio"


def nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path.anchor and Path(path.anchor) or Path.cwd()


def _windows_long_paths_enabled() -> bool:
    try:
        import winreg  # type: ignore[import-not-found]

        with winreg.OpenKey(  # type: ignore[attr-defined]
            winreg.HKEY_LOCAL_MACHINE,  # type: ignore[attr-defined]
            r"SYSTEM\CurrentControlSet\Control\FileSystem",
        ) as key:
            return winreg.QueryValueEx(key, "LongPathsEnabled")[0] == 1  # type: ignore[attr-defined]
    except OSError:
        return False


def _sync_folder(path: PurePath, system: str, env: Mapping[str, str]) -> str | None:
    """The name of the sync service that owns ``path``, or None."""
    text = str(path)
    folded = text.casefold()
    for var in ("OneDrive", "OneDriveConsumer", "OneDriveCommercial"):
        root = env.get(var)
        if not root:
            continue
        base = root.casefold().rstrip("\\/")
        sep = "\\" if system == "windows" else "/"
        if folded == base or folded.startswith(base + sep):
            return "OneDrive"
    parts = [p.casefold() for p in path.parts]
    if any(p == "onedrive" or p.startswith("onedrive -") or p.startswith("onedrive-") for p in parts):
        return "OneDrive"
    if system == "macos" and ("mobile documents" in parts or "cloudstorage" in parts):
        return "iCloud Drive or another cloud folder"
    if "dropbox" in parts:
        return "Dropbox"
    return None


def check_folder(
    path: Path | str,
    *,
    needed_bytes: int,
    system: str,
    env: Mapping[str, str] | None = None,
    disk_usage: Callable[[Path], shutil._ntuple_diskusage] = shutil.disk_usage,  # type: ignore[name-defined]
    long_paths_enabled: Callable[[], bool] | None = None,
    allow_existing_install: bool = True,
) -> list[FolderProblem]:
    """Everything wrong with installing into ``path``; an empty list means go ahead."""
    env = os.environ if env is None else env
    problems: list[FolderProblem] = []
    pure: PurePath = PureWindowsPath(str(path)) if system == "windows" else PurePath(str(path))
    text = str(pure)

    if not pure.is_absolute():
        return [
            FolderProblem("error", "relative", "Choose a full folder path (it starts at a drive or at /).")
        ]
    if " " in text:
        problems.append(
            FolderProblem(
                "warning",
                "spaces",
                "The path contains spaces. IPA Studio copes, but some add-ons and PyTorch's compiler "
                "tools do not; a path without spaces is safer.",
            )
        )
    if not text.isascii():
        severity = "warning"
        problems.append(
            FolderProblem(
                severity,
                "non_ascii",
                "The path contains letters outside plain ASCII (accents, other scripts). Some libraries "
                + ("cannot load their DLLs from such a path on Windows; " if system == "windows" else "")
                + "a path like C:\\IPAStudio or ~/ipa-studio avoids trouble.",
            )
        )
    if system == "windows":
        longest = len(text) + 1 + DEEPEST_FILE
        enabled = (long_paths_enabled or _windows_long_paths_enabled)()
        if longest >= WINDOWS_MAX_PATH and not enabled:
            problems.append(
                FolderProblem(
                    "error",
                    "long_path",
                    f"The path is too long: files inside would reach {longest} characters, and Windows "
                    f"refuses paths of {WINDOWS_MAX_PATH} or more unless long paths are turned on. "
                    "Choose a shorter folder, such as C:\\IPAStudio.",
                )
            )
    service = _sync_folder(pure, system, env)
    if service:
        problems.append(
            FolderProblem(
                "warning",
                "synced",
                f"This folder is synced by {service}. An installation holds tens of thousands of files "
                "that would be uploaded, and files the app needs can be locked or moved to the cloud "
                "while it runs. Choose a folder outside it.",
            )
        )

    real = Path(str(path))
    if real.exists() and not real.is_dir():
        problems.append(
            FolderProblem("error", "not_folder", "A file with this name exists; choose a folder.")
        )
        return problems
    if real.is_dir() and any(real.iterdir()):
        is_install = (real / MARKER).exists()
        if not is_install:
            problems.append(
                FolderProblem(
                    "error",
                    "not_empty",
                    "The folder is not empty and holds no IPA Studio installation. Choose an empty or a "
                    f"new folder (for example one named {APP_NAME.replace(' ', '')}).",
                )
            )
        elif not allow_existing_install:
            problems.append(FolderProblem("error", "installed", "IPA Studio is already installed here."))

    existing = nearest_existing(real)
    if not os.access(existing, os.W_OK):
        problems.append(
            FolderProblem(
                "error", "read_only", f"You cannot write to {existing}; choose a folder of your own."
            )
        )
    else:
        try:
            free = disk_usage(existing).free
        except OSError:
            free = None
        if free is not None:
            if free < needed_bytes:
                problems.append(
                    FolderProblem(
                        "error",
                        "no_space",
                        f"Not enough free space: {free / GB:.1f} GB free on that disk, about "
                        f"{needed_bytes / GB:.1f} GB needed. Free some space or choose another disk.",
                    )
                )
            elif free < needed_bytes * 1.5 + 5 * GB:
                problems.append(
                    FolderProblem(
                        "warning",
                        "little_space",
                        f"{free / GB:.1f} GB free, {needed_bytes / GB:.1f} GB needed: the install fits, but "
                        "models (2–5 GB each) and pictures will not have much room left.",
                    )
                )
    return problems


def is_inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def temp_root() -> Path:
    return Path(tempfile.gettempdir())


def frozen_bundle_dir() -> Path | None:
    """The launcher's own unpacked folder when it runs frozen (PyInstaller), else None."""
    meipass = getattr(sys, "_MEIPASS", None)
    return Path(meipass) if meipass else None
