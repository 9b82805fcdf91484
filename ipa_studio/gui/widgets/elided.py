"""A one-line label that shortens its text to the width it gets, with the whole text as tooltip.

A plain label asks for the width of its whole text: a long file name in a caption then widens the
window itself (it grew past a laptop screen). This one asks for nothing and elides instead.
``text()`` and ``setText()`` work with the whole text; ``shown_text()`` is what is on screen.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QResizeEvent
from PySide6.QtWidgets import QLabel, QSizePolicy, QWidget


class ElidedLabel(QLabel):
    def __init__(
        self,
        text: str = "",
        mode: Qt.TextElideMode = Qt.TextElideMode.ElideMiddle,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._mode = mode
        self._full = ""
        self._tip = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.set_full_text(text)

    def set_full_text(self, text: str, tooltip: str | None = None) -> None:
        """Show ``text`` (shortened when it does not fit); the tooltip is ``tooltip`` or the text."""
        self._full = text
        self.setToolTip(text if tooltip is None else tooltip)
        self._elide()

    def setText(self, text: str) -> None:  # noqa: N802 - the QLabel name, so callers need not care
        self.set_full_text(text)

    def text(self) -> str:
        """The whole text, not the shortened one on screen."""
        return self._full

    def shown_text(self) -> str:
        """What is on screen now (shortened to the width)."""
        return super().text()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(0, super().minimumSizeHint().height())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        width = max(self.contentsRect().width(), 0)
        lines = self._full.split("\n")
        shown = [self.fontMetrics().elidedText(line, self._mode, width) for line in lines]
        super().setText("\n".join(shown))
