"""A column of controls that scrolls up and down, never sideways, and is never cut off.

A plain scroll area reports a small minimum width whatever it holds, so a splitter or a window may
make it narrower than its content; with the sideways scroll bar off, the right edge of every panel
is then cut (the λ box, the seed controls, a reference's × were out of sight). This one asks for
the content's minimum width plus the vertical scroll bar, and asks again whenever the content's
layout changes (a card added, a section shown).
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize, Qt
from PySide6.QtWidgets import QFrame, QScrollArea, QWidget


class ColumnScrollArea(QScrollArea):
    def __init__(self, content: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        content.installEventFilter(self)

    def _width_for(self, content_width: int) -> int:
        return content_width + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        content = self.widget()
        base = super().minimumSizeHint()
        if content is None:
            return base
        return QSize(self._width_for(content.minimumSizeHint().width()), base.height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        content = self.widget()
        base = super().sizeHint()
        if content is None:
            return base
        return QSize(self._width_for(content.sizeHint().width()), base.height())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return False
