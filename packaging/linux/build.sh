#!/usr/bin/env bash
# Build the Linux installer of IPA Studio:
#   packaging/build/IPA-Studio-Installer.AppDir          the AppDir (AppRun, .desktop, metainfo, icons)
#   packaging/build/ipa-studio-installer-VERSION-linux-x86_64.tar.gz   the same, as a plain archive
#   packaging/build/IPA-Studio-Installer-VERSION-x86_64.AppImage       when appimagetool is on PATH
# and, with --offline-bundle, the offline bundle beside them (packaging/make_offline_bundle.py).
#
#   python3 -m pip install -r packaging/requirements.txt    # uv + PyInstaller, once
#   bash packaging/linux/build.sh [--offline-bundle]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON="${PYTHON:-python3}"
BUILD=packaging/build
VERSION="$("$PYTHON" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
APPDIR="$BUILD/IPA-Studio-Installer.AppDir"
ID=io.github.ipa_studio.IPAStudio
OFFLINE=0
for arg in "$@"; do
    case "$arg" in
        --offline-bundle) OFFLINE=1 ;;
        *) echo "build.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

echo "== the app's wheel"
rm -rf "$BUILD/app"
"$PYTHON" -m pip wheel --no-deps --quiet --wheel-dir "$BUILD/app" .
WHEEL="$(ls "$BUILD"/app/ipa_studio-*.whl)"
# What ships is the product: no tests, no docs tools, no demo code.
if "$PYTHON" -m zipfile -l "$WHEEL" | grep -E "(^| )(tests/|docs/)|screenshot|_demo\.py|conftest" ; then
    echo "build.sh: the wheel carries test or demo code" >&2
    exit 1
fi

echo "== the installer (PyInstaller, one folder, no UPX)"
rm -rf "$BUILD/dist" "$BUILD/work"
APP_WHEEL="$WHEEL" "$PYTHON" -m PyInstaller --noconfirm --log-level WARN \
    --distpath "$BUILD/dist" --workpath "$BUILD/work" packaging/launcher/ipa-studio-installer.spec

echo "== the AppDir"
rm -rf "$APPDIR"
mkdir -p "$APPDIR/usr/lib" "$APPDIR/usr/bin" "$APPDIR/usr/share/applications" "$APPDIR/usr/share/metainfo"
cp -a "$BUILD/dist/ipa-studio-installer" "$APPDIR/usr/lib/"
ln -s ../lib/ipa-studio-installer/ipa-studio-installer "$APPDIR/usr/bin/ipa-studio-installer"
cp packaging/linux/AppRun "$APPDIR/AppRun"
cp packaging/linux/$ID.Installer.desktop "$APPDIR/$ID.Installer.desktop"
cp packaging/linux/$ID.Installer.desktop "$APPDIR/usr/share/applications/"
cp packaging/linux/$ID.Installer.metainfo.xml "$APPDIR/usr/share/metainfo/"
for size in 48 128 256 512; do
    mkdir -p "$APPDIR/usr/share/icons/hicolor/${size}x${size}/apps"
    cp "resources/icons/ipa-studio-$size.png" "$APPDIR/usr/share/icons/hicolor/${size}x${size}/apps/$ID.png"
done
mkdir -p "$APPDIR/usr/share/icons/hicolor/scalable/apps"
cp resources/ipa-studio.svg "$APPDIR/usr/share/icons/hicolor/scalable/apps/$ID.svg"
cp resources/icons/ipa-studio-256.png "$APPDIR/$ID.png"
ln -sf "$ID.png" "$APPDIR/.DirIcon"
# The frozen installer must not carry test or demo code either.
if find "$APPDIR" -name "*.py*" | grep -E "tests?/|screenshot|_demo|conftest|ipa_studio/" ; then
    echo "build.sh: the installer carries test, demo or app code" >&2
    exit 1
fi

echo "== the .tar.gz"
NAME="ipa-studio-installer-$VERSION-linux-x86_64"
rm -rf "$BUILD/$NAME" "$BUILD/$NAME.tar.gz"
cp -a "$APPDIR" "$BUILD/$NAME"
tar -C "$BUILD" -czf "$BUILD/$NAME.tar.gz" "$NAME"
rm -rf "$BUILD/$NAME"

if command -v appimagetool > /dev/null; then
    echo "== the AppImage"
    ARCH=x86_64 appimagetool --no-appstream "$APPDIR" "$BUILD/IPA-Studio-Installer-$VERSION-x86_64.AppImage"
else
    echo "== no appimagetool on PATH: AppImage skipped (the .tar.gz holds the same AppDir)"
fi

if [ "$OFFLINE" -eq 1 ]; then
    echo "== the offline bundle"
    "$PYTHON" packaging/make_offline_bundle.py linux-x86_64-cuda "$BUILD/wheelhouse"
fi
du -sh "$APPDIR" "$BUILD"/*.tar.gz "$BUILD"/*.AppImage 2> /dev/null || true
