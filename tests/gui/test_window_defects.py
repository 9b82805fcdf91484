"""What a person ran into in the real window, each as a test that failed before it was fixed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QFile, Qt, QTimer
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QFileDialog,
    QLabel,
    QMessageBox,
    QTabBar,
    QWidget,
)

from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.metadata import request_from_metadata
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.settings import ModelPaths, load_settings, save_settings
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.qimage import qimage_to_pil
from tests.gui.conftest import tiny_settings
from tests.gui.people import click, type_into
from tests.gui.test_generation import drop_files, outputs, run_job

# ---------------------------------------------------------------------------------------- settings


def test_the_window_starts_when_the_settings_hold_impossible_numbers(
    make_window, tmp_path: Path, tiny_models: ModelPaths, reference_files
) -> None:
    """A settings file edited by hand or written by another version: an OverflowError in a spin box
    stopped the window from opening at all."""
    settings = tiny_settings(tmp_path, tiny_models)
    path = tmp_path / "settings.json"
    save_settings(settings, path)
    data = json.loads(path.read_text())
    data["last"].update(
        steps=10**12,
        seed=2**70,
        width=10**9,
        height=-5,
        num_images=10**10,
        guidance=1e308,
        scale=7,
        references=[{"path": str(reference_files[0]), "weight": 1e9}, "not an object"],
    )
    path.write_text(json.dumps(data))
    window: MainWindow = make_window(load_settings(path), path, check_network=False)
    s = window.settings_panel
    assert (s.steps.value(), s.num_images.value(), s.width_box.value(), s.height_box.value()) == (
        150,
        8,
        2048,
        64,
    )
    assert s.guidance.value() == 30.0 and window.balance.spin.value() == 1.0
    assert window.state.seed <= 2**53 and int(s.seed.value()) == window.state.seed
    assert [r.weight for r in window.state.references] == [2.0]
    note = window.banner.text()
    assert "steps 1000000000000 → 150" in note and "width" in note and "guidance" in note
    request = window.state.build_request()
    assert (request.steps, request.width, request.height, request.guidance) == (150, 2048, 64, 30.0)


# ---------------------------------------------------------------------------------------- seed


def test_reuse_restores_the_seed_once_without_locking_the_next_ones(
    make_window, qtbot, tmp_path: Path, tiny_models: ModelPaths, reference_files
) -> None:
    settings = tiny_settings(tmp_path, tiny_models)
    path = tmp_path / "settings.json"
    window: MainWindow = make_window(settings, path, check_network=False)
    drop_files(window, reference_files[:1], qtbot)
    assert run_job(window, qtbot) == "finished"
    [first] = outputs(window)
    seed = request_from_metadata(read_png_metadata(first)).seed
    window.gallery.setCurrentRow(0)
    window.reuse_button.click()
    assert not window.settings_panel.lock.isChecked()
    assert run_job(window, qtbot) == "finished"  # the same picture again…
    assert run_job(window, qtbot) == "finished"  # …and then a new one
    seeds = [request_from_metadata(read_png_metadata(p)).seed for p in reversed(window.gallery.paths())]
    assert seeds[:2] == [seed, seed] and seeds[2] != seed
    first_pixels = np.asarray(Image.open(window.gallery.paths()[2]))
    assert np.array_equal(first_pixels, np.asarray(Image.open(window.gallery.paths()[1])))
    window.shutdown()
    assert load_settings(path).last.seed_locked is False  # not locked across a restart either


def test_a_typed_seed_is_used_by_the_next_generation(window: MainWindow, qtbot, reference_files) -> None:
    drop_files(window, reference_files[:1], qtbot)
    type_into(qtbot, window.settings_panel.seed, "4242")
    assert run_job(window, qtbot) == "finished"
    assert run_job(window, qtbot) == "finished"
    seeds = [request_from_metadata(read_png_metadata(p)).seed for p in reversed(window.gallery.paths())]
    assert seeds[0] == 4242 and seeds[1] != 4242


# ---------------------------------------------------------------------------------------- references


def test_references_are_kept_with_the_picture_and_it_can_be_made_again_when_they_are_gone(
    make_window, qtbot, tmp_path: Path, tiny_models: ModelPaths
) -> None:
    settings = tiny_settings(tmp_path, tiny_models)
    folder = tmp_path / "my-photos"
    folder.mkdir()
    refs = []
    for i in range(2):
        refs.append(folder / f"cat-{i}.jpg")
        make_reference_image(20 + i, size=(70, 50)).save(refs[-1], quality=90)
    first: MainWindow = make_window(settings, check_network=False)
    drop_files(first, refs, qtbot)
    first.state.set("seed_locked", True)
    assert run_job(first, qtbot) == "finished"
    [made] = outputs(first)
    first.shutdown()
    for ref in refs:
        ref.unlink()  # moved away, deleted: the picture must still be remade

    again: MainWindow = make_window(settings, check_network=False)
    assert "2 reference images from last time could not be found" in again.banner.text()
    assert again.reuse_settings(made)
    kept = [Path(r.path) for r in again.state.references]
    assert [p.name for p in kept] == ["cat-0.jpg", "cat-1.jpg"]  # their names, for the cards
    assert all(p.is_file() and again.outputs_dir in p.parents for p in kept)
    assert run_job(again, qtbot) == "finished"
    remade = next(p for p in outputs(again) if p != made)
    assert np.array_equal(np.asarray(Image.open(remade)), np.asarray(Image.open(made)))
    assert read_png_metadata(made)["ipa-studio"]  # the saved settings name the copies
    sources = json.loads(read_png_metadata(made)["ipa-studio"])["extra"]["reference_sources"]
    assert sources == [str(r) for r in refs]


def test_the_references_come_back_after_a_restart(
    make_window, qtbot, tmp_path: Path, tiny_models: ModelPaths, reference_files
) -> None:
    settings = tiny_settings(tmp_path, tiny_models)
    path = tmp_path / "settings.json"
    first: MainWindow = make_window(settings, path, check_network=False)
    drop_files(first, reference_files, qtbot)
    card = first.references.cards[first.state.references[1].uid]
    type_into(qtbot, card.spin, "0.4")
    first.shutdown()
    again: MainWindow = make_window(load_settings(path), path, check_network=False)
    assert [(r.path, r.weight) for r in again.state.references] == [
        (str(reference_files[0].resolve()), 1.0),
        (str(reference_files[1].resolve()), 0.4),
    ]
    qtbot.waitUntil(lambda: all(c.has_crop() for c in again.references.cards.values()))


# ---------------------------------------------------------------------------------------- smaller


def test_a_refusal_goes_away_once_its_cause_is_fixed(make_window, qtbot, tmp_path: Path, tiny_models) -> None:
    window: MainWindow = make_window(
        tiny_settings(tmp_path, ModelPaths(), prompt="a fox"), check_network=False
    )
    window.tabs.setCurrentIndex(0)
    assert window.generate() is None
    assert window.banner.kind == "error" and "base model" in window.banner.text()
    with qtbot.waitSignal(window.models_ready, timeout=60_000):
        window.state.set_models(tiny_models)
    assert window.banner.text() == ""


def test_another_message_is_not_taken_down(make_window, qtbot, tmp_path: Path, tiny_models) -> None:
    window: MainWindow = make_window(tiny_settings(tmp_path, tiny_models), check_network=False)
    assert window.generate() is None  # no reference, no prompt
    window.show_note("A note about something else.")
    window.state.set("prompt", "a fox")
    assert window.banner.text() == "A note about something else."


def test_the_size_list_names_the_size_on_first_start(make_window, tmp_path: Path, tiny_models) -> None:
    window: MainWindow = make_window(tiny_settings(tmp_path, tiny_models, width=512, height=512))
    assert window.settings_panel.size_preset.currentText() == "Square 512 × 512"


def test_the_selected_thumbnail_keeps_its_colours(window: MainWindow, qtbot, reference_files) -> None:
    """The selection was a blue tint over the thumbnail; an artist judges colour on it."""
    drop_files(window, reference_files[:1], qtbot)
    assert run_job(window, qtbot) == "finished"
    gallery = window.gallery
    item = gallery.item(0)

    def drawn() -> np.ndarray:
        qtbot.wait(30)
        image = gallery.viewport().grab(gallery.visualItemRect(item)).toImage()
        pixels = np.asarray(qimage_to_pil(image).convert("RGB"), dtype=int)
        h, w = pixels.shape[:2]
        return pixels[h // 2 - 30 : h // 2 + 30, w // 2 - 30 : w // 2 + 30]  # inside the border

    gallery.setCurrentRow(0)
    assert item.isSelected()
    selected = drawn()
    gallery.clearSelection()
    assert not item.isSelected()
    plain = drawn()
    assert np.abs(selected - plain).mean() < 2, "selecting a picture changes its colours"


def test_canvas_keys_work_after_send_to_canvas_and_the_focusing_click_paints_nothing(
    window: MainWindow, qtbot, reference_files
) -> None:
    drop_files(window, reference_files[:1], qtbot)
    assert run_job(window, qtbot) == "finished"
    window.activateWindow()
    window.to_canvas_button.click()
    canvas = window.canvas.canvas
    qtbot.waitUntil(canvas.has_image)
    assert QApplication.focusWidget() is canvas
    size = canvas.brush.size
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_BracketRight)
    assert canvas.brush.size > size

    click(qtbot, window.prompt.prompt)  # typing a prompt, then back to the canvas
    qtbot.waitUntil(window.prompt.prompt.hasFocus)
    mode = window.state.mode
    centre = canvas.viewport().rect().center()
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    assert canvas.hasFocus()
    assert window.canvas.layer.undo_steps() == 0 and window.canvas.layer.is_empty()
    assert window.state.mode == mode
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=centre)  # now it paints
    assert window.canvas.layer.undo_steps() == 1 and not window.canvas.layer.is_empty()


def test_after_a_cancel_or_a_failure_the_picture_before_comes_back(
    window: MainWindow, qtbot, reference_files, tmp_path: Path
) -> None:
    drop_files(window, reference_files[:1], qtbot)
    assert window.view.placeholder() != "" and "Press Generate" in window.view.placeholder()
    assert run_job(window, qtbot) == "finished"
    [picture] = outputs(window)
    window.gallery.setCurrentRow(0)

    doomed = tmp_path / "doomed.png"
    make_reference_image(8).save(doomed)
    drop_files(window, [doomed], qtbot)
    doomed.unlink()  # the job cannot read it: it fails
    assert run_job(window, qtbot) == "failed"
    assert window.gallery.current_path() == picture
    assert window.view.has_image() and picture.name in window.caption.text()
    assert all(b.isEnabled() for b in window._image_actions)

    window.state.remove_reference(window.state.references[-1].uid)
    window.state.set("steps", 150)

    def cancel_soon() -> None:
        window.generate()
        QTimer.singleShot(30, window.cancel)

    assert run_job(window, qtbot, cancel_soon) == "cancelled"
    assert window.gallery.current_path() == picture and all(b.isEnabled() for b in window._image_actions)


def _texts(root: QWidget) -> list[tuple[QWidget, str]]:
    found = []
    for widget in root.findChildren(QWidget):
        if isinstance(widget, (QAbstractButton, QLabel)) and widget.text():
            found.append((widget, widget.text()))
        if isinstance(widget, QTabBar):
            found.extend((widget, widget.tabText(i)) for i in range(widget.count()))
    return found


def test_every_text_renders_in_the_fonts_at_hand(window: MainWindow, reference_files) -> None:
    """🎲 needs a colour emoji font that many systems lack: it showed as an empty box."""
    window.references.add_files(reference_files)
    window.control.add_control()
    missing = sorted(
        {
            f"{ch!r} (U+{ord(ch):04X}) in {text[:40]!r}"
            for widget, text in _texts(window)
            for ch in text
            if not ch.isspace() and not QFontMetrics(widget.font()).inFontUcs4(ord(ch))
        }
    )
    assert not missing, "characters no installed font draws:\n" + "\n".join(missing)
    dice = window.settings_panel.randomize
    assert not dice.icon().isNull() and dice.accessibleName()


def test_file_dialogs_open_where_the_last_one_of_their_kind_was(
    make_window, tmp_path: Path, tiny_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos, starts = tmp_path / "photos", tmp_path / "starts"
    for folder in (photos, starts):
        folder.mkdir()
        make_reference_image(1).save(folder / "a.png")
    asked: list[tuple[str, str]] = []

    def answer(folder: Path):
        def dialog(_parent, title, start, _filters=""):
            asked.append((title, start))
            return [str(folder / "a.png")], ""

        return dialog

    settings = tiny_settings(tmp_path, tiny_models)
    path = tmp_path / "settings.json"
    window: MainWindow = make_window(settings, path, check_network=False)
    monkeypatch.setattr(QFileDialog, "getOpenFileNames", answer(photos))
    window.references.open_dialog()
    window.references.open_dialog()
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a: (answer(starts)(*a)[0][0], ""))
    window.init_panel.open_dialog()
    window.init_panel.open_dialog()
    window.shutdown()
    assert asked[1][1] == str(photos)  # the second reference dialog opens where the first ended
    assert asked[2][1] != str(photos)  # a start picture is another kind: not the references' folder
    assert asked[3][1] == str(starts)
    assert str(settings.models_path) not in {start for _title, start in asked}
    restarted = load_settings(path)
    assert restarted.dialog_folders["reference"] == str(photos)


def test_tab_reaches_every_control_of_the_column_in_reading_order(
    window: MainWindow, qtbot, reference_files, tmp_path: Path
) -> None:
    drop_files(window, reference_files, qtbot)
    window.init_panel.mode_buttons["img2img"].click()
    window.view_tabs.setCurrentWidget(window.result_page)
    window.activateWindow()
    window.picker.base.setFocus(Qt.FocusReason.TabFocusReason)
    seen: list[QWidget] = []
    for _ in range(120):
        widget = QApplication.focusWidget()
        if widget is window.generate_panel.generate or widget in seen:
            break
        seen.append(widget)
        qtbot.keyClick(widget, Qt.Key.Key_Tab)
    init, cards = window.init_panel, list(window.references.cards.values())
    wanted = {
        # One stop for the mode, as for any group of choices: the arrow keys move within it.
        "the mode": [init.mode_buttons["img2img"]],
        "start picture buttons": [init.open_button, init.paste_button, init.canvas_button],
        "strength": [init.strength_slider, init.strength_spin],
        "reference controls": [w for c in cards for w in (c.slider, c.spin, c.remove_button)],
        "λ": [window.balance.slider, window.balance.spin],
        "settings": [window.settings_panel.steps, window.settings_panel.seed, window.settings_panel.lock],
    }
    skipped = {name: [w.toolTip()[:30] for w in ws if w not in seen] for name, ws in wanted.items()}
    assert not any(skipped.values()), f"Tab never reaches: {skipped}"
    column = window.findChild(QWidget, "controlColumn")

    def section(widget: QWidget) -> int:  # which panel of the column, counted from the top
        while widget.parentWidget() is not column:
            widget = widget.parentWidget()
        return widget.mapTo(column, widget.rect().topLeft()).y()

    order = [section(w) for w in seen if column.isAncestorOf(w)]
    assert order == sorted(order), "Tab jumps back up the column"
    assert seen[-1] is not None and QApplication.focusWidget() is window.generate_panel.generate

    mode = init.mode_buttons["img2img"]
    mode.setFocus(Qt.FocusReason.TabFocusReason)
    qtbot.keyClick(mode, Qt.Key.Key_Right)
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_Space)
    assert window.state.mode == "inpaint"


def test_delete_in_history_moves_the_picture_to_the_trash(
    window: MainWindow, qtbot, reference_files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # a trash of the test's own
    (tmp_path / "data").mkdir()
    drop_files(window, reference_files[:1], qtbot)
    assert run_job(window, qtbot) == "finished"
    assert run_job(window, qtbot) == "finished"
    newest, older = window.gallery.paths()
    window.gallery.setCurrentRow(0)
    window.gallery.setFocus()
    qtbot.keyClick(window.gallery, Qt.Key.Key_Delete)
    assert not newest.exists() and window.gallery.paths() == [older]
    assert (tmp_path / "data" / "Trash" / "files" / newest.name).is_file()  # it can be restored
    assert window.gallery.current_path() == older and window.view.has_image()

    def no_trash(_path: str) -> bool:
        return False

    monkeypatch.setattr(QFile, "moveToTrash", no_trash)  # a system without a trash: it asks first
    asked: list[str] = []
    _answer_next_box("Cancel", asked)
    assert not window.delete_picture(older) and older.exists() and "for good" in asked[0]
    _answer_next_box("&Yes", asked)
    assert window.delete_picture(older) and not older.exists()
    assert window.gallery.count() == 0 and not window.view.has_image()
    assert not any(b.isEnabled() for b in window._image_actions)


def _answer_next_box(button_text: str, seen: list[str]) -> None:
    def press() -> None:
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, press)
            return
        seen.append(box.text())
        next(b for b in box.buttons() if b.text() == button_text).click()

    QTimer.singleShot(20, press)


def test_closing_while_a_picture_is_made_asks_first(window: MainWindow, qtbot, reference_files) -> None:
    drop_files(window, reference_files[:1], qtbot)
    window.state.set("steps", 150)
    window.state.set("num_images", 8)
    ended: list[str] = []
    window.generation_ended.connect(ended.append)
    window.generate()
    qtbot.waitUntil(lambda: window._running is not None, timeout=30_000)
    asked: list[str] = []
    _answer_next_box("Keep working", asked)
    window.close()
    assert window.isVisible() and asked and "being made" in asked[0]
    assert not ended  # still running
    _answer_next_box("Close and cancel", asked)
    window.close()
    assert not window.isVisible() and len(asked) == 2
    assert outputs(window) == []  # cancelled, nothing saved


def test_the_picker_marks_inpainting_models(
    make_window, qtbot, tmp_path: Path, tiny_models, tiny_sd15_inpaint: Path
) -> None:
    models = ModelPaths(str(tiny_sd15_inpaint), tiny_models.adapter, tiny_models.image_encoder)
    window: MainWindow = make_window(tiny_settings(tmp_path, models), check_network=False)
    picker = window.picker
    qtbot.waitUntil(lambda: picker.snapshot.find(tiny_sd15_inpaint) is not None, timeout=30_000)
    index = picker.base.findData(str(tiny_sd15_inpaint.resolve()))
    assert index >= 0
    assert picker.base.itemText(index).endswith("· Inpainting")
    assert "inpainting model" in picker.about.text()
    assert "Inpainting model" not in picker.base.itemText(picker.base.findData(tiny_models.base))
