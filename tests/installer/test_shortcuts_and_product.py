"""Shortcut files as each desktop reads them, and what ships (no test or demo code in the package)."""

from __future__ import annotations

import ast
import configparser
import plistlib
from pathlib import Path

from ipa_launcher.shortcuts import desktop_entry, desktop_quote, windows_shortcut_command, write_app_bundle

ROOT = Path(__file__).resolve().parents[2]
ICONS = ROOT / "resources" / "icons"


def test_desktop_entry_parses_and_quotes_a_path_with_spaces() -> None:
    text = desktop_entry(Path("/home/kim/My Apps/IPAStudio"))
    parser = configparser.RawConfigParser(strict=True)
    parser.optionxform = str  # keys are case-sensitive in desktop files
    parser.read_string(text)
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Terminal"] == "false"
    assert entry["Exec"] == '"/home/kim/My Apps/IPAStudio/ipa-studio" %F'
    assert entry["Icon"] == "io.github.ipa_studio.IPAStudio"
    assert desktop_quote("/opt/ipa") == "/opt/ipa"
    # Specification: inside quotes, ", `, $ and \\ are escaped, and the backslash once more.
    assert desktop_quote('/a "b"$') == '"/a \\\\"b\\\\"\\\\$"'


def test_macos_bundle_has_a_valid_info_plist_and_an_executable(tmp_path: Path) -> None:
    bundle = write_app_bundle(tmp_path / "Applications" / "IPA Studio.app", tmp_path / "IPAStudio", ICONS)
    info = plistlib.loads((bundle / "Contents" / "Info.plist").read_bytes())
    assert info["CFBundleIdentifier"] == "io.github.ipa_studio.IPAStudio"
    executable = bundle / "Contents" / "MacOS" / info["CFBundleExecutable"]
    assert executable.stat().st_mode & 0o111
    assert str(tmp_path / "IPAStudio" / "ipa-studio") in executable.read_text()
    assert (bundle / "Contents" / "Resources" / info["CFBundleIconFile"]).is_file()


def test_windows_shortcut_command_quotes_for_powershell() -> None:
    link = Path("C:/Users/O'Neil/Start Menu/IPA Studio.lnk")
    target = Path("C:/IPAStudio/env/Scripts/ipa-studio-gui.exe")
    command = windows_shortcut_command(link, target, Path("C:/IPAStudio/ipa-studio.ico"))
    assert command[:4] == ["powershell", "-NoProfile", "-NonInteractive", "-Command"]
    assert "'C:/Users/O''Neil/Start Menu/IPA Studio.lnk'" in command[4].replace("\\", "/")


def test_icons_exist_in_every_size_the_packaging_uses() -> None:
    for size in (16, 32, 48, 128, 256, 512, 1024):
        assert (ICONS / f"ipa-studio-{size}.png").is_file()
    assert (ICONS / "ipa-studio.ico").is_file() and (ICONS / "ipa-studio.icns").is_file()
    assert (ROOT / "ipa_studio" / "resources" / "icons" / "ipa-studio.png").is_file()  # the window's


def test_the_package_holds_and_imports_no_demo_or_test_code() -> None:
    package = ROOT / "ipa_studio"
    names = {p.name for p in package.rglob("*.py")}
    assert not names & {"screenshot.py", "control_demo.py", "demo.py", "conftest.py"}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            for module in modules:
                assert not module.startswith(("tests", "docs", "shots", "ipa_launcher")), f"{path}: {module}"
