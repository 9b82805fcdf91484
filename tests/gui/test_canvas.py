"""The mask canvas on its own: mouse strokes through QTest, keys, undo / redo, PNG in and out.

The canvas shows the picture at 1:1 (or a known zoom), so a viewport position maps to an exact image
position; expected pixels are worked out here from distances to the stroke, independently of the
canvas code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, QRect, Qt, QUrl
from PySide6.QtGui import QColor, QGuiApplication, QImage
from PySide6.QtTest import QTest

from ipa_studio.core.images import load_mask
from ipa_studio.gui.canvas.editor import CanvasEditor
from ipa_studio.gui.canvas.mask import Brush, MaskLayer
from ipa_studio.gui.canvas.refcount_guard import guard_singletons, pyside_drops_references
from ipa_studio.gui.canvas.view import MaskCanvas
from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.state import ViewState

W, H = 200, 150
NO_MOD = Qt.KeyboardModifier.NoModifier
LEFT, RIGHT = Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton


@pytest.fixture
def canvas(qtbot) -> MaskCanvas:
    layer = MaskLayer(W, H)
    view = MaskCanvas(layer)
    qtbot.addWidget(view)
    view.resize(420, 360)
    view.show()
    image = QImage(W, H, QImage.Format.Format_RGB888)
    image.fill(QColor(60, 110, 160))
    view.set_image(image)
    view.actual_size()
    qtbot.waitExposed(view)
    return view


def _viewport_point(view: MaskCanvas, x: float, y: float) -> QPoint:
    point = view.mapFromScene(QPointF(x, y))
    # At 1:1 (or 2:1) an image point and a viewport pixel correspond exactly: check, do not assume.
    assert view.image_point(QPointF(point)) == QPointF(x, y)
    return point


def stroke(view: MaskCanvas, points: list[tuple[float, float]], button: Qt.MouseButton = LEFT) -> None:
    vp = view.viewport()
    at = [_viewport_point(view, x, y) for x, y in points]
    QTest.mousePress(vp, button, NO_MOD, at[0])
    for p in at[1:]:
        QTest.mouseMove(vp, p)
    QTest.mouseRelease(vp, button, NO_MOD, at[-1])


def distance_to_segment(a: tuple[float, float], b: tuple[float, float], shape=(H, W)) -> np.ndarray:
    """Distance from every pixel centre to the segment a–b (float64, computed independently)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) + 0.5
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    length2 = dx * dx + dy * dy
    t = np.zeros_like(xs) if length2 == 0 else np.clip(((xs - ax) * dx + (ys - ay) * dy) / length2, 0, 1)
    return np.hypot(xs - (ax + t * dx), ys - (ay + t * dy))


def test_a_brush_stroke_paints_the_brush_width_along_the_mouse_path(canvas: MaskCanvas) -> None:
    canvas.set_brush_size(20)
    canvas.set_hardness(1.0)
    stroke(canvas, [(50, 50), (70, 60), (100, 60)])
    mask = canvas.layer.array()
    d = np.minimum(distance_to_segment((50, 50), (70, 60)), distance_to_segment((70, 60), (100, 60)))
    assert (mask[d <= 9.0] == 255).all()  # inside: fully painted (hard brush, radius 10)
    assert (mask[d >= 10.0] == 0).all()  # outside the radius: untouched
    edge = (d > 9.0) & (d < 10.0)
    assert edge.any() and (mask[edge] > 0).all()  # one pixel of antialiasing, no gaps
    assert canvas.layer.undo_steps() == 1  # the whole stroke is one undo step


def test_hardness_feathers_the_edge(canvas: MaskCanvas) -> None:
    canvas.set_brush_size(40)
    canvas.set_hardness(0.5)
    stroke(canvas, [(60, 60)])  # a single dab
    mask = canvas.layer.array().astype(int)
    d = distance_to_segment((60, 60), (60, 60))
    assert (mask[d <= 10.0] == 255).all()  # the hard core: radius × hardness
    assert (mask[d >= 20.0] == 0).all()
    ring = (d > 10.5) & (d < 19.5)
    assert ((mask[ring] > 0) & (mask[ring] < 255)).all()  # the feather: partial values all around
    # Along a radius the values fall steadily from the core to the edge.
    profile = mask[60, 60:85]
    assert (np.diff(profile) <= 0).all() and profile[0] == 255 and profile[-1] == 0
    assert 100 < mask[60, 60 + 15] < 160  # halfway through the feather ≈ half strength

    canvas.layer.clear()
    canvas.set_hardness(1.0)
    stroke(canvas, [(60, 60)])
    hard = canvas.layer.array()
    assert ((hard > 0) & (hard < 255)).sum() < ((mask > 0) & (mask < 255)).sum() / 4


def test_eraser_and_right_button_take_paint_away(canvas: MaskCanvas, qtbot) -> None:
    canvas.layer.fill()
    canvas.set_brush_size(10)
    canvas.set_hardness(1.0)
    qtbot.keyClick(canvas, Qt.Key.Key_X)  # brush → eraser
    assert canvas.brush.eraser
    stroke(canvas, [(20, 30), (180, 30)])
    mask = canvas.layer.array()
    d = distance_to_segment((20, 30), (180, 30))
    assert (mask[d <= 4.0] == 0).all() and (mask[d >= 5.0] == 255).all()

    qtbot.keyClick(canvas, Qt.Key.Key_X)  # back to the brush; the right button still erases
    assert not canvas.brush.eraser
    stroke(canvas, [(100, 80), (100, 140)], button=RIGHT)
    mask = canvas.layer.array()
    d2 = distance_to_segment((100, 80), (100, 140))
    assert (mask[d2 <= 4.0] == 0).all() and (mask[(d >= 5.0) & (d2 >= 5.0)] == 255).all()


def test_bracket_keys_change_the_size_that_strokes_paint(canvas: MaskCanvas, qtbot) -> None:
    canvas.set_brush_size(20)
    canvas.set_hardness(1.0)
    sizes = [canvas.brush.size]
    for _ in range(3):
        qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
        sizes.append(canvas.brush.size)
    assert sizes == [20, 24, 29, 35]
    stroke(canvas, [(100, 75)])
    mask = canvas.layer.array()
    d = distance_to_segment((100, 75), (100, 75))
    assert (mask[d <= 16.5] == 255).all() and (mask[d >= 17.5] == 0).all()  # radius 17.5
    for _ in range(40):
        qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.brush.size == 1  # never below one pixel


def test_strokes_touch_only_their_own_rectangle(canvas: MaskCanvas) -> None:
    """Painting is incremental: each mouse move reports (and redraws) only the segment's box."""
    rects: list[QRect] = []
    canvas.layer.changed.connect(rects.append)
    canvas.set_brush_size(16)
    stroke(canvas, [(20, 20), (30, 22), (40, 24), (50, 26)])
    assert len(rects) >= 4
    assert all(r.width() <= 10 + 16 + 2 and r.height() <= 2 + 16 + 2 for r in rects)
    # The overlay holds the mask's colour exactly where the mask is painted, and nothing elsewhere.
    overlay = canvas.overlay._overlay
    painted = canvas.layer.array() > 0
    alpha = np.array([[overlay.pixelColor(x, y).alpha() for x in range(0, W, 5)] for y in range(0, H, 5)])
    assert ((alpha > 0) == painted[::5, ::5]).all()


def test_zoomed_strokes_land_at_image_coordinates(canvas: MaskCanvas) -> None:
    canvas.set_zoom(2.0)
    canvas.set_brush_size(6)
    canvas.set_hardness(1.0)
    canvas.centerOn(QPointF(100, 75))
    stroke(canvas, [(90.5, 70.0), (110.0, 70.0)])
    mask = canvas.layer.array()
    d = distance_to_segment((90.5, 70.0), (110.0, 70.0))
    assert (mask[d <= 2.0] == 255).all() and (mask[d >= 3.0] == 0).all()


def test_undo_and_redo_restore_exact_masks_over_many_steps(canvas: MaskCanvas, qtbot) -> None:
    rng = np.random.default_rng(7)
    snapshots = [canvas.layer.array()]
    for i in range(40):
        if i % 10 == 9:
            [canvas.layer.invert, canvas.layer.fill, canvas.layer.clear, canvas.layer.invert][i // 10]()
        else:
            canvas.set_brush_size(float(rng.integers(3, 60)))
            canvas.set_hardness(float(rng.uniform(0, 1)))
            canvas.set_eraser(bool(rng.random() < 0.3))
            points = [
                (float(rng.integers(0, W)), float(rng.integers(0, H))) for _ in range(int(rng.integers(1, 5)))
            ]
            stroke(canvas, points)
        if canvas.layer.undo_steps() == len(snapshots):
            snapshots.append(canvas.layer.array())
        else:  # a change that changed nothing (erasing where nothing was) is no undo step
            assert np.array_equal(canvas.layer.array(), snapshots[-1])
    assert canvas.layer.undo_steps() == len(snapshots) - 1 > 25

    for expected in reversed(snapshots[:-1]):
        qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
        assert np.array_equal(canvas.layer.array(), expected)
    assert not canvas.layer.can_undo()
    for expected in snapshots[1:]:
        qtbot.keyClick(
            canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
        )
        assert np.array_equal(canvas.layer.array(), expected)
    assert not canvas.layer.can_redo()
    canvas.layer.undo()
    qtbot.keyClick(canvas, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(canvas.layer.array(), snapshots[-1])

    # A new stroke after undoing drops the redo branch.
    canvas.layer.undo()
    stroke(canvas, [(10, 10)])
    assert not canvas.layer.can_redo()


def test_history_keeps_patches_not_copies_and_respects_its_cap(qapp) -> None:
    layer = MaskLayer(2048, 2048)
    brush = Brush(size=32, hardness=1.0)
    layer.begin_stroke(QPointF(100, 100), brush)
    layer.stroke_to(QPointF(140, 100))
    layer.end_stroke()
    # One short stroke on a 4 MB mask stores two ~80×40 patches, not the whole mask.
    assert layer.history_nbytes() < 10_000
    layer.clear()  # a flat change is stored as one number per side
    assert layer.history_nbytes() < 20_000

    capped = MaskLayer(512, 512, history_bytes=100_000)
    snapshots = []
    for i in range(60):
        capped.begin_stroke(QPointF(8 * i, 8 * i), Brush(size=40, hardness=0.3))
        capped.end_stroke()
        snapshots.append(capped.array())
    assert capped.history_nbytes() <= 100_000
    kept = capped.undo_steps()
    assert 5 < kept < 60  # the oldest steps were dropped to stay under the cap
    for expected in reversed(snapshots[-kept - 1 : -1]):
        capped.undo()
        assert np.array_equal(capped.array(), expected)


def test_mask_goes_to_pil_as_L_with_white_repaint(canvas: MaskCanvas) -> None:
    canvas.set_brush_size(30)
    stroke(canvas, [(30, 30), (90, 90)])
    pil = canvas.layer.to_pil()
    assert pil.mode == "L" and pil.size == (W, H)
    assert np.array_equal(np.asarray(pil), canvas.layer.array())
    assert pil.getpixel((60, 60)) == 255 and pil.getpixel((190, 10)) == 0


# ---------------------------------------------------------------------- the editor: files and state


@pytest.fixture
def editor(qtbot, tmp_path: Path):
    state = ViewState()
    loader = ImageLoader()
    widget = CanvasEditor(state, loader, lambda: tmp_path / "references")
    qtbot.addWidget(widget)
    widget.resize(900, 600)
    widget.show()
    messages: list[tuple[str, str]] = []
    widget.message.connect(lambda text, kind: messages.append((text, kind)))
    widget.messages = messages  # type: ignore[attr-defined]
    picture = tmp_path / "start.png"
    Image.new("RGB", (W, H), (200, 120, 40)).save(picture)
    widget.picture = picture  # type: ignore[attr-defined]
    yield widget
    loader.wait()


def _open(editor: CanvasEditor, qtbot, path: Path) -> None:
    with qtbot.waitSignal(editor.image_shown, timeout=10_000):
        editor.set_init(path)


def test_drop_a_picture_then_paint_switches_to_inpaint_and_commits_one_file(
    editor, qtbot, tmp_path: Path
) -> None:
    state = editor.state
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(editor.picture))])
    with qtbot.waitSignal(editor.image_shown, timeout=10_000):
        assert editor.add_from_mime(mime)
    assert state.init_path == str(editor.picture) and state.mode == "img2img"
    assert editor.layer.size() == (W, H)
    editor.canvas.actual_size()

    editor.commit_mask()
    assert state.mask_path == ""  # nothing painted, nothing named

    stroke(editor.canvas, [(40, 40), (120, 90)])
    assert state.mode == "inpaint"  # painting a mask means "repaint this"
    editor.commit_mask()
    first = Path(state.mask_path)
    assert first.parent == tmp_path / "references" and first.is_file()
    assert np.array_equal(np.asarray(load_mask(first)), editor.layer.array())
    editor.commit_mask()  # unchanged: the same file, not written again
    assert state.mask_path == str(first) and len(list(first.parent.glob("mask-*.png"))) == 1

    editor.layer.undo()
    editor.commit_mask()
    assert state.mask_path == ""  # back to empty


def test_same_size_picture_keeps_the_mask_another_size_starts_empty(editor, qtbot, tmp_path: Path) -> None:
    _open(editor, qtbot, editor.picture)
    editor.layer.fill()
    again = tmp_path / "result.png"
    Image.new("RGB", (W, H), (10, 10, 10)).save(again)
    _open(editor, qtbot, again)
    assert editor.layer.array().min() == 255  # a result sent back keeps the mask, to refine it
    other = tmp_path / "other.png"
    Image.new("RGB", (120, 90), (10, 10, 10)).save(other)
    _open(editor, qtbot, other)
    assert editor.layer.size() == (120, 90) and editor.layer.is_empty()


def test_save_and_load_mask_round_trip(editor, qtbot, tmp_path: Path) -> None:
    _open(editor, qtbot, editor.picture)
    editor.canvas.actual_size()
    editor.canvas.set_hardness(0.3)
    stroke(editor.canvas, [(30, 40), (150, 100)])
    painted = editor.layer.array()
    saved = tmp_path / "my-mask.png"
    assert editor.save_mask(saved)
    with Image.open(saved) as file:
        assert file.mode == "L" and file.size == (W, H)
    assert np.array_equal(np.asarray(load_mask(saved)), painted)

    editor.layer.clear()
    editor.load_mask(saved)
    qtbot.waitUntil(lambda: not editor.is_loading(), timeout=10_000)
    assert np.array_equal(editor.layer.array(), painted)
    editor.layer.undo()  # loading is one undo step
    assert editor.layer.is_empty()

    # A transparent-layer mask (strokes in the alpha channel) loads as its alpha.
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 3] = painted
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    editor.load_mask(tmp_path / "alpha.png")
    qtbot.waitUntil(lambda: not editor.is_loading(), timeout=10_000)
    assert np.array_equal(editor.layer.array(), painted)
    assert editor.messages == []


def test_a_mask_of_another_size_is_scaled_with_a_note_and_another_shape_refused(
    editor, qtbot, tmp_path
) -> None:
    _open(editor, qtbot, editor.picture)
    half = np.zeros((H // 2, W // 2), np.uint8)
    half[10:40, 20:60] = 255
    Image.fromarray(half, "L").save(tmp_path / "half.png")
    editor.load_mask(tmp_path / "half.png")
    qtbot.waitUntil(lambda: not editor.is_loading(), timeout=10_000)
    mask = editor.layer.array()
    assert mask.shape == (H, W) and mask[50, 80] == 255 and mask[5, 5] == 0
    assert editor.messages[-1][1] == "note" and "scaled" in editor.messages[-1][0]

    Image.new("L", (W, W), 255).save(tmp_path / "square.png")
    editor.load_mask(tmp_path / "square.png")
    qtbot.waitUntil(lambda: not editor.is_loading(), timeout=10_000)
    assert editor.messages[-1][1] == "error" and "different shapes" in editor.messages[-1][0]
    assert np.array_equal(editor.layer.array(), mask)  # refused: the mask is unchanged


def test_editor_tool_bar_follows_the_keys(editor, qtbot) -> None:
    _open(editor, qtbot, editor.picture)
    editor.canvas.setFocus()
    editor.size_spin.setValue(50)
    assert editor.canvas.brush.size == 50
    qtbot.keyClick(editor.canvas, Qt.Key.Key_BracketRight)
    assert editor.size_spin.value() == 60 and editor.size_slider.value() == 60
    qtbot.keyClick(editor.canvas, Qt.Key.Key_X)
    assert editor.eraser_button.isChecked() and not editor.brush_button.isChecked()
    editor.hardness_slider.setValue(25)
    assert editor.canvas.brush.hardness == 0.25 and editor.hardness_spin.value() == 25
    assert not editor.undo_button.isEnabled()
    editor.fill_button.click()
    assert editor.undo_button.isEnabled() and editor.layer.array().min() == 255
    editor.invert_button.click()
    assert editor.layer.is_empty()


def test_long_painting_sessions_cannot_abort_the_interpreter(canvas: MaskCanvas) -> None:
    """Some PySide6 builds drop a reference to None on every void Qt call and to True on every
    emit; on CPython < 3.12 the process aborts once the count hits zero. The canvas guards it."""
    if sys.version_info >= (3, 12) or not pyside_drops_references():
        pytest.skip("this PySide6 / Python pair does not have the bug")
    assert guard_singletons()
    before = sys.getrefcount(None)
    for _ in range(20):
        stroke(canvas, [(10.0 * i, 5.0 * i) for i in range(15)])
    assert sys.getrefcount(None) > 2**39 and sys.getrefcount(True) > 2**39
    assert sys.getrefcount(None) < before  # the bug is there, and harmless


def test_ctrl_v_on_the_canvas_pastes_a_new_start_picture(editor, qtbot, tmp_path: Path) -> None:
    _open(editor, qtbot, editor.picture)
    image = QImage(64, 48, QImage.Format.Format_RGB888)
    image.fill(QColor(10, 200, 30))
    QGuiApplication.clipboard().setImage(image)
    editor.canvas.setFocus()
    with qtbot.waitSignal(editor.image_shown, timeout=10_000):
        qtbot.keyClick(editor.canvas, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    pasted = Path(editor.state.init_path)
    assert pasted.parent == tmp_path / "references" and pasted.name.startswith("pasted-")
    assert editor.layer.size() == (64, 48)
