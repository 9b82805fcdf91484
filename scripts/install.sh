#!/usr/bin/env bash
# Install everything IPA Studio needs on Debian/Ubuntu (system libraries for Qt, then Python packages).
# Safe to run again: each step is skipped when what it would install is already there.
#
#   bash scripts/install.sh          # to run the app and the CLI
#   bash scripts/install.sh --dev    # also pytest, pytest-qt and ruff
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEV=0
for arg in "$@"; do
    case "$arg" in
        --dev) DEV=1 ;;
        -h | --help)
            sed -n '2,7p' "$0"
            exit 0
            ;;
        *)
            echo "install.sh: unknown option '$arg' (only --dev is understood)" >&2
            exit 2
            ;;
    esac
done

PYTHON="${PYTHON:-python3}"

# --- 1. System libraries -----------------------------------------------------------------------
# PySide6's wheels bundle Qt itself but not the X11/GL/font libraries it links against. This list is
# what `ldd` on PySide6's Qt libraries and on the platform plugins libqoffscreen.so (tests) and
# libqxcb.so (a real or Xvfb screen) resolves outside the wheel, by Debian package. The two that a
# stock Debian 12 lacks most often are libxcb-icccm4 and libxcb-keysyms1: without them libqxcb.so
# does not load and Qt only says "could not load the Qt platform plugin xcb".
APT_PACKAGES=(
    # GL / EGL, needed even offscreen because QtGui links them
    libegl1 libgl1 libglx0 libglvnd0
    # fonts: Qt draws no text at all without fontconfig and at least one font
    libfontconfig1 libfreetype6 fonts-dejavu-core
    # keyboard maps, D-Bus, GLib event loop integration
    libxkbcommon0 libxkbcommon-x11-0 libdbus-1-3 libglib2.0-0
    # X11 / xcb, for the xcb platform plugin (desktop and Xvfb)
    libx11-6 libx11-xcb1 libxcb1 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
    libxcb-randr0 libxcb-render0 libxcb-render-util0 libxcb-shape0 libxcb-shm0 libxcb-sync1
    libxcb-util1 libxcb-xfixes0 libxcb-xkb1
    # a virtual screen for GUI tests that need a real window system (xvfb-run needs xauth)
    xvfb xauth
)

install_system_packages() {
    if ! command -v dpkg-query > /dev/null || ! command -v apt-get > /dev/null; then
        echo "install.sh: no apt-get here; skipping system libraries (install Qt's X11/GL libraries yourself)."
        return 0
    fi
    local missing=()
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        # dpkg-query prints "install ok installed" only for a fully installed package.
        if ! dpkg-query -W -f='${Status}' "$pkg" 2> /dev/null | grep -q "ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        echo "install.sh: system libraries already installed."
        return 0
    fi
    echo "install.sh: installing system packages: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo > /dev/null; then
            sudo=(sudo)
        else
            echo "install.sh: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# --- 2. Python packages ------------------------------------------------------------------------
# True when this checkout is already installed in editable mode and every requirement in
# pyproject.toml (plus the dev extra when asked) is satisfied, so pip (which would rebuild the
# editable wheel in an isolated environment every time) can be skipped.
python_env_ready() {
    "$PYTHON" - "$DEV" << 'PY'
import json
import sys
import tomllib  # Python >= 3.11; on 3.10 this fails and we simply run pip
from importlib import metadata
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement

dev = sys.argv[1] == "1"
root = Path.cwd().resolve()
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
reqs = list(project["dependencies"])
if dev:
    reqs += project.get("optional-dependencies", {}).get("dev", [])


def editable_here(dist: metadata.Distribution) -> bool:
    # The build leaves an ipa_studio.egg-info in the checkout, which is on sys.path too; only the
    # installed copy records where it was installed from.
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    return bool(direct.get("dir_info", {}).get("editable")) and direct.get("url") == root.as_uri()


wanted = project["name"].lower().replace("_", "-")
ours = [
    d
    for d in metadata.distributions()
    if (d.metadata["Name"] or "").lower().replace("_", "-") == wanted
    and d.version == project["version"]
    and editable_here(d)
]
# An editable install of *this* folder: a fresh clone elsewhere must be installed again.
if not ours:
    sys.exit(1)
for line in reqs:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # not meant for this platform / Python
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
PY
}

install_python_packages() {
    if python_env_ready 2> /dev/null; then
        echo "install.sh: Python packages already installed."
        return 0
    fi
    # torch first and exactly pinned: pip takes these from local disk on the project's machines,
    # while any other version (or an unpinned torch pulled in by a dependency) downloads several GB.
    "$PYTHON" -m pip install torch==2.14.1 torchvision==0.29.1
    if [ "$DEV" -eq 1 ]; then
        "$PYTHON" -m pip install -e ".[dev]"
    else
        "$PYTHON" -m pip install -e .
    fi
}

install_system_packages
install_python_packages
echo "install.sh: done."
