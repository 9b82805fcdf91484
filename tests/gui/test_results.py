"""What people do with a result: view and zoom, use it as a reference, copy it, find it again later."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtGui import QDesktopServices, QGuiApplication

from ipa_studio.gui.main_window import MainWindow
from tests.gui.conftest import tiny_settings
from tests.gui.test_generation import drop_files, outputs, run_job, same_file


def test_result_actions(window: MainWindow, qtbot, reference_files, monkeypatch: pytest.MonkeyPatch) -> None:
    drop_files(window, reference_files[:1], qtbot)
    assert run_job(window, qtbot) == "finished"
    [png] = outputs(window)
    assert window.gallery.current_path() == png
    assert all(b.isEnabled() for b in window._image_actions)

    window.view.zoom_by(2.0)
    window.view.actual_size()
    assert window.view.zoom() == 1.0
    window.view.fit()
    assert window.view.zoom() > 1.0  # a 64 px picture fitted into the large view is enlarged

    window.copy_button.click()
    copied = QGuiApplication.clipboard().image()
    assert (copied.width(), copied.height()) == (64, 64)

    window.as_reference_button.click()
    assert [r.path for r in window.state.references][-1] == str(png)

    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    window.open_outputs_folder()
    assert opened == [str(window.outputs_dir)]


def test_history_is_there_after_a_restart(
    make_window, qtbot, tmp_path: Path, tiny_models, reference_files
) -> None:
    settings = tiny_settings(tmp_path, tiny_models)
    first: MainWindow = make_window(settings, check_network=False)
    drop_files(first, reference_files[:1], qtbot)
    assert run_job(first, qtbot) == "finished"
    assert run_job(first, qtbot) == "finished"
    newest_first = first.gallery.paths()
    first.close()

    again: MainWindow = make_window(settings, check_network=False)
    assert again.gallery.paths() == newest_first
    qtbot.waitUntil(lambda: not again.gallery.item(0).icon().isNull())
    again.gallery.setCurrentRow(1)
    assert again.view.has_image() and newest_first[1].name in again.caption.text()
    assert again.reuse_settings(newest_first[1])
    [kept] = again.state.references
    assert same_file(kept.path, reference_files[0])


def test_every_control_explains_itself(window: MainWindow, reference_files) -> None:
    """Artists hover to learn: every button, slider, box and field in both tabs has a tooltip."""
    from PySide6.QtWidgets import (
        QAbstractButton,
        QAbstractSpinBox,
        QComboBox,
        QPlainTextEdit,
        QScrollBar,
        QSlider,
        QTabBar,
    )

    window.references.add_files(reference_files)  # the cards' controls count too
    kinds = (QAbstractButton, QAbstractSpinBox, QComboBox, QPlainTextEdit, QSlider)
    controls = [
        w
        for kind in kinds
        for w in window.findChildren(kind)
        if not isinstance(w, QScrollBar) and not isinstance(w.parent(), (QTabBar, QScrollBar))
    ]  # (Qt's own tab-bar scroll arrows are not ours to explain)
    assert len(controls) > 40
    silent = [f"{type(w).__name__} {getattr(w, 'text', lambda: '')()!r}" for w in controls if not w.toolTip()]
    assert not silent, "controls without a tooltip:\n" + "\n".join(silent)
