"""What the launcher carries: uv, the lock files, the app's wheel, the icons; and the offline bundle.

Frozen, all of it sits in the PyInstaller folder under ``payload/``; run from a checkout, it is
found in the repository (the app wheel then comes from ``--app-wheel`` or ``packaging/build/app``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .paths import frozen_bundle_dir

REPO = Path(__file__).resolve().parents[3]


class PayloadError(Exception):
    pass


@dataclass(frozen=True)
class Payload:
    locks_dir: Path
    uv: Path
    app_wheel: Path
    icons_dir: Path


def _uv_from_package() -> Path | None:
    try:
        from uv import find_uv_bin  # the uv package, in a development checkout

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        return Path(found) if found else None


def find_payload(app_wheel: Path | None = None) -> Payload:
    bundle = frozen_bundle_dir()
    exe = "uv.exe" if sys.platform == "win32" else "uv"
    if bundle is not None:
        root = bundle / "payload"
        wheels = sorted((root / "app").glob("ipa_studio-*.whl"))
        if app_wheel is None and not wheels:
            raise PayloadError("This installer is damaged: the IPA Studio package is missing from it.")
        return Payload(root / "locks", root / exe, app_wheel or wheels[-1], root / "icons")
    uv = _uv_from_package()
    if uv is None:
        raise PayloadError("uv was not found (pip install -r packaging/requirements.txt).")
    if app_wheel is None:
        wheels = sorted((REPO / "packaging" / "build" / "app").glob("ipa_studio-*.whl"), key=os.path.getmtime)
        if not wheels:
            raise PayloadError(
                "No IPA Studio wheel: pass --app-wheel, or run packaging/linux/build.sh first."
            )
        app_wheel = wheels[-1]
    return Payload(REPO / "packaging" / "locks", uv, app_wheel, REPO / "resources" / "icons")


@dataclass(frozen=True)
class Wheelhouse:
    """An offline bundle: ``wheels/`` (every file of one lock), optionally ``python/`` (a mirror of
    uv's Python downloads) and ``wheelhouse.json`` saying which lock it was made for."""

    root: Path
    lock: str
    lock_sha256: str

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def python_mirror(self) -> Path | None:
        mirror = self.root / "python"
        return mirror if mirror.is_dir() and any(mirror.iterdir()) else None


def launcher_home() -> Path:
    """The folder the person sees the launcher in (beside it the offline bundle is looked for)."""
    if os.environ.get("IPA_LAUNCHER_HOME"):  # set by AppRun: the AppDir / unpacked .tar.gz folder
        return Path(os.environ["IPA_LAUNCHER_HOME"])
    if os.environ.get("APPIMAGE"):
        return Path(os.environ["APPIMAGE"]).resolve().parent
    if frozen_bundle_dir() is not None:
        exe = Path(sys.executable).resolve()
        for parent in exe.parents:  # macOS: IPA Studio Installer.app/Contents/MacOS/…
            if parent.suffix == ".app":
                return parent.parent
        return exe.parent.parent if exe.parent.name == "bin" else exe.parent
    return REPO / "packaging" / "build"


def find_wheelhouse(explicit: Path | None = None) -> Wheelhouse | None:
    """The offline bundle: the one asked for, else a ``wheelhouse`` folder beside the launcher."""
    # Absolute: uv runs in the install folder, where a relative path would point elsewhere.
    explicit = explicit.expanduser().absolute() if explicit else None
    candidates = (
        [explicit] if explicit else [launcher_home() / "wheelhouse", launcher_home().parent / "wheelhouse"]
    )
    for root in candidates:
        if root is None:
            continue
        info = root / "wheelhouse.json"
        if info.is_file():
            try:
                data = json.loads(info.read_text(encoding="utf-8"))
                return Wheelhouse(root, str(data["lock"]), str(data.get("lock_sha256", "")))
            except (OSError, ValueError, KeyError) as exc:
                raise PayloadError(f"The offline bundle in {root} is damaged ({info.name}: {exc}).") from exc
        if explicit:
            raise PayloadError(f"{root} is not an offline bundle (it has no wheelhouse.json).")
    return None
