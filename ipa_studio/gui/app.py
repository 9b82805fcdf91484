"""Application entry point: ``python main.py`` / ``ipa-studio-gui``.

``--self-test`` builds tiny random models in a temporary folder, runs one generation through the
real window (offscreen unless a display platform was chosen) and exits 0 when a PNG with its
settings was written: a check that an install works, without downloading anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("ipa_studio.gui")


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="ipa-studio-gui", description="IPA Studio desktop app")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="run one generation with built-in tiny models in the real window (offscreen) and exit",
    )
    parser.add_argument("--settings", type=Path, default=None, help="settings file (default: per user)")
    # Anything else (-platform, -style …) is for Qt.
    return parser.parse_known_args(list(argv))


def _setup_logging() -> Path | None:
    """Log to stderr and to a file in the user's log folder (where error messages point)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    path: Path | None = None
    try:
        import platformdirs

        from ipa_studio.core.settings import APP_NAME

        folder = platformdirs.user_log_path(APP_NAME, appauthor=False)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "ipa-studio.log"
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    except OSError:
        path = None  # a read-only home: log to stderr only
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers
    )
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Open the IPA Studio window and run the Qt event loop; returns the exit code."""
    args, qt_args = _parse(sys.argv[1:] if argv is None else argv)
    if args.self_test:
        # Before QApplication exists: the self-test must run on machines with no display.
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtWidgets import QApplication

    from ipa_studio.core.settings import APP_NAME
    from ipa_studio.gui.style import apply_theme

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "ipa-studio", *qt_args])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(APP_NAME)
    _set_icon(app)
    apply_theme(app)

    if args.self_test:
        from ipa_studio.gui.selftest import run_self_test

        return run_self_test()

    _setup_logging()
    from ipa_studio.core.settings import default_settings_path, load_settings
    from ipa_studio.gui.main_window import MainWindow

    settings_path = args.settings or default_settings_path()
    window = MainWindow(load_settings(settings_path), settings_path)
    _install_excepthook(window)
    wake = _remove_temps_on_termination()  # noqa: F841 - the timer must live as long as the loop
    window.show()
    return app.exec()


def _remove_temps_on_termination() -> object:
    """SIGTERM / SIGHUP delete this process's half-written files before it ends (as in the CLI)."""
    from PySide6.QtCore import QTimer

    from ipa_studio.core.files import remove_temps_on_termination

    remove_temps_on_termination()
    # Python runs signal handlers only when the main thread runs Python code, and the main thread
    # waits in Qt's event loop: a slow timer gives the handler its chance.
    timer = QTimer()
    timer.timeout.connect(lambda: None)
    timer.start(250)
    return timer


def _set_icon(app: object) -> None:
    """The app's icon on every window (title bar, task bar, Alt+Tab)."""
    from importlib.resources import files

    from PySide6.QtGui import QIcon

    icon = files("ipa_studio") / "resources" / "icons" / "ipa-studio.png"
    app.setWindowIcon(QIcon(str(icon)))  # type: ignore[attr-defined]
    # Wayland and some X11 docks match the window to the installed .desktop file by this name.
    app.setDesktopFileName("io.github.ipa_studio.IPAStudio")  # type: ignore[attr-defined]


def _install_excepthook(window: object) -> None:
    """A bug in a slot must not kill the app or dump a traceback on the person: log it, say it."""
    from ipa_studio.gui.errors import describe_error

    def hook(kind: type[BaseException], exc: BaseException, tb: object) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)  # type: ignore[arg-type]
            return
        try:  # describe_error logs the traceback of anything that is not an IPAStudioError
            window.show_error(describe_error(exc, "working"))  # type: ignore[attr-defined]
        except Exception:
            pass

    sys.excepthook = hook


if __name__ == "__main__":
    sys.exit(main())
