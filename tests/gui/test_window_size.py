"""The window fits laptop screens and stays the size people give it.

It is laid out at 1366 × 768 and 1280 × 720 with every tab, two references, a control, a long file
name on the canvas and a picture selected: nothing may be cut off, and nothing may make the window
grow (it grew to 1431 px when a picture was sent to the canvas). A 4K screen is checked for sense.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, QRect, Qt
from PySide6.QtWidgets import QToolButton, QWidget

from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import MainWindow
from tests.gui.people import clipped_widgets
from tests.gui.test_control import choose, ready
from tests.gui.test_generation import drop_files, run_job

LONG_NAME = "holiday-photos-2024-" + "a-very-long-descriptive-file-name-from-a-camera-app-" * 3 + "final.png"
ROOT = Path(__file__).resolve().parents[2]


def _rect_in(widget: QWidget, root: QWidget) -> QRect:
    return QRect(widget.mapTo(root, QPoint(0, 0)), QWidget.size(widget))


def fill_the_window(
    window: MainWindow, qtbot, reference_files, tmp_path: Path, tiny_controlnet: Path
) -> Path:
    """Two references, a control, a finished picture selected; returns the long-named start picture."""
    drop_files(window, reference_files, qtbot)
    uid = window.control.add_control(reference_files[0])
    window.control.set_model(uid, tiny_controlnet)
    qtbot.waitUntil(lambda: ready(window.control.cards[uid]), timeout=60_000)
    choose(window.control.cards[uid].preprocessor, "none")  # the photo is used as the map
    qtbot.waitUntil(window.control.cards[uid].has_map, timeout=30_000)
    assert run_job(window, qtbot) == "finished", window.banner.text()
    start = tmp_path / LONG_NAME
    make_reference_image(5, size=(96, 64)).save(start)
    return start


@pytest.mark.parametrize("size", [(1366, 768), (1280, 720)], ids=["1366x768", "1280x720"])
def test_the_window_fits_a_laptop_screen_in_every_state(
    window: MainWindow, qtbot, reference_files, tmp_path: Path, tiny_controlnet: Path, size: tuple[int, int]
) -> None:
    window.resize(*size)
    qtbot.waitUntil(lambda: (window.width(), window.height()) == size)
    start = fill_the_window(window, qtbot, reference_files, tmp_path, tiny_controlnet)
    hint = window.minimumSizeHint()
    assert hint.width() <= size[0] and hint.height() <= size[1], (
        f"the window needs {hint.width()}×{hint.height()}"
    )

    problems: dict[str, list[str]] = {}

    def look(what: str) -> None:
        qtbot.wait(30)  # let the layouts settle, as a repaint would
        if (window.width(), window.height()) != size:
            problems[what] = [f"the window grew to {window.width()} × {window.height()}"]
        elif found := clipped_widgets(window):
            problems[what] = found

    window.gallery.setCurrentRow(0)  # a picture selected: its name in the caption
    look("Create tab, a picture selected")
    window.send_to_canvas(window.gallery.current_path())
    look("Canvas after Send to canvas")
    window.canvas.set_init(start)
    qtbot.waitUntil(lambda: window.canvas.info.toolTip() == str(start), timeout=10_000)
    look("Canvas with a long file name")
    assert "96 × 64" in window.canvas.info.shown_text()  # the size stays in sight, the name is shortened
    window.init_panel.mode_buttons["inpaint"].click()
    window.init_panel.only_masked.click()
    look("Inpaint options on show")
    window.view_tabs.setCurrentWidget(window.result_page)
    window.gallery.setCurrentRow(0)
    look("Result again")
    window.tabs.setCurrentIndex(1)
    look("Models tab")
    window.tabs.setCurrentIndex(0)
    window.splitter.moveSplitter(0, 1)  # the column as narrow as the splitter lets it be
    look("the splitter dragged all the way left")
    window.splitter.moveSplitter(size[0], 1)  # and all the way right
    look("the splitter dragged all the way right")
    assert not problems, "\n".join(f"{what}:\n  " + "\n  ".join(p) for what, p in problems.items())


def test_a_4k_screen_gives_the_room_to_the_picture(
    window: MainWindow, qtbot, reference_files, tmp_path: Path, tiny_controlnet: Path
) -> None:
    window.resize(3840, 2160)
    qtbot.waitUntil(lambda: window.width() == 3840)
    fill_the_window(window, qtbot, reference_files, tmp_path, tiny_controlnet)
    window.gallery.setCurrentRow(0)
    qtbot.wait(30)
    assert not clipped_widgets(window)
    left, right = window.splitter.sizes()
    assert left < 700 and right > 3000  # the column keeps its width; the picture takes the rest
    view = _rect_in(window.view, window)
    assert view.width() > 3000 and view.height() > 1600
    window.show_error("A long message " * 40)
    qtbot.wait(30)
    assert window.banner.width() <= 800  # a line of text people can still read in one go


def test_a_message_floats_over_the_picture_and_moves_nothing(window: MainWindow, qtbot) -> None:
    """A banner that pushed the layout down ~34 px made clicks land on the wrong button."""
    window.resize(1366, 768)
    qtbot.wait(30)
    watched = [
        window.generate_panel.generate,
        window.picker.base,
        window.balance.slider,
        window.reuse_button,
        window.view,
        window.tabs.tabBar(),
        window.view_tabs.tabBar(),
    ]
    before = [_rect_in(w, window) for w in watched]
    window.show_error("The models could not be loaded: " + "a long explanation of what went wrong " * 6)
    qtbot.wait(30)
    assert [_rect_in(w, window) for w in watched] == before
    banner = _rect_in(window.banner, window)
    assert window.banner.isVisible() and _rect_in(window.view, window).contains(banner)
    assert banner.height() >= window.banner.heightForWidth(banner.width())  # every line of it shows
    for button in window._image_actions:
        assert not banner.intersects(_rect_in(button, window))
    # It follows the picture area: over the Canvas, and over the Models page.
    window.view_tabs.setCurrentWidget(window.canvas)
    qtbot.wait(30)
    assert _rect_in(window.canvas.canvas, window).contains(_rect_in(window.banner, window))
    window.tabs.setCurrentIndex(1)
    qtbot.wait(30)
    assert _rect_in(window.setup, window).contains(_rect_in(window.banner, window))
    close = window.banner.findChild(QToolButton)
    qtbot.mouseClick(close, Qt.MouseButton.LeftButton)
    assert window.banner.isHidden()


SCREEN_SCRIPT = r"""
import sys
from pathlib import Path
from PySide6.QtWidgets import QApplication
from ipa_studio.core.settings import Settings
from ipa_studio.gui.main_window import MainWindow

app = QApplication([])
tmp = Path(sys.argv[1])
settings = Settings(models_dir=str(tmp / "models"), outputs_dir=str(tmp / "out"))
window = MainWindow(settings, None, check_network=False)
window.show()
app.processEvents()
screen = window.screen().availableGeometry()
frame = window.frameGeometry()
print(screen.width(), screen.height(), frame.x(), frame.y(), frame.width(), frame.height())
print(window.width(), window.height())
window.close()
"""


@pytest.mark.parametrize("screen", [(1280, 720), (3840, 2160)], ids=["1280x720", "3840x2160"])
def test_the_first_start_fits_the_screen(tmp_path: Path, screen: tuple[int, int]) -> None:
    """No saved size yet: the window opens inside the screen, whatever its size (a fresh process,
    because a Qt process has one set of screens)."""
    config = tmp_path / "screen.json"
    config.write_text(json.dumps({"screens": [{"name": "s", "width": screen[0], "height": screen[1]}]}))
    env = dict(os.environ, QT_QPA_PLATFORM=f"offscreen:configfile={config}", PYTHONPATH=str(ROOT))
    env.pop("IPA_STUDIO_MODELS", None)
    done = subprocess.run(
        [sys.executable, "-c", SCREEN_SCRIPT, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sw, sh, x, y, w, h, inner_w, inner_h = (int(v) for v in done.stdout.split()[-8:])
    assert (sw, sh) == screen
    assert 0 <= x and 0 <= y and x + w <= sw and y + h <= sh, (
        f"the window at {x},{y} {w}×{h} is off the screen"
    )
    if screen[0] > 2000:
        assert (inner_w, inner_h) == (1400, 900)  # the usual size where there is room
