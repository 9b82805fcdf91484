"""docs/installer/*.png: every page of the installer window, under a real X server, during a real
offline install into a temporary folder (with its own empty HOME, so nothing of yours is touched).

    bash packaging/linux/build.sh --offline-bundle      # the app wheel and the offline bundle
    PYTHONPATH=packaging/launcher xvfb-run -a -s "-screen 0 1366x768x24" \\
        python3 docs/tools/installer_screenshots.py docs/installer packaging/build/wheelhouse

One picture is of a faked machine, and says so in its name: the hardware page as it looks with a GPU
too old for PyTorch's CUDA build (detection fed a GTX 1060's nvidia-smi answer), since this
machine has no GPU.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

TMP = Path(tempfile.mkdtemp(prefix="ipa-installer-shots-"))
os.environ.update(
    HOME=str(TMP / "home"),
    XDG_DATA_HOME=str(TMP / "home/.local/share"),
    XDG_CONFIG_HOME=str(TMP / "home/.config"),
)

from ipa_launcher import gui  # noqa: E402  (after HOME is set: platformdirs reads it)
from ipa_launcher.hardware import Gpu, Hardware, detect  # noqa: E402
from ipa_launcher.locks import load_index  # noqa: E402
from ipa_launcher.payload import find_payload, find_wheelhouse  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402
from shots import save_window  # noqa: E402


def wait(app: QApplication, predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        app.processEvents()
        time.sleep(0.02)
    return True


def settle(app: QApplication, seconds: float = 0.3) -> None:
    wait(app, lambda: False, seconds)


def main(out: Path, wheelhouse_dir: Path) -> int:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setStyleSheet(gui.STYLE)
    out.mkdir(parents=True, exist_ok=True)
    payload = find_payload()
    index = load_index(payload.locks_dir)
    wheelhouse = find_wheelhouse(wheelhouse_dir)
    folder = TMP / "apps" / "IPAStudio"

    def window(hardware: Hardware | None = None) -> gui.InstallerWindow:
        w = gui.InstallerWindow("linux", payload, hardware or detect(), index, wheelhouse, folder)
        w.set_icon(payload.icons_dir / "ipa-studio-128.png")
        w.resize(760, 560)
        w.show()
        settle(app)
        return w

    def shot(w: gui.InstallerWindow, name: str) -> None:
        settle(app)
        save_window(w, out / name)
        print("saved", out / name)

    w = window()
    shot(w, "1-welcome.png")
    w.go_next()
    shot(w, "2-folder.png")
    w.folder_edit.setText(str(TMP / "home" / "OneDrive" / "Mes Applis" / "IPA Studio"))
    shot(w, "2-folder-warnings.png")
    w.folder_edit.setText(str(folder))
    w.go_next()
    shot(w, "3-hardware.png")

    old_gpu = Hardware("linux", "x86_64", (Gpu("NVIDIA GeForce GTX 1060 6GB", "580.65.06", (6, 1), 6144),))
    faked = window(old_gpu)
    faked.go_next()
    faked.go_next()
    shot(faked, "3-hardware-faked-old-gpu.png")
    faked.close()

    w.go_next()  # Install: a real offline install starts
    if not wait(app, lambda: w.bar.value() > 250 or w.pages.currentWidget() is w.done_page, 600):
        print("the install did not get going", file=sys.stderr)
        return 1
    if w.pages.currentWidget() is w.done_page:
        log = w.log_view.toPlainText()[-3000:]
        print(f"the install failed: {w.done_error.text()}\n{log}", file=sys.stderr)
        return 1
    shot(w, "4-progress.png")
    if not wait(app, lambda: w.pages.currentWidget() is w.done_page, 1200):
        print("the install did not finish", file=sys.stderr)
        return 1
    shot(w, "5-done.png")
    w.close()

    again = window()
    shot(again, "6-installed.png")
    again.ask_uninstall()
    shot(again, "7-uninstall.png")
    again.show_page(again.welcome)
    again.begin_maintenance("repair")
    wait(app, lambda: again.bar.value() > 150, 600)
    again.cancel()
    if not wait(app, lambda: again.pages.currentWidget() is again.done_page, 300):
        print("cancel did not end the repair", file=sys.stderr)
        return 1
    shot(again, "8-cancelled.png")
    again.close()

    from ipa_launcher.installer import Plan, Runner

    Runner(Plan("uninstall", folder, "linux")).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
