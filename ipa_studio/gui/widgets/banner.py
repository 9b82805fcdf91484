"""A message strip (error / note) that does not block the window the way a dialog would.

It floats over the window instead of taking a place in a layout: a strip that appears in a layout
pushes everything under it down, and a click meant for a button lands on the one that moved there.
Its owner places it (``placement_changed`` says when its size may have changed).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QHideEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

_STYLES = {
    "error": "background:#5c1f1f; border:1px solid #a04040; color:#ffe9e9;",
    "note": "background:#2a3a52; border:1px solid #46648c; color:#e8f0ff;",
}


class Banner(QFrame):
    placement_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 6, 8)
        self.icon = QLabel()
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Hide this message")
        close.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        close.clicked.connect(self.hide)
        layout.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        layout.addWidget(self.label, 1)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.kind = ""
        self.hide()

    def show_message(self, text: str, kind: str = "error") -> None:
        self.kind = kind
        self.icon.setText("⚠" if kind == "error" else "ℹ")
        self.setStyleSheet(
            f"QFrame#banner {{ {_STYLES[kind]} border-radius:6px; }} QLabel {{ border:none; }}"
        )
        self.label.setText(text)
        self.show()
        self.raise_()
        self.placement_changed.emit()

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt override
        super().hideEvent(event)
        self.placement_changed.emit()

    def text(self) -> str:
        return self.label.text() if not self.isHidden() else ""
