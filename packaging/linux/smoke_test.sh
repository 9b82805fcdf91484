#!/usr/bin/env bash
# End-to-end check of the Linux installer, as a person without a terminal would get it:
#  1. builds the installer (build.sh) and the offline bundle (unless --wheelhouse names one);
#  2. unpacks the .tar.gz into a temporary "Downloads" folder with the bundle beside it;
#  3. in a clean environment (empty HOME, env -i, PATH=/usr/bin:/bin, no project venv) installs
#     headless, offline, into a temporary folder; checks the marker, the desktop entry, the absence of
#     test/demo code; runs the INSTALLED app's --self-test offscreen and under Xvfb with the xcb plugin;
#     measures the time from starting the installer to the app's window;
#  4. Repair, then Uninstall: the app and its shortcuts go, models, pictures and settings stay;
#  5. a wheelhouse with a missing wheel, one with a corrupt wheel, a disk too small from the start
#     and a disk that fills up during the install: each must end with a clear message and an install
#     marked incomplete (never a shortcut to a half-working app).
#
#   bash packaging/linux/smoke_test.sh [--wheelhouse DIR] [--no-build] [--keep]
#
# Needs: Xvfb (xvfb-run), xwininfo, about 20 GB free under $TMPDIR, and root for the two full-disk
# cases (a tmpfs and a loop-mounted ext4 image); without root those two are reported as skipped.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$PWD"
BUILD="$ROOT/packaging/build"
WHEELHOUSE="" BUILD_IT=1 KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheelhouse) WHEELHOUSE="$(readlink -f "$2")"; shift ;;
        --no-build) BUILD_IT=0 ;;
        --keep) KEEP=1 ;;
        *) echo "smoke_test.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

FAILS=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.1f}')"; }

T="$(mktemp -d "${TMPDIR:-/tmp}/ipa-smoke.XXXXXX")"
MOUNTS=()
MAIN_PID=$$
cleanup() {
    [ "$BASHPID" = "$MAIN_PID" ] || return 0  # a subshell ending must not clean up under the main one
    for m in "${MOUNTS[@]}"; do umount "$m" 2> /dev/null || umount -l "$m" 2> /dev/null; done
    if [ "$KEEP" -eq 0 ]; then rm -rf "$T"; else echo "kept $T"; fi
}
trap cleanup EXIT
echo "smoke test in $T"

if [ "$BUILD_IT" -eq 1 ]; then
    bash packaging/linux/build.sh || { echo "build failed"; exit 1; }
fi
if [ -z "$WHEELHOUSE" ]; then
    WHEELHOUSE="$BUILD/wheelhouse"
    [ -f "$WHEELHOUSE/wheelhouse.json" ] || python3 packaging/make_offline_bundle.py linux-x86_64-cuda "$WHEELHOUSE"
fi
TARBALL="$(ls "$BUILD"/ipa-studio-installer-*-linux-x86_64.tar.gz | tail -1)"

# --- the download, unpacked, with the offline bundle beside it ----------------------------------------
DL="$T/Downloads"
mkdir -p "$DL"
tar -C "$DL" -xzf "$TARBALL"
INSTALLER_DIR="$(ls -d "$DL"/ipa-studio-installer-*)"
ln -s "$WHEELHOUSE" "$INSTALLER_DIR/wheelhouse"
LAUNCHER="$INSTALLER_DIR/AppRun"
echo "launcher: $(du -sh "$INSTALLER_DIR/usr" | cut -f1) unpacked, $(du -h "$TARBALL" | cut -f1) as .tar.gz"

HOME_DIR="$T/home"
mkdir -p "$HOME_DIR"
# A person's session: nothing of this shell (no venv, no PYTHONPATH, no pip settings of ours).
clean() { env -i HOME="$HOME_DIR" PATH=/usr/bin:/bin LANG=C.UTF-8 USER=artist "$@"; }

# --- install, offline ---------------------------------------------------------------------------------
INSTALL="$T/apps/IPAStudio"
t0="$(now)"
clean "$LAUNCHER" --headless --action install --folder "$INSTALL" > "$T/install.log" 2>&1
rc=$?
t1="$(now)"
tail -4 "$T/install.log"
check "offline install succeeds (rc=$rc)" '[ "$rc" -eq 0 ]'
echo "offline install time: $(secs "$t0" "$t1") s"
check "marker says complete" 'grep -q "\"state\": \"complete\"" "$INSTALL/ipa-studio-install.json"'
check "the install used the offline bundle and no network" 'grep -q -- "--offline" "$T/install.log"'
echo "installed size: $(du -sh "$INSTALL" | cut -f1)"
ENTRY="$HOME_DIR/.local/share/applications/io.github.ipa_studio.IPAStudio.desktop"
check "desktop entry points at the install" 'grep -q "^Exec=$INSTALL/ipa-studio %F" "$ENTRY"'
check "icon installed" '[ -f "$HOME_DIR/.local/share/icons/hicolor/256x256/apps/io.github.ipa_studio.IPAStudio.png" ]'
SITE="$(ls -d "$INSTALL"/env/lib/python3*/site-packages)"
check "the installed app carries no test or demo code" \
    '[ -z "$(find "$SITE/ipa_studio" \( -name "screenshot.py" -o -name "*demo*.py" -o -name "conftest.py" -o -name tests \) -print)" ]'
check "the launcher carries no app, test or demo code" \
    '[ -z "$(find "$INSTALLER_DIR" -path "*ipa_studio/*" -o -name "*demo*.py" -o -name "conftest.py" | grep -v wheelhouse)" ]'

# --- the installed app's self-test: offscreen, then under Xvfb with the real xcb plugin -------------------
t0="$(now)"
clean "$INSTALL/ipa-studio" --self-test > "$T/selftest-offscreen.log" 2>&1
rc=$?
tail -1 "$T/selftest-offscreen.log"
check "installed self-test offscreen passes (rc=$rc, $(secs "$t0" "$(now)") s)" '[ "$rc" -eq 0 ]'

xvfb-run -a -s "-screen 0 1366x768x24" sh -c \
    "env -i HOME='$HOME_DIR' PATH=/usr/bin:/bin LANG=C.UTF-8 DISPLAY=\"\$DISPLAY\" XAUTHORITY=\"\$XAUTHORITY\" \
     QT_QPA_PLATFORM=xcb QT_DEBUG_PLUGINS=1 '$INSTALL/ipa-studio' --self-test" > "$T/selftest-xcb.log" 2>&1
rc=$?
grep "self-test" "$T/selftest-xcb.log" | tail -1
check "installed self-test under Xvfb passes (rc=$rc)" '[ "$rc" -eq 0 ]'
check "... with the xcb platform plugin of the installed PySide6" \
    'grep -q "$SITE/PySide6/Qt/plugins/platforms/libqxcb.so" "$T/selftest-xcb.log"'

# --- from starting the installer to the app's window ----------------------------------------------------
cat > "$T/window_time.sh" << 'SH'
#!/bin/sh
# $1 = launcher, $2 = install folder; prints seconds from start to a mapped "IPA Studio" window.
start=$(date +%s.%N)
pid="$("$1" --headless --action start --folder "$2" | sed -n 's/.*(pid \([0-9]*\)).*/\1/p')"
[ -n "$pid" ] || exit 1
i=0
while [ $i -lt 1200 ]; do
    if xwininfo -root -tree 2> /dev/null | grep -q '"IPA Studio"'; then
        end=$(date +%s.%N)
        python3 -c "print(f'{$end - $start:.1f}')"
        kill "$pid" 2> /dev/null  # the app this script started
        exit 0
    fi
    sleep 0.1
    i=$((i + 1))
done
exit 1
SH
chmod +x "$T/window_time.sh"
for run in 1 2; do
    secs_to_window="$(xvfb-run -a -s "-screen 0 1366x768x24" sh -c \
        "env -i HOME='$HOME_DIR' PATH=/usr/bin:/bin LANG=C.UTF-8 DISPLAY=\"\$DISPLAY\" XAUTHORITY=\"\$XAUTHORITY\" \
         '$T/window_time.sh' '$LAUNCHER' '$INSTALL'")"
    check "app window appears after starting the installer (run $run: ${secs_to_window:-none} s)" '[ -n "$secs_to_window" ]'
done

cat > "$T/installer_window_time.sh" << 'SH'
#!/bin/sh
# $1 = launcher; prints seconds from starting it (as a double-click does) to its window.
start=$(date +%s.%N)
"$1" > /dev/null 2>&1 &
pid=$!
i=0
while [ $i -lt 600 ]; do
    if xwininfo -root -tree 2> /dev/null | grep -q '"IPA Studio Installer"'; then
        end=$(date +%s.%N)
        python3 -c "print(f'{$end - $start:.1f}')"
        kill "$pid"
        exit 0
    fi
    sleep 0.1
    i=$((i + 1))
done
kill "$pid"
exit 1
SH
chmod +x "$T/installer_window_time.sh"
secs_to_window="$(xvfb-run -a -s "-screen 0 1366x768x24" sh -c \
    "env -i HOME='$HOME_DIR' PATH=/usr/bin:/bin LANG=C.UTF-8 DISPLAY=\"\$DISPLAY\" XAUTHORITY=\"\$XAUTHORITY\" \
     '$T/installer_window_time.sh' '$LAUNCHER'")"
check "the installer's own window appears (${secs_to_window:-none} s)" '[ -n "$secs_to_window" ]'

# --- a person's data, which Repair and Uninstall must keep ------------------------------------------
MODELS="$HOME_DIR/.local/share/IPA Studio/models"
PICTURES="$HOME_DIR/Pictures/IPA Studio"
SETTINGS="$HOME_DIR/.config/IPA Studio"
mkdir -p "$MODELS" "$PICTURES" "$SETTINGS"
echo "weights" > "$MODELS/my-model.safetensors"
echo "png" > "$PICTURES/picture-1.png"
[ -f "$SETTINGS/settings.json" ] || echo '{"version": 1}' > "$SETTINGS/settings.json"

# --- Repair -----------------------------------------------------------------------------------------
t0="$(now)"
clean "$LAUNCHER" --headless --action repair --folder "$INSTALL" > "$T/repair.log" 2>&1
rc=$?
tail -1 "$T/repair.log"
check "repair succeeds (rc=$rc, $(secs "$t0" "$(now)") s)" '[ "$rc" -eq 0 ]'
check "marker complete after repair" 'grep -q "\"state\": \"complete\"" "$INSTALL/ipa-studio-install.json"'
check "repair reinstalled the packages" 'grep -q -- "--reinstall" "$T/repair.log"'

# --- Update (nothing changed: a quick sync) ---------------------------------------------------------
clean "$LAUNCHER" --headless --action update --folder "$INSTALL" > "$T/update.log" 2>&1
rc=$?
check "update succeeds (rc=$rc)" '[ "$rc" -eq 0 ]'

# --- Uninstall --------------------------------------------------------------------------------------
clean "$LAUNCHER" --headless --action uninstall --folder "$INSTALL" > "$T/uninstall.log" 2>&1
rc=$?
check "uninstall succeeds (rc=$rc)" '[ "$rc" -eq 0 ]'
check "the app is gone" '[ ! -e "$INSTALL" ]'
check "the desktop entry is gone" '[ ! -e "$ENTRY" ]'
check "models kept" '[ -f "$MODELS/my-model.safetensors" ]'
check "pictures kept" '[ -f "$PICTURES/picture-1.png" ]'
check "settings kept" '[ -f "$SETTINGS/settings.json" ]'
echo "left in HOME after uninstall:"
(cd "$HOME_DIR" && find . -type f | sort | sed 's/^/    /')

# --- broken offline bundles ---------------------------------------------------------------------------
expect_incomplete() { # label, install folder, log, words the message must contain, exit code
    # check() evals its test in its own frame, so the test names these variables, not $1 … $5.
    X_LABEL="$1" X_FOLDER="$2" X_LOG="$3" X_WORDS="$4" X_RC="$5"
    check "$X_LABEL: fails (rc=$X_RC)" '[ "$X_RC" -ne 0 ]'
    echo "    message: $(grep '^error:' "$X_LOG" | tail -1)"
    check "$X_LABEL: says '$X_WORDS'" 'grep "^error:" "$X_LOG" | grep -q "$X_WORDS"'
    if [ -e "$X_FOLDER/ipa-studio-install.json" ]; then
        echo "    marker: $(grep -o '"state": "[a-z]*"' "$X_FOLDER/ipa-studio-install.json")"
    fi
    check "$X_LABEL: no install marked complete" \
        '! grep -q "\"state\": \"complete\"" "$X_FOLDER/ipa-studio-install.json" 2> /dev/null'
    check "$X_LABEL: no desktop entry" '[ ! -e "$ENTRY" ]'
    check "$X_LABEL: the app does not start" \
        '! clean "$LAUNCHER" --headless --action start --folder "$X_FOLDER" > /dev/null 2>&1'
}
broken_bundle() { # $1 = name; makes $T/$1 a hard-linked copy of the bundle beside a copy of the launcher
    local dir="$T/$1"
    mkdir -p "$dir"
    cp -a "$INSTALLER_DIR" "$dir/launcher"
    rm "$dir/launcher/wheelhouse"
    cp -al "$WHEELHOUSE" "$dir/launcher/wheelhouse" 2> /dev/null || cp -a "$WHEELHOUSE" "$dir/launcher/wheelhouse"
    echo "$dir/launcher"
}

B="$(broken_bundle missing)"
rm "$B"/wheelhouse/wheels/safetensors-*.whl
clean "$B/AppRun" --headless --action install --folder "$T/missing/IPAStudio" > "$T/missing.log" 2>&1
expect_incomplete "missing wheel" "$T/missing/IPAStudio" "$T/missing.log" "missing" $?
check "missing wheel: marker says incomplete" 'grep -q "\"state\": \"incomplete\"" "$T/missing/IPAStudio/ipa-studio-install.json"'

B="$(broken_bundle corrupt)"
victim="$(ls "$B"/wheelhouse/wheels/pillow-*.whl)"
head -c 100000 "$WHEELHOUSE/wheels/$(basename "$victim")" > "$victim.tmp" && rm "$victim" && mv "$victim.tmp" "$victim"
clean "$B/AppRun" --headless --action install --folder "$T/corrupt/IPAStudio" > "$T/corrupt.log" 2>&1
expect_incomplete "corrupt wheel" "$T/corrupt/IPAStudio" "$T/corrupt.log" "damaged" $?
check "corrupt wheel: marker says incomplete" 'grep -q "\"state\": \"incomplete\"" "$T/corrupt/IPAStudio/ipa-studio-install.json"'

B="$(broken_bundle swapped)"
victim="$(ls "$B"/wheelhouse/wheels/pillow-*.whl)"
# A valid wheel with other bytes (re-packed): it unpacks, so only its hash can give it away.
python3 - "$WHEELHOUSE/wheels/$(basename "$victim")" "$victim.tmp" << 'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as src, zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_STORED) as dst:
    for item in src.infolist():
        dst.writestr(item.filename, src.read(item))
PY
rm "$victim" && mv "$victim.tmp" "$victim"
clean "$B/AppRun" --headless --action install --folder "$T/swapped/IPAStudio" > "$T/swapped.log" 2>&1
expect_incomplete "swapped wheel" "$T/swapped/IPAStudio" "$T/swapped.log" "checksum does not match" $?

# --- full disks ----------------------------------------------------------------------------------
if [ "$(id -u)" -eq 0 ]; then
    SMALL="$T/small-disk"
    mkdir -p "$SMALL"
    if mount -t tmpfs -o size=300m tmpfs "$SMALL"; then
        MOUNTS+=("$SMALL")
        clean "$LAUNCHER" --headless --action install --folder "$SMALL/IPAStudio" > "$T/small.log" 2>&1
        expect_incomplete "disk too small" "$SMALL/IPAStudio" "$T/small.log" "Not enough free space" $?
        check "disk too small: nothing was written" '[ ! -e "$SMALL/IPAStudio" ]'
    else
        echo "SKIP: could not mount a tmpfs"
    fi

    FULL="$T/full-disk"
    mkdir -p "$FULL"
    truncate -s 7G "$T/disk.img" && mkfs.ext4 -q -m 0 "$T/disk.img" && mount -o loop "$T/disk.img" "$FULL"
    if mountpoint -q "$FULL"; then
        MOUNTS+=("$FULL")
        clean "$LAUNCHER" --headless --action install --folder "$FULL/IPAStudio" > "$T/full.log" 2>&1 &
        pid=$!
        # Another program fills the disk once the installer is copying packages.
        for _ in $(seq 600); do
            grep -q '"step": "packages"' "$FULL/IPAStudio/ipa-studio-install.json" 2> /dev/null && break
            sleep 0.2
        done
        sleep 3
        free_kb="$(df --output=avail -k "$FULL" | tail -1)"
        fallocate -l "$(((free_kb - 400 * 1024) * 1024))" "$FULL/someone-elses-video.mkv"
        echo "    filled the disk: $(df -h --output=avail "$FULL" | tail -1) left"
        wait $pid
        expect_incomplete "disk full during install" "$FULL/IPAStudio" "$T/full.log" "is full" $?
        check "disk full during install: marker says incomplete" \
            'grep -q "\"state\": \"incomplete\"" "$FULL/IPAStudio/ipa-studio-install.json"'
        rm -f "$FULL/someone-elses-video.mkv"
    else
        echo "SKIP: could not mount a loop device"
    fi
    rm -f "$T/disk.img"
else
    echo "SKIP: full-disk cases need root (mount)"
fi

echo
if [ "$FAILS" -eq 0 ]; then echo "smoke test: all checks passed"; else echo "smoke test: $FAILS check(s) failed"; fi
[ "$FAILS" -eq 0 ]
