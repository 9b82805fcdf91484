"""Icons drawn with QPainter, so they look the same on every system.

Emoji such as 🎲 need a colour emoji font that many Linux desktops (and minimal installs) lack: the
button then shows an empty box. A few lines of painting have no such dependency.
"""

from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPen, QPixmap


def dice_icon(colour: QColor | str = "#e6e6ea", size: int = 64) -> QIcon:
    """A die showing five: the "pick a random seed" button."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    ink = QColor(colour)
    line = size / 14
    painter.setPen(QPen(ink, line))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    box = QRectF(line, line, size - 2 * line, size - 2 * line)
    painter.drawRoundedRect(box, size / 6, size / 6)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(ink)
    radius = size / 11
    low, mid, high = size * 0.3, size * 0.5, size * 0.7
    for x, y in ((low, low), (high, low), (mid, mid), (low, high), (high, high)):
        painter.drawEllipse(QPointF(x, y), radius, radius)
    painter.end()
    return QIcon(pixmap)
