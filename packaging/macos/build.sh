#!/usr/bin/env bash
# Build the macOS installer of IPA Studio (Apple Silicon, macOS 14+), on a Mac:
#   python3 -m pip install -r packaging/requirements.txt
#   bash packaging/macos/build.sh [--offline-bundle]
# Makes packaging/build/dist/IPA Studio Installer.app and packaging/build/IPA-Studio-VERSION-arm64.dmg.
# Signing and notarisation run when these are set (see packaging/README.md, "macOS signing"):
#   MACOS_SIGN_IDENTITY="Developer ID Application: Name (TEAMID)"
#   MACOS_NOTARY_PROFILE=ipa-studio   (a keychain profile made with `xcrun notarytool store-credentials`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BUILD=packaging/build
VERSION="$(python3 -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
APP="$BUILD/dist/IPA Studio Installer.app"

rm -rf "$BUILD/app" "$BUILD/dist" "$BUILD/work"
python3 -m pip wheel --no-deps --quiet --wheel-dir "$BUILD/app" .
APP_WHEEL="$(ls "$BUILD"/app/ipa_studio-*.whl)" python3 -m PyInstaller --noconfirm \
    --distpath "$BUILD/dist" --workpath "$BUILD/work" packaging/launcher/ipa-studio-installer.spec

if [ -n "${MACOS_SIGN_IDENTITY:-}" ]; then
    # Inside out: every binary with the hardened runtime and the entitlements, then the bundle.
    find "$APP" -type f \( -name "*.dylib" -o -name "*.so" -o -perm -u+x \) -print0 |
        xargs -0 codesign --force --timestamp --options runtime \
            --entitlements packaging/macos/entitlements.plist --sign "$MACOS_SIGN_IDENTITY"
    codesign --force --timestamp --options runtime --entitlements packaging/macos/entitlements.plist \
        --sign "$MACOS_SIGN_IDENTITY" "$APP"
    codesign --verify --deep --strict "$APP"
fi

DMG="$BUILD/IPA-Studio-$VERSION-arm64.dmg"
STAGE="$BUILD/dmg"
rm -rf "$STAGE" "$DMG"
mkdir -p "$STAGE"
cp -R "$APP" "$STAGE/"
ln -s /Applications "$STAGE/Applications"
if [ "${1:-}" = "--offline-bundle" ]; then
    python3 packaging/make_offline_bundle.py macos-arm64-mps "$STAGE/wheelhouse"
fi
hdiutil create -volname "IPA Studio" -srcfolder "$STAGE" -ov -format UDZO "$DMG"

if [ -n "${MACOS_SIGN_IDENTITY:-}" ]; then
    codesign --force --timestamp --sign "$MACOS_SIGN_IDENTITY" "$DMG"
    if [ -n "${MACOS_NOTARY_PROFILE:-}" ]; then
        xcrun notarytool submit "$DMG" --keychain-profile "$MACOS_NOTARY_PROFILE" --wait
        xcrun stapler staple "$DMG"
    fi
fi
ls -la "$DMG"
