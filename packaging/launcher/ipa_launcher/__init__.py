"""The IPA Studio installer / launcher.

A small PySide6 program (frozen with PyInstaller) that builds IPA Studio's Python environment on the
person's own machine: it picks the PyTorch build for the hardware, creates the environment with the
bundled ``uv`` from a lock file committed in ``packaging/locks``, verifies it in a child process, and
only then marks the install complete. It never imports the app (or torch) itself.

Everything but :mod:`ipa_launcher.gui` is free of Qt, so the logic is tested without a display.
"""

from __future__ import annotations

APP_NAME = "IPA Studio"
# Reverse-DNS id shared by the .desktop file, the AppStream metainfo, the icon name and the macOS
# bundle identifier, so desktops match the running window to its entry.
APP_ID = "io.github.ipa_studio.IPAStudio"
LAUNCHER_VERSION = "0.1.0"
