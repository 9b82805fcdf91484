"""The crop editor of a reference card: drag and resize the square the image encoder sees.

Coordinates are the picture's own pixels (upright, as the engine loads it), so the square handed to
``EncoderView("crop", (left, top, side))`` is exactly the one drawn. The square always stays a
square and always stays inside the picture: a drag past an edge stops at the edge, a resize past
one stops growing. Drag inside the square to move it; drag a corner handle to resize it about the
opposite corner. Arrow keys move it by one percent of the picture, ``+`` / ``-`` resize it.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QWidget

HANDLE = 9.0  # screen pixels: the corner handles' size, and how near a press must be to take one
MIN_SIDE = 8  # picture pixels: the smallest square (the encoder still gets a whole square)

Box = tuple[int, int, int]


def centre_box(size: tuple[int, int]) -> Box:
    """The square CLIP's centre crop takes: the short side, in the middle."""
    width, height = size
    side = min(width, height)
    return ((width - side) // 2, (height - side) // 2, side)


def clamp_box(box: Box, size: tuple[int, int]) -> Box:
    """``box`` made a valid square inside a picture of ``size``: side limited, then moved inside."""
    width, height = size
    left, top, side = box
    side = max(min(int(side), width, height), min(MIN_SIDE, width, height))
    left = min(max(int(left), 0), width - side)
    top = min(max(int(top), 0), height - side)
    return (left, top, side)


class CropEditor(QWidget):
    """``box_changed(left, top, side)`` fires once a drag or key press has finished moving it."""

    box_changed = Signal(int, int, int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("cropEditor")
        self.setMinimumSize(120, 120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setToolTip(
            "Drag the square to choose what the image encoder sees; drag a corner to resize it. "
            "Arrow keys move it, + and - resize it."
        )
        self._pixmap = QPixmap()
        self._size = (0, 0)  # the picture's real size (the pixmap may be a smaller copy)
        self._box: Box | None = None
        self._drag: tuple[str, QPointF, Box] | None = None  # ("move" | corner name, press point, box)

    # ------------------------------------------------------------------ content
    def set_picture(self, image: QImage, size: tuple[int, int] | None = None) -> None:
        """Show ``image``; ``size`` is the real picture's size when ``image`` is a smaller copy."""
        self._pixmap = QPixmap.fromImage(image)
        self._size = size or (image.width(), image.height())
        if self._box is not None:
            self._box = clamp_box(self._box, self._size)
        self.update()

    def has_picture(self) -> bool:
        return not self._pixmap.isNull()

    def picture_size(self) -> tuple[int, int]:
        return self._size

    def box(self) -> Box | None:
        return self._box

    def set_box(self, box: Box | None) -> None:
        """Show ``box`` (None: the centre square) without emitting ``box_changed``."""
        if self.has_picture():
            box = clamp_box(box, self._size) if box is not None else centre_box(self._size)
        self._box = box
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(260, 170)

    # ------------------------------------------------------------------ geometry
    def picture_rect(self) -> QRectF:
        """Where the picture is drawn in the widget (fitted, centred)."""
        width, height = self._size
        if not width or not height:
            return QRectF()
        area = QRectF(self.rect()).adjusted(HANDLE / 2, HANDLE / 2, -HANDLE / 2, -HANDLE / 2)
        scale = min(area.width() / width, area.height() / height)
        w, h = width * scale, height * scale
        return QRectF(area.x() + (area.width() - w) / 2, area.y() + (area.height() - h) / 2, w, h)

    def _scale(self) -> float:
        return self.picture_rect().width() / self._size[0] if self._size[0] else 1.0

    def box_rect(self) -> QRectF:
        """The square in widget coordinates."""
        if self._box is None:
            return QRectF()
        origin, scale = self.picture_rect().topLeft(), self._scale()
        left, top, side = self._box
        return QRectF(origin.x() + left * scale, origin.y() + top * scale, side * scale, side * scale)

    def _corners(self) -> dict[str, QPointF]:
        r = self.box_rect()
        return {"tl": r.topLeft(), "tr": r.topRight(), "bl": r.bottomLeft(), "br": r.bottomRight()}

    def _hit(self, point: QPointF) -> str | None:
        for name, corner in self._corners().items():
            if abs(point.x() - corner.x()) <= HANDLE and abs(point.y() - corner.y()) <= HANDLE:
                return name
        return "move" if self.box_rect().contains(point) else None

    # ------------------------------------------------------------------ mouse
    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() != Qt.MouseButton.LeftButton or self._box is None:
            super().mousePressEvent(event)
            return
        part = self._hit(event.position())
        if part is not None:
            self._drag = (part, event.position(), self._box)
            event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._drag is None:
            part = self._hit(event.position())
            cursors = {
                "move": Qt.CursorShape.SizeAllCursor,
                "tl": Qt.CursorShape.SizeFDiagCursor,
                "br": Qt.CursorShape.SizeFDiagCursor,
                "tr": Qt.CursorShape.SizeBDiagCursor,
                "bl": Qt.CursorShape.SizeBDiagCursor,
            }
            self.setCursor(cursors.get(part or "", Qt.CursorShape.ArrowCursor))
            return
        part, start, box = self._drag
        scale = self._scale()
        dx = (event.position().x() - start.x()) / scale
        dy = (event.position().y() - start.y()) / scale
        self._box = self._dragged(part, box, dx, dy)
        self.update()
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._drag is None or event.button() != Qt.MouseButton.LeftButton:
            super().mouseReleaseEvent(event)
            return
        before = self._drag[2]
        self._drag = None
        if self._box is not None and self._box != before:
            self.box_changed.emit(*self._box)
        event.accept()

    def _dragged(self, part: str, box: Box, dx: float, dy: float) -> Box:
        width, height = self._size
        left, top, side = box
        if part == "move":
            return clamp_box((round(left + dx), round(top + dy), side), self._size)
        # Resize about the opposite corner (the anchor): the side follows the larger of the two
        # movements, limited by the room between the anchor and the picture's edges.
        right, bottom = left + side, top + side
        grow_x = -dx if part in ("tl", "bl") else dx
        grow_y = -dy if part in ("tl", "tr") else dy
        wanted = side + max(grow_x, grow_y)
        room_x = right if part in ("tl", "bl") else width - left
        room_y = bottom if part in ("tl", "tr") else height - top
        new = int(round(min(max(wanted, MIN_SIDE), room_x, room_y)))
        new_left = right - new if part in ("tl", "bl") else left
        new_top = bottom - new if part in ("tl", "tr") else top
        return clamp_box((new_left, new_top, new), self._size)

    # ------------------------------------------------------------------ keys
    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if self._box is None:
            super().keyPressEvent(event)
            return
        step = max(1, round(max(self._size) / 100))
        left, top, side = self._box
        moves = {
            Qt.Key.Key_Left: (left - step, top, side),
            Qt.Key.Key_Right: (left + step, top, side),
            Qt.Key.Key_Up: (left, top - step, side),
            Qt.Key.Key_Down: (left, top + step, side),
            # Resizing by key keeps the centre where it is.
            Qt.Key.Key_Plus: (left - step, top - step, side + 2 * step),
            Qt.Key.Key_Equal: (left - step, top - step, side + 2 * step),
            Qt.Key.Key_Minus: (left + step, top + step, side - 2 * step),
        }
        wanted = moves.get(Qt.Key(event.key()))
        if wanted is None:
            super().keyPressEvent(event)
            return
        if event.key() in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            grown = min(wanted[2], *self._size)
            wanted = (left - (grown - side) // 2, top - (grown - side) // 2, grown)
        box = clamp_box(wanted, self._size)
        if box != self._box:
            self._box = box
            self.update()
            self.box_changed.emit(*box)
        event.accept()

    # ------------------------------------------------------------------ painting
    def paintEvent(self, _event: object) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        if self._pixmap.isNull():
            painter.setPen(QColor("#9a9aa2"))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Loading…")
            return
        picture = self.picture_rect()
        painter.drawPixmap(picture, self._pixmap, QRectF(self._pixmap.rect()))
        square = self.box_rect()
        if square.isEmpty():
            return
        # Shade what the encoder does not see.
        shade = QPainterPath()
        shade.addRect(picture)
        inside = QPainterPath()
        inside.addRect(square)
        painter.fillPath(shade.subtracted(inside), QColor(0, 0, 0, 150))
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QPen(QColor(0, 0, 0, 180), 3.0))
        painter.drawRect(square)
        accent = QColor("#3d8bfd") if self.hasFocus() else QColor(255, 255, 255)
        painter.setPen(QPen(accent, 1.5))
        painter.drawRect(square)
        painter.setBrush(QColor(255, 255, 255))
        painter.setPen(QPen(QColor(0, 0, 0, 200), 1.0))
        for corner in self._corners().values():
            painter.drawRect(QRectF(corner.x() - HANDLE / 2, corner.y() - HANDLE / 2, HANDLE, HANDLE))
