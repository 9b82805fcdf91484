"""A row of buttons that wraps onto a second line when it has too little room.

A plain row of a dozen buttons asks for the width of all of them; in the picture area that was
700 px, and the window refused to get narrower than a laptop screen. Wrapped, the row needs only
the width of its widest button, and on a wide screen it is one line as before.
"""

from __future__ import annotations

from PySide6.QtCore import QMargins, QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import QLayout, QLayoutItem, QSizePolicy, QSpacerItem, QWidget


class FlowLayout(QLayout):
    def __init__(self, parent: QWidget | None = None, spacing: int = 4, line_spacing: int = 4) -> None:
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._spacing = spacing
        self._line_spacing = line_spacing
        self.setContentsMargins(QMargins(0, 0, 0, 0))

    # ------------------------------------------------------------------ items
    def addItem(self, item: QLayoutItem) -> None:  # noqa: N802 - Qt override
        self._items.append(item)

    def addSpacing(self, size: int) -> None:  # noqa: N802 - as QBoxLayout names it
        """A gap between groups of buttons; dropped where a line starts."""
        self.addItem(QSpacerItem(size, 0, QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Minimum))

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, index: int) -> QLayoutItem | None:  # noqa: N802 - Qt override
        return self._items[index] if 0 <= index < len(self._items) else None

    def takeAt(self, index: int) -> QLayoutItem | None:  # noqa: N802 - Qt override
        return self._items.pop(index) if 0 <= index < len(self._items) else None

    # ------------------------------------------------------------------ sizes
    def expandingDirections(self) -> Qt.Orientation:  # noqa: N802 - Qt override
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt override
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - Qt override
        return self._arrange(QRect(0, 0, width, 0), move=False)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        # One line: what it needs where there is room.
        widths = [i.sizeHint().width() for i in self._shown()]
        height = max((i.sizeHint().height() for i in self._shown()), default=0)
        margins = self.contentsMargins()
        width = sum(widths) + self._spacing * max(len(widths) - 1, 0)
        return QSize(width + margins.left() + margins.right(), height + margins.top() + margins.bottom())

    def minimumSize(self) -> QSize:  # noqa: N802 - Qt override
        size = QSize()
        for item in self._shown():
            if not isinstance(item, QSpacerItem):
                size = size.expandedTo(item.minimumSize())
        margins = self.contentsMargins()
        return size + QSize(margins.left() + margins.right(), margins.top() + margins.bottom())

    def setGeometry(self, rect: QRect) -> None:  # noqa: N802 - Qt override
        super().setGeometry(rect)
        self._arrange(rect, move=True)

    # ------------------------------------------------------------------ placing
    def _shown(self) -> list[QLayoutItem]:
        return [i for i in self._items if i.widget() is None or not i.widget().isHidden()]

    def _arrange(self, rect: QRect, *, move: bool) -> int:
        margins = self.contentsMargins()
        area = rect.adjusted(margins.left(), margins.top(), -margins.right(), -margins.bottom())
        x, y, line_height = area.x(), area.y(), 0
        line_start = True
        for item in self._shown():
            spacer = isinstance(item, QSpacerItem)
            hint = item.sizeHint()
            if spacer and line_start:
                continue
            gap = 0 if line_start else self._spacing
            if not line_start and x + gap + hint.width() > area.right() + 1 and not spacer:
                x, y = area.x(), y + line_height + self._line_spacing
                line_height, gap = 0, 0
            if spacer:
                x += gap + hint.width()
                continue
            x += gap
            if move:
                item.setGeometry(QRect(QPoint(x, y), hint))
            x += hint.width()
            line_height = max(line_height, hint.height())
            line_start = False
        return y + line_height - rect.y() + margins.bottom()
