"""The canvas view: the init image, the mask over it as a translucent colour, and the brush outline.

Scene coordinates are image pixels, so a mouse position maps to the mask with the view's transform
alone, at any zoom. A stroke segment repaints only its own rectangle: the mask changes there, the
overlay converts those pixels through a 256-entry colour table, and only that part of the scene is
scheduled for repainting. Nothing is ever redrawn whole while painting.

Mouse: left button paints with the current tool, right button with the other one (a quick erase);
middle button, or the space bar held, drags the picture; the wheel zooms around the pointer.
Focus: the canvas takes the keyboard when the pointer comes over it, so its keys work without a
click, unless someone is typing in a text or number field; the click that leaves such a field only
brings the keyboard here and paints nothing (no stray dab, no undo step).
Keys: ``[`` ``]`` brush size, ``X`` brush ↔ eraser, ``B`` brush, ``E`` eraser, ``F`` fit,
``1`` real size, Ctrl+Z undo, Ctrl+Shift+Z / Ctrl+Y redo, Ctrl+V a new start picture.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRect, QRectF, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPen,
    QPixmap,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsPixmapItem,
    QGraphicsView,
    QLineEdit,
    QPlainTextEdit,
    QStyleOptionGraphicsItem,
    QTextEdit,
    QWidget,
)

from ipa_studio.gui.canvas.mask import MAX_BRUSH, MIN_BRUSH, Brush, MaskLayer
from ipa_studio.gui.canvas.refcount_guard import guard_singletons
from ipa_studio.gui.widgets.image_view import ZoomableView

SIZE_STEP = 1.2  # [ and ] scale the brush by this factor: even steps from 1 px to 1000 px
MASK_COLOUR = QColor(255, 56, 96)
MASK_OPACITY = 0.55


def step_size(size: float, direction: int) -> float:
    """The next brush size for ``[`` (-1) or ``]`` (+1): one pixel at a time while small, then by
    ``SIZE_STEP``, so a few presses go from a fine edge brush to one that fills a background."""
    if size <= 5:
        return size + direction
    return float(round(size * SIZE_STEP if direction > 0 else size / SIZE_STEP))


class MaskOverlayItem(QGraphicsItem):
    """The mask drawn as ``MASK_COLOUR`` at up to ``MASK_OPACITY``; kept in step rect by rect."""

    def __init__(self, layer: MaskLayer, colour: QColor = MASK_COLOUR, opacity: float = MASK_OPACITY) -> None:
        super().__init__()
        self.layer = layer
        # exposedRect tells paint() which part the view needs: only that part is drawn.
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)
        alpha = np.round(np.arange(256, dtype=np.float64) * opacity).astype(np.uint32)
        r, g, b = colour.red(), colour.green(), colour.blue()
        # Premultiplied ARGB, one entry per mask value: a dirty rect converts with one table lookup.
        self._lut = (
            (alpha << 24)
            | ((alpha * r + 127) // 255 << 16)
            | ((alpha * g + 127) // 255 << 8)
            | ((alpha * b + 127) // 255)
        ).astype(np.uint32)
        self._overlay = QImage()
        layer.changed.connect(self.refresh)
        self.refresh(layer.rect())

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt override
        return QRectF(0, 0, self._overlay.width(), self._overlay.height())

    def refresh(self, rect: QRect) -> None:
        """Bring ``rect`` of the overlay up to date with the mask and schedule only it for painting."""
        layer = self.layer
        if (self._overlay.width(), self._overlay.height()) != layer.size():
            self.prepareGeometryChange()
            self._overlay = QImage(layer.width, layer.height, QImage.Format.Format_ARGB32_Premultiplied)
            rect = layer.rect()
        rect = rect.intersected(layer.rect())
        if rect.isEmpty():
            return
        x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
        stride = self._overlay.bytesPerLine() // 4
        out = np.frombuffer(self._overlay.bits(), np.uint32).reshape(layer.height, stride)
        out[y : y + h, x : x + w] = self._lut[layer.pixels()[y : y + h, x : x + w]]
        self.update(QRectF(rect))

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        if self._overlay.isNull():
            return
        exposed = option.exposedRect.intersected(self.boundingRect()).toAlignedRect()
        if exposed.isEmpty():
            return
        painter.drawImage(QRectF(exposed), self._overlay, QRectF(exposed))


class MaskCanvas(ZoomableView):
    """Paints into ``layer`` with ``brush``. ``brush_changed`` fires when a key changed the brush;
    ``zoom_changed(zoom)`` when the zoom changed (1.0 = one image pixel per screen pixel)."""

    brush_changed = Signal()
    paste_requested = Signal()  # Ctrl+V on the canvas: a new start picture, not a reference
    min_zoom = 0.02  # a whole 4K picture still fits a small window

    def __init__(self, layer: MaskLayer, placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(placeholder, parent)
        guard_singletons()  # painting makes several Qt calls per mouse move: see refcount_guard
        self.layer = layer
        self.brush = Brush()
        self._image_item = QGraphicsPixmapItem()
        self._image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._image_item.setZValue(0)
        self.overlay = MaskOverlayItem(layer)
        self.overlay.setZValue(1)
        self._cursor = _BrushOutline()
        self._cursor.setZValue(2)
        self._cursor.hide()
        for item in (self._image_item, self.overlay, self._cursor):
            self.scene().addItem(item)
        self._panning: QPointF | None = None
        self._space = False
        self._focus_click = False  # the press now arriving only took the keyboard from a text field
        self._typing_elsewhere = False
        self.tools: QWidget | None = None
        """The page around the canvas: typing in its brush boxes is not typing "elsewhere"."""
        app = QApplication.instance()
        if isinstance(app, QApplication):
            app.focusChanged.connect(self._on_app_focus)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.viewport().setCursor(Qt.CursorShape.CrossCursor)

    # ------------------------------------------------------------------ content
    def set_image(self, image: QImage | None) -> None:
        """Show ``image`` under the mask (the mask must already have its size)."""
        if image is None or image.isNull():
            self._image_item.setPixmap(QPixmap())
            self.scene().setSceneRect(QRectF())
        else:
            self._image_item.setPixmap(QPixmap.fromImage(image))
            self.scene().setSceneRect(QRectF(0, 0, image.width(), image.height()))
        self._fit = True
        self.fit()
        self.viewport().update()

    def has_image(self) -> bool:
        return not self._image_item.pixmap().isNull()

    # ------------------------------------------------------------------ brush
    def set_brush_size(self, size: float) -> None:
        size = float(min(max(size, MIN_BRUSH), MAX_BRUSH))
        if size != self.brush.size:
            self.brush.size = size
            self._update_outline()
            self.brush_changed.emit()

    def set_hardness(self, hardness: float) -> None:
        hardness = float(min(max(hardness, 0.0), 1.0))
        if hardness != self.brush.hardness:
            self.brush.hardness = hardness
            self.brush_changed.emit()

    def set_eraser(self, on: bool) -> None:
        if on != self.brush.eraser:
            self.brush.eraser = on
            self._update_outline()
            self.brush_changed.emit()

    def swap_tool(self) -> None:
        self.set_eraser(not self.brush.eraser)

    # ------------------------------------------------------------------ zoom
    def _zoom_applied(self) -> None:
        self._update_outline()  # the outline shows the brush at screen size

    def image_point(self, viewport_pos: QPointF) -> QPointF:
        """The image position (in pixels, fractional) under a point of the viewport."""
        inverted, _ok = self.viewportTransform().inverted()
        return inverted.map(QPointF(viewport_pos))

    # ------------------------------------------------------------------ mouse
    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._focus_click:
            self._focus_click = False
            event.accept()
            return
        button = event.button()
        if button == Qt.MouseButton.MiddleButton or (button == Qt.MouseButton.LeftButton and self._space):
            self._panning = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            event.accept()
            return
        if button in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton) and self.has_image():
            eraser = self.brush.eraser != (button == Qt.MouseButton.RightButton)
            stroke = Brush(self.brush.size, self.brush.hardness, eraser)
            self.layer.begin_stroke(self.image_point(event.position()), stroke)
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._panning is not None:
            delta = event.position() - self._panning
            self._panning = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - round(delta.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - round(delta.y()))
            event.accept()
            return
        point = self.image_point(event.position())
        self._move_outline(point)
        if self.layer.painting:
            self.layer.stroke_to(point)
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        pan_buttons = (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton)
        if self._panning is not None and event.button() in pan_buttons:
            self._panning = None
            self._set_idle_cursor()
            event.accept()
            return
        if self.layer.painting and event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self.layer.stroke_to(self.image_point(event.position()))
            self.layer.end_stroke()
            event.accept()
            return
        super().mouseReleaseEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        # A quick second click is another dab, not a zoom (as in every paint program).
        self.mousePressEvent(event)

    def contextMenuEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        event.accept()  # the right button erases; no menu in the way

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        super().wheelEvent(event)
        if self.has_image():
            self._move_outline(self.image_point(event.position()))

    def enterEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        super().enterEvent(event)
        self._cursor.setVisible(self.has_image())
        if not self.hasFocus() and not self._typing_elsewhere and self.isActiveWindow():
            self.setFocus(Qt.FocusReason.OtherFocusReason)

    def focusInEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        super().focusInEvent(event)
        # Qt announces the new focus widget after this event: _typing_elsewhere is the old one's.
        self._focus_click = event.reason() == Qt.FocusReason.MouseFocusReason and self._typing_elsewhere

    def _on_app_focus(self, _old: QWidget | None, new: QWidget | None) -> None:
        if new is not self:
            own = self.tools is not None and new is not None and self.tools.isAncestorOf(new)
            self._typing_elsewhere = _is_typing(new) and not own

    def leaveEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        super().leaveEvent(event)
        self._cursor.hide()

    def focusOutEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        super().focusOutEvent(event)
        if self.layer.painting:
            self.layer.end_stroke()  # a stroke never stays open when another window takes the mouse
        self._space = False
        self._set_idle_cursor()

    # ------------------------------------------------------------------ keys
    def _handles(self, event: QKeyEvent) -> bool:
        key, mods = event.key(), event.modifiers()
        ctrl = bool(mods & Qt.KeyboardModifier.ControlModifier)
        if ctrl:
            return key in (Qt.Key.Key_Z, Qt.Key.Key_Y, Qt.Key.Key_V)
        plain = not (mods & (Qt.KeyboardModifier.AltModifier | Qt.KeyboardModifier.MetaModifier))
        keys = (
            Qt.Key.Key_BracketLeft,
            Qt.Key.Key_BracketRight,
            Qt.Key.Key_X,
            Qt.Key.Key_B,
            Qt.Key.Key_E,
            Qt.Key.Key_F,
            Qt.Key.Key_1,
            Qt.Key.Key_Space,
        )
        return plain and key in keys

    def event(self, event: QEvent) -> bool:
        # Claim our keys before window-wide shortcuts see them, as a text box claims Ctrl+Z.
        if event.type() == QEvent.Type.ShortcutOverride and self._handles(event):  # type: ignore[arg-type]
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if not self._handles(event):
            super().keyPressEvent(event)
            return
        key = event.key()
        shift = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            if key == Qt.Key.Key_V:
                self.paste_requested.emit()
            elif key == Qt.Key.Key_Y or shift:
                self.layer.redo()
            else:
                self.layer.undo()
        elif key == Qt.Key.Key_BracketLeft:
            self.set_brush_size(step_size(self.brush.size, -1))
        elif key == Qt.Key.Key_BracketRight:
            self.set_brush_size(step_size(self.brush.size, +1))
        elif key == Qt.Key.Key_X:
            self.swap_tool()
        elif key == Qt.Key.Key_B:
            self.set_eraser(False)
        elif key == Qt.Key.Key_E:
            self.set_eraser(True)
        elif key == Qt.Key.Key_F:
            self.fit()
        elif key == Qt.Key.Key_1:
            self.actual_size()
        elif key == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
        event.accept()

    def keyReleaseEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self._set_idle_cursor()
            event.accept()
            return
        super().keyReleaseEvent(event)

    def _set_idle_cursor(self) -> None:
        self.viewport().setCursor(
            Qt.CursorShape.OpenHandCursor if self._space else Qt.CursorShape.CrossCursor
        )

    # ------------------------------------------------------------------ brush outline
    def _move_outline(self, point: QPointF) -> None:
        self._cursor.setPos(point)
        visible = self.has_image() and self.underMouse()
        if visible != self._cursor.isVisible():
            self._cursor.setVisible(visible)

    def _update_outline(self) -> None:
        self._cursor.set_brush(self.brush.size * self.zoom(), self.brush.eraser)


def _is_typing(widget: QWidget | None) -> bool:
    """Someone is typing in ``widget``: a keystroke there must not become a canvas shortcut."""
    return isinstance(widget, (QLineEdit, QPlainTextEdit, QTextEdit, QAbstractSpinBox))


class _BrushOutline(QGraphicsEllipseItem):
    """The brush's reach, drawn as two thin circles (dark and light) so it shows on any picture.

    It ignores the view's zoom and is sized in screen pixels instead, so its pens (and the bounding
    rectangle Qt repaints when it moves) stay a few screen pixels wide at any zoom.
    """

    def __init__(self) -> None:
        super().__init__()
        self._eraser = False
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self.setPen(QPen(QColor(0, 0, 0), 4.0))  # only for boundingRect: the widest pen drawn
        self.set_brush(64.0, False)

    def set_brush(self, screen_size: float, eraser: bool) -> None:
        radius = max(screen_size, 2.0) / 2.0
        self._eraser = eraser
        self.setRect(QRectF(-radius, -radius, 2 * radius, 2 * radius))
        self.update()

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        dark = QPen(QColor(0, 0, 0, 170), 3.0)
        light = QPen(QColor(255, 255, 255, 230), 1.2)
        if self._eraser:
            light.setStyle(Qt.PenStyle.DashLine)
        for pen in (dark, light):
            painter.setPen(pen)
            painter.drawEllipse(self.rect())
