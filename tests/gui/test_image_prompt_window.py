"""The per-reference image-prompt controls in the window, set as people set them, end to end.

Each control is set through the widgets (typed fractions, a list box picked by keyboard, mouse drags
on the crop editor and on the Regions canvas, a dropped negative image), a picture is generated with
the tiny models, the request stored in its PNG is read back, and Reuse settings brings it back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.metadata import request_from_metadata
from ipa_studio.core.models.tiny import ENC_IMAGE, make_reference_image
from ipa_studio.core.references import ReferenceStore, encoder_inputs
from ipa_studio.core.request import EncoderView, GenerationRequest
from ipa_studio.gui import dialogs
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.panels.references import ReferenceCard, file_urls_mime
from ipa_studio.gui.qimage import qimage_to_pil
from tests.gui.conftest import tiny_settings
from tests.gui.people import click, type_into
from tests.gui.test_generation import outputs, run_job

LEFT = Qt.MouseButton.LeftButton
NO_MOD = Qt.KeyboardModifier.NoModifier


def add_references(window: MainWindow, qtbot, paths: list[Path]) -> list[ReferenceCard]:
    window.references.add_files(paths)
    cards = [window.references.cards[r.uid] for r in window.state.references]
    qtbot.waitUntil(lambda: all(card.has_crop() for card in cards), timeout=30_000)
    QApplication.processEvents()  # laid out before anyone clicks into them
    return cards


def open_more(qtbot, card: ReferenceCard) -> None:
    assert not card.is_more_open()  # collapsed until asked for
    click(qtbot, card.more_button)
    qtbot.waitUntil(card.is_more_open)


def choose_fit(qtbot, card: ReferenceCard, text: str) -> None:
    """Pick an entry of "Encoder sees" with the keyboard, as people do in a list box."""
    box = card.fit_box
    click(qtbot, box)
    QApplication.processEvents()
    popup = box.view()
    target = box.findText(text)
    while box.view().currentIndex().row() != target:
        key = Qt.Key.Key_Down if popup.currentIndex().row() < target else Qt.Key.Key_Up
        qtbot.keyClick(popup, key)
    qtbot.keyClick(popup, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: box.currentText() == text)


def drag(widget, start: QPointF, end: QPointF, steps: int = 6) -> None:
    """Press, move in steps, release: a mouse drag through Qt's own event path."""
    a, b = start.toPoint(), end.toPoint()
    QTest.mousePress(widget, LEFT, NO_MOD, a)
    for i in range(1, steps + 1):
        QTest.mouseMove(widget, a + (b - a) * i / steps)
    QTest.mouseRelease(widget, LEFT, NO_MOD, b)


def last_request(window: MainWindow) -> GenerationRequest:
    return request_from_metadata(read_png_metadata(outputs(window)[-1]))


def shown_pixels(card: ReferenceCard) -> np.ndarray:
    return np.asarray(qimage_to_pil(card.encoder_image).convert("RGB"))


def paint(window: MainWindow, points: list[tuple[float, float]]) -> None:
    """A brush stroke on the Regions canvas through picture points (0–1 of its width / height)."""
    canvas = window.regions.canvas
    width, height = window.regions.region_size()
    at = [canvas.mapFromScene(QPointF(x * width, y * height)) for x, y in points]
    QTest.mousePress(canvas.viewport(), LEFT, NO_MOD, at[0])
    for p in at[1:]:
        QTest.mouseMove(canvas.viewport(), p)
    QTest.mouseRelease(canvas.viewport(), LEFT, NO_MOD, at[-1])


def test_more_is_collapsed_and_the_step_window_reaches_the_picture_and_comes_back(
    window: MainWindow, qtbot, reference_files
) -> None:
    [card] = add_references(window, qtbot, reference_files[:1])
    assert card.more.isHidden()
    open_more(qtbot, card)
    type_into(qtbot, card.start_spin, "0.2")
    type_into(qtbot, card.end_spin, "0.8")
    [item] = window.state.references
    assert (item.start, item.end) == (0.2, 0.8)
    assert "steps 0.2–0.8" in card.tags.text()

    assert run_job(window, qtbot) == "finished"
    stored = last_request(window).references[0]
    assert (stored.start, stored.end) == (0.2, 0.8)
    assert "Reference windows: 0.2-0.8" in read_png_metadata(outputs(window)[-1])["parameters"]

    type_into(qtbot, card.start_spin, "0")  # changed after, then brought back by Reuse
    window.state.clear_references()
    assert window.reuse_settings(outputs(window)[-1])
    [item] = window.state.references
    assert (item.start, item.end) == (0.2, 0.8)
    card = window.references.cards[item.uid]
    assert (card.start_spin.value(), card.end_spin.value()) == (0.2, 0.8)


def test_a_start_typed_past_the_end_moves_the_end_and_an_empty_window_is_refused(
    window: MainWindow, qtbot, reference_files
) -> None:
    [card] = add_references(window, qtbot, reference_files[:1])
    open_more(qtbot, card)
    type_into(qtbot, card.end_spin, "0.5")
    type_into(qtbot, card.start_spin, "0.7")
    [item] = window.state.references
    assert (item.start, item.end) == (0.7, 0.7)
    assert card.end_spin.value() == 0.7  # the card shows what the state holds
    assert window.generate() is None
    assert "its start must come before its end" in window.banner.text()


def test_crop_editor_drags_and_resizes_the_square_and_the_card_shows_the_encoder_input(
    window: MainWindow, qtbot, tmp_path: Path
) -> None:
    path = tmp_path / "wide.png"
    make_reference_image(7, size=(400, 200)).save(path)
    [card] = add_references(window, qtbot, [path])
    # Centre, before anything is chosen: the core's own encoder input, pixel for pixel.
    assert np.array_equal(shown_pixels(card), np.asarray(encoder_inputs(path, EncoderView(), ENC_IMAGE)[0]))

    open_more(qtbot, card)
    choose_fit(qtbot, card, "Crop")
    editor = card.crop_editor
    qtbot.waitUntil(lambda: editor.isVisible() and editor.has_picture())
    uid = window.state.references[0].uid
    qtbot.waitUntil(lambda: window.state.reference(uid).box == (100, 0, 200))  # the centre square first

    # Drag the square far to the left: it stops at the picture's edge.
    rect = editor.box_rect()
    drag(editor, rect.center(), rect.center() - QPointF(rect.width() * 3, 0))
    assert window.state.reference(uid).box == (0, 0, 200)
    # Resize from the bottom-right corner towards the middle (-100 px across, -50 down): the side
    # follows the larger of the two (-50), stays square, and the top-left corner stays put.
    rect = editor.box_rect()
    drag(editor, rect.bottomRight(), rect.bottomRight() - QPointF(rect.width() / 2, rect.height() / 4))
    left, top, side = window.state.reference(uid).box
    assert (left, top) == (0, 0) and 146 <= side <= 154
    # Grow it past the bottom: it stops at the picture's height, inside the picture.
    rect = editor.box_rect()
    drag(editor, rect.bottomRight(), rect.bottomRight() + QPointF(rect.width() * 4, rect.height() * 4))
    assert window.state.reference(uid).box == (0, 0, 200)
    # Move it right by keys: a percent of the picture each press.
    editor.setFocus()
    for _ in range(5):
        qtbot.keyClick(editor, Qt.Key.Key_Right)
    box = window.state.reference(uid).box
    assert box == (20, 0, 200)

    view = EncoderView("crop", box)
    qtbot.waitUntil(lambda: card.encoder_image.width() == ENC_IMAGE and "crop" in card.tags.text())
    qtbot.waitUntil(
        lambda: np.array_equal(shown_pixels(card), np.asarray(encoder_inputs(path, view, ENC_IMAGE)[0]))
    )

    for fit, text in (("pad", "Pad to square"), ("tile", "Tile")):
        choose_fit(qtbot, card, text)
        squares = encoder_inputs(path, EncoderView(fit), ENC_IMAGE)  # type: ignore[arg-type]
        expected = np.concatenate([np.asarray(s) for s in squares], axis=1)  # tiles side by side
        qtbot.waitUntil(
            lambda e=expected: shown_pixels(card).shape == e.shape and np.array_equal(shown_pixels(card), e)
        )
    assert len(encoder_inputs(path, EncoderView("tile"), ENC_IMAGE)) == 2

    choose_fit(qtbot, card, "Crop")  # the square chosen before is still there
    assert window.state.reference(uid).view == view
    assert run_job(window, qtbot) == "finished"
    assert last_request(window).references[0].view == view
    assert 'Reference views: "crop:20,0,200"' in read_png_metadata(outputs(window)[-1])["parameters"]

    window.state.update_reference(uid, fit="centre")
    assert window.reuse_settings(outputs(window)[-1])
    [item] = window.state.references
    assert item.view == view and window.references.cards[item.uid].fit_box.currentText() == "Crop"


def test_regions_painted_and_loaded_reach_the_request_and_come_back(
    window: MainWindow, qtbot, reference_files, tmp_path: Path, monkeypatch
) -> None:
    first, second = add_references(window, qtbot, reference_files)
    uid_a, uid_b = (r.uid for r in window.state.references)
    # A: its region from a file (the right half), through the card's Load… button.
    right = np.zeros((64, 64), np.uint8)
    right[:, 32:] = 255
    right_file = tmp_path / "right.png"
    Image.fromarray(right, "L").save(right_file)
    monkeypatch.setattr(dialogs, "open_file", lambda *a, **k: str(right_file))
    open_more(qtbot, first)
    click(qtbot, first.load_button)
    assert window.state.reference(uid_a).mask_path == str(right_file)
    qtbot.waitUntil(lambda: not window.regions.layers[uid_a].is_empty())  # shown tinted on Regions

    # B: painted on the canvas: Paint on its card opens the Regions page for it.
    open_more(qtbot, second)
    click(qtbot, second.paint_button)
    assert window.view_tabs.currentWidget() is window.regions and window.regions.selected == uid_b
    window.regions.canvas.set_brush_size(20)
    paint(window, [(0.15, 0.1), (0.15, 0.5), (0.15, 0.9)])
    painted = window.state.reference(uid_b).mask_path
    assert painted and Path(painted).name.startswith("region-")
    assert second.region_status.text() == "Painted on the canvas"
    mask_b = np.asarray(Image.open(painted))
    assert mask_b.shape == (64, 64) and mask_b[:, :16].mean() > 100 and mask_b[:, 40:].max() == 0
    # A's layer was not touched by B's stroke.
    assert np.array_equal(window.regions.layers[uid_a].array(), right)

    assert run_job(window, qtbot) == "finished"
    stored = last_request(window).references
    assert np.array_equal(np.asarray(Image.open(stored[0].mask)), right)
    assert np.array_equal(np.asarray(Image.open(stored[1].mask)), mask_b)
    assert 'Reference masks: "yes, yes"' in read_png_metadata(outputs(window)[-1])["parameters"]

    click(qtbot, first.clear_region_button)  # changed, then Reuse brings both regions back
    assert window.state.reference(uid_a).mask_path == ""
    qtbot.waitUntil(lambda: window.regions.layers[uid_a].is_empty())
    assert window.reuse_settings(outputs(window)[-1])
    a, b = window.state.references
    assert a.mask_path == str(stored[0].mask) and b.mask_path == str(stored[1].mask)
    qtbot.waitUntil(lambda: np.array_equal(window.regions.layers[a.uid].array(), right))
    qtbot.waitUntil(lambda: np.array_equal(window.regions.layers[b.uid].array(), mask_b))


def test_negative_image_dropped_and_its_noise_typed_reach_the_request_and_come_back(
    window: MainWindow, qtbot, reference_files, tmp_path: Path
) -> None:
    add_references(window, qtbot, reference_files[:1])
    negative = tmp_path / "negative.png"
    make_reference_image(11, size=(70, 70)).save(negative)
    slot = window.references.negative
    mime = file_urls_mime([negative])
    args = (Qt.DropAction.CopyAction, mime, LEFT, NO_MOD)
    enter = QDragEnterEvent(QPoint(10, 10), *args)
    QApplication.sendEvent(slot, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(10, 10), *args)
    QApplication.sendEvent(slot, drop)
    assert window.state.negative_path == str(negative)
    qtbot.waitUntil(lambda: slot.thumb.pixmap() is not None and not slot.thumb.pixmap().isNull())
    type_into(qtbot, slot.noise, "0.3")
    assert window.state.negative_noise == 0.3

    assert run_job(window, qtbot) == "finished"
    stored = last_request(window).negative_image
    assert stored is not None and stored.noise == 0.3
    assert Path(str(stored.image)).read_bytes() == negative.read_bytes()  # a kept copy
    assert 'Negative image: "image, noise 0.3"' in read_png_metadata(outputs(window)[-1])["parameters"]

    click(qtbot, slot.clear_button)
    type_into(qtbot, slot.noise, "0")
    assert window.state.build_request().negative_image is None
    assert window.reuse_settings(outputs(window)[-1])
    assert window.state.negative_path == str(stored.image) and window.state.negative_noise == 0.3
    assert slot.noise.value() == 0.3


def test_a_saved_reference_costs_no_encoder_call_after_a_restart(
    make_window, qtbot, tmp_path: Path, tiny_models, reference_files
) -> None:
    settings = tiny_settings(tmp_path, tiny_models)
    first = make_window(settings, check_network=False)
    [card] = add_references(first, qtbot, reference_files[:1])
    open_more(qtbot, card)
    click(qtbot, card.save_button)
    store = ReferenceStore(settings.library_path)
    qtbot.waitUntil(lambda: len(store.entries()) == 1)
    assert run_job(first, qtbot) == "finished"
    assert first.worker.engine_stats().image_encoder_calls == 1  # encoded once, and stored
    assert store.entries()[0].features == 1
    first.shutdown()

    # A new window, a new engine: the reference comes from the library list, by double-click.
    second = make_window(tiny_settings(tmp_path, tiny_models), check_network=False)
    second.state.clear_references()
    panel = second.references
    click(qtbot, panel.library_button)
    assert panel.library_list.count() == 1
    second.column_scroll.ensureWidgetVisible(panel.library_list)
    qtbot.waitUntil(lambda: panel.library_list.visualItemRect(panel.library_list.item(0)).isValid())
    rect = panel.library_list.visualItemRect(panel.library_list.item(0))
    # A double-click is a click and then a second press that Qt reports as a double-click.
    QTest.mouseClick(panel.library_list.viewport(), LEFT, NO_MOD, rect.center())
    QTest.mouseDClick(panel.library_list.viewport(), LEFT, NO_MOD, rect.center())
    qtbot.waitUntil(lambda: len(second.state.references) == 1)
    assert second.state.references[0].path == str(store.entries()[0].path)
    assert run_job(second, qtbot) == "finished"
    assert second.worker.engine_stats().image_encoder_calls == 0


def test_the_library_drags_onto_the_references(window: MainWindow, qtbot, reference_files) -> None:
    store = ReferenceStore(window.settings.library_path)
    entry = store.add(reference_files[1])
    panel = window.references
    panel.set_library_open(True)
    item = panel.library_list.item(0)
    mime = panel.library_list.mimeData([item])
    assert [u.toLocalFile() for u in mime.urls()] == [str(entry.path.resolve())]
    args = (Qt.DropAction.CopyAction, mime, LEFT, NO_MOD)
    enter = QDragEnterEvent(QPoint(20, 20), *args)
    QApplication.sendEvent(panel, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(panel, QDropEvent(QPointF(20, 20), *args))
    assert [Path(r.path).resolve() for r in window.state.references] == [entry.path.resolve()]


def test_gui_does_not_stall_while_the_controls_are_used_during_a_generation(
    window: MainWindow, qtbot, reference_files, tmp_path: Path
) -> None:
    """The 50 ms budget holds with every control set, while a crop square is dragged (its encoder
    input is recomputed) and a region is painted (and saved) during the job."""
    from tests.gui.test_generation import StallMeter

    window.state.set("width", 256)
    window.state.set("height", 256)
    window.state.set("steps", 16)
    first, second = add_references(window, qtbot, reference_files)
    negative = tmp_path / "negative.png"
    make_reference_image(11, size=(300, 200)).save(negative)
    window.state.set_negative(path=negative, noise=0.4)
    open_more(qtbot, first)
    choose_fit(qtbot, first, "Crop")
    qtbot.waitUntil(lambda: first.crop_editor.has_picture() and window.state.references[0].box is not None)
    window.show_regions(window.state.references[1].uid)
    paint(window, [(0.6, 0.2), (0.7, 0.8)])
    before = window.state.references[0].box
    region_before = window.state.references[1].mask_path

    did: list[str] = []

    def use_the_controls(_job: int, step: int, *_rest: object) -> None:
        if step != 3 or did:
            return
        did.append("drag")
        rect = first.crop_editor.box_rect()
        drag(first.crop_editor, rect.center(), rect.center() + QPointF(rect.width() / 3, 0))
        window.show_regions(window.state.references[1].uid)  # Generate showed the Result page
        paint(window, [(0.1, 0.1), (0.3, 0.9)])
        did.append("paint")

    window.worker.job_progress.connect(use_the_controls, Qt.ConnectionType.QueuedConnection)
    with StallMeter() as job:
        assert run_job(window, qtbot) == "finished"
        qtbot.waitUntil(lambda: first.encoder_image.width() == ENC_IMAGE and not window.loader.active())
    print(
        f"\nworst GUI stall: {job.worst_ms:.1f} ms using the controls during a job ({len(job.ticks)} ticks)"
    )
    assert did == ["drag", "paint"]
    assert window.state.references[0].box != before  # the drag moved it
    assert window.state.references[1].mask_path not in ("", region_before)  # the stroke was saved
    assert len(job.ticks) > 20
    assert job.worst_ms < 50, f"the GUI thread stalled for {job.worst_ms:.1f} ms"


def test_settings_of_another_program_leave_the_reference_controls_alone(
    window: MainWindow, qtbot, reference_files
) -> None:
    from ipa_studio.core.foreign_metadata import read_foreign_settings
    from ipa_studio.gui.foreign_settings import apply_foreign_settings

    add_references(window, qtbot, reference_files[:1])
    uid = window.state.references[0].uid
    window.state.update_reference(uid, start=0.3, fit="pad")
    window.state.set_negative(noise=0.5)
    a1111 = {"parameters": "a lighthouse\nSteps: 20, Sampler: Euler a, CFG scale: 6, Seed: 7, Size: 512x512"}
    found = read_foreign_settings(a1111)
    assert found is not None
    apply_foreign_settings(window.state, found)
    assert window.state.prompt == "a lighthouse"
    item = window.state.reference(uid)
    assert (item.start, item.fit, window.state.negative_noise) == (0.3, "pad", 0.5)


def test_the_reference_controls_come_back_after_a_restart(
    make_window, qtbot, tmp_path: Path, tiny_models, reference_files
) -> None:
    from ipa_studio.core.settings import load_settings

    path = tmp_path / "settings.json"
    first = make_window(tiny_settings(tmp_path, tiny_models), path, check_network=False)
    a, b = add_references(first, qtbot, reference_files)
    open_more(qtbot, a)
    type_into(qtbot, a.start_spin, "0.25")
    choose_fit(qtbot, a, "Crop")
    uid_a, uid_b = (r.uid for r in first.state.references)
    qtbot.waitUntil(lambda: first.state.reference(uid_a).box is not None)
    first.show_regions(uid_b)
    paint(first, [(0.8, 0.2), (0.8, 0.8)])
    before = [(r.start, r.end, r.fit, r.box, r.mask_path) for r in first.state.references]
    assert before[1][4]
    first.shutdown()

    again = make_window(load_settings(path), path, check_network=False)
    assert [(r.start, r.end, r.fit, r.box, r.mask_path) for r in again.state.references] == before
    uid = again.state.references[1].uid
    qtbot.waitUntil(lambda: not again.regions.layers[uid].is_empty())
