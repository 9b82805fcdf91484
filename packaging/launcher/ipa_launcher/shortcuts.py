"""How people start the installed app: a desktop entry (Linux), a Start-menu shortcut (Windows), an
app bundle in ~/Applications (macOS). Created only when an install is complete, removed first when
one starts, so no shortcut ever points at a half-finished installation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from . import APP_ID, APP_NAME, LAUNCHER_VERSION


def app_executable(folder: Path, system: str) -> Path:
    """The installed GUI entry point (a gui-script: no console window on Windows)."""
    if system == "windows":
        return folder / "env" / "Scripts" / "ipa-studio-gui.exe"
    return folder / "env" / "bin" / "ipa-studio-gui"


def start_script(folder: Path, system: str) -> Path:
    return folder / ("IPA Studio.cmd" if system == "windows" else "ipa-studio")


def desktop_quote(arg: str) -> str:
    """One argument of a desktop entry's Exec key (Desktop Entry Specification, "The Exec key")."""
    if arg and not any(c in arg for c in " \t\n\"'\\><~|&;$*?#()`="):
        return arg
    escaped = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    # Inside the key's value a backslash is itself escaped once more (string value rules).
    return '"' + escaped.replace("\\", "\\\\") + '"'


def desktop_entry(folder: Path, icon_name: str = APP_ID) -> str:
    exe = start_script(folder, "linux")
    return "\n".join(
        [
            "[Desktop Entry]",
            "Type=Application",
            f"Name={APP_NAME}",
            "GenericName=Image generator",
            "Comment=Make Stable Diffusion pictures from reference images (IP-Adapter), on your machine",
            f"Exec={desktop_quote(str(exe))} %F",
            f"Icon={icon_name}",
            "Terminal=false",
            "Categories=Graphics;2DGraphics;RasterGraphics;",
            "Keywords=stable diffusion;ip-adapter;image;ai;",
            "MimeType=image/png;image/jpeg;image/webp;",
            f"StartupWMClass={APP_NAME}",
            "StartupNotify=true",
            f"X-IPA-Studio-Install={folder}",
            "",
        ]
    )


def _xdg_data_home(env: Mapping[str, str], home: Path) -> Path:
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")


def write_start_script(folder: Path, system: str) -> Path:
    """A script in the install folder that starts the app, and refuses to when the install is not
    complete (say, a Repair was interrupted after the shortcut was made by an older version)."""
    script = start_script(folder, system)
    exe = app_executable(folder, system)
    if system == "windows":
        script.write_text(
            "@echo off\r\n"
            f'findstr /c:"\\"state\\": \\"complete\\"" "%~dp0ipa-studio-install.json" >nul 2>&1 || ('
            f"echo {APP_NAME} is not completely installed: run the installer and choose Repair. "
            "& pause & exit /b 1)\r\n"
            f'start "" "{exe}" %*\r\n',
            encoding="utf-8",
        )
        return script
    script.write_text(
        "#!/bin/sh\n"
        f"# Starts {APP_NAME} installed in this folder (written by the installer).\n"
        'here="$(cd "$(dirname "$0")" && pwd)"\n'
        'if ! grep -q \'"state": "complete"\' "$here/ipa-studio-install.json" 2>/dev/null; then\n'
        f'    echo "{APP_NAME} is not completely installed in $here:" \\\n'
        '         "run the installer and choose Repair." >&2\n'
        "    exit 1\n"
        "fi\n"
        'exec "$here/env/bin/ipa-studio-gui" "$@"\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


def create(
    folder: Path,
    system: str,
    icons_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> list[Path]:
    """Make the shortcuts; returns every file created (the uninstaller removes exactly these)."""
    env = os.environ if env is None else env
    home = home or Path(env.get("HOME") or Path.home())
    made: list[Path] = [write_start_script(folder, system)]
    if system == "linux":
        data = _xdg_data_home(env, home)
        for size in (48, 128, 256, 512):
            source = icons_dir / f"ipa-studio-{size}.png"
            if source.is_file():
                target = data / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                made.append(target)
        entry = data / "applications" / f"{APP_ID}.desktop"
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_text(desktop_entry(folder), encoding="utf-8")
        made.append(entry)
        if shutil.which("update-desktop-database"):
            subprocess.run(["update-desktop-database", str(entry.parent)], capture_output=True)
    elif system == "windows":
        icon = folder / "ipa-studio.ico"
        shutil.copyfile(icons_dir / "ipa-studio.ico", icon)
        made.append(icon)
        programs = Path(env.get("APPDATA", str(home / "AppData" / "Roaming")))
        link = programs / "Microsoft" / "Windows" / "Start Menu" / "Programs" / f"{APP_NAME}.lnk"
        link.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(windows_shortcut_command(link, app_executable(folder, system), icon), check=True)
        made.append(link)
    elif system == "macos":
        made.append(write_app_bundle(home / "Applications" / f"{APP_NAME}.app", folder, icons_dir))
    return made


def windows_shortcut_command(link: Path, target: Path, icon: Path) -> list[str]:
    """PowerShell making a .lnk through the shell's COM object (no extra Python package needed)."""

    def ps(text: str | Path) -> str:
        return "'" + str(text).replace("'", "''") + "'"

    script = (
        f"$s = (New-Object -ComObject WScript.Shell).CreateShortcut({ps(link)}); "
        f"$s.TargetPath = {ps(target)}; $s.IconLocation = {ps(icon)}; "
        f"$s.WorkingDirectory = {ps(target.parent)}; $s.Save()"
    )
    return ["powershell", "-NoProfile", "-NonInteractive", "-Command", script]


def info_plist(executable: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>CFBundleName</key><string>{APP_NAME}</string>
  <key>CFBundleDisplayName</key><string>{APP_NAME}</string>
  <key>CFBundleIdentifier</key><string>{APP_ID}</string>
  <key>CFBundleVersion</key><string>{LAUNCHER_VERSION}</string>
  <key>CFBundleShortVersionString</key><string>{LAUNCHER_VERSION}</string>
  <key>CFBundlePackageType</key><string>APPL</string>
  <key>CFBundleExecutable</key><string>{executable}</string>
  <key>CFBundleIconFile</key><string>ipa-studio.icns</string>
  <key>LSMinimumSystemVersion</key><string>14.0</string>
  <key>NSHighResolutionCapable</key><true/>
</dict>
</plist>
"""


def write_app_bundle(bundle: Path, folder: Path, icons_dir: Path) -> Path:
    """~/Applications/IPA Studio.app: a bundle whose executable starts the installed app."""
    macos = bundle / "Contents" / "MacOS"
    resources = bundle / "Contents" / "Resources"
    macos.mkdir(parents=True, exist_ok=True)
    resources.mkdir(parents=True, exist_ok=True)
    (bundle / "Contents" / "Info.plist").write_text(info_plist("ipa-studio"), encoding="utf-8")
    launcher = macos / "ipa-studio"
    launcher.write_text(f'#!/bin/sh\nexec "{start_script(folder, "macos")}" "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    if (icons_dir / "ipa-studio.icns").is_file():
        shutil.copyfile(icons_dir / "ipa-studio.icns", resources / "ipa-studio.icns")
    return bundle


def remove(paths: list[str] | list[Path]) -> None:
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and path.suffix == ".app":
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
