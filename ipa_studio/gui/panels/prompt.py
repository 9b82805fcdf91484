"""The text prompt and the negative prompt."""

from __future__ import annotations

from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QWidget

from ipa_studio.gui.state import ViewState
from ipa_studio.gui.widgets.section import Section


class _TextBox(QPlainTextEdit):
    def __init__(self, placeholder: str, lines: int, tooltip: str) -> None:
        super().__init__()
        self.setPlaceholderText(placeholder)
        self.setToolTip(tooltip)
        self.setTabChangesFocus(True)  # Tab moves on, as in a form; prompts rarely need tab characters
        height = self.fontMetrics().lineSpacing() * lines + 16
        self.setFixedHeight(height)

    def set_text_keeping_undo(self, text: str) -> None:
        # setPlainText would wipe the undo history; replacing through a cursor keeps Ctrl+Z working,
        # so "Image only" clearing the prompt can be undone.
        if self.toPlainText() == text:
            return
        cursor = self.textCursor()
        cursor.select(QTextCursor.SelectionType.Document)
        cursor.insertText(text)
        self.setTextCursor(cursor)


class PromptPanel(Section):
    def __init__(self, state: ViewState, parent: QWidget | None = None) -> None:
        super().__init__("Prompt", "Optional with reference images: what to add or change.", parent)
        self.state = state
        self.prompt = _TextBox(
            "e.g. a cat wearing a tiny wizard hat, studio light",
            3,
            "What the picture should show, in words. Leave it empty to follow only the reference images. "
            "Ctrl+Enter generates.",
        )
        self.negative = _TextBox(
            "e.g. blurry, low quality, text",
            2,
            "What the picture should not show (negative prompt).",
        )
        self.body.addWidget(self.prompt)
        avoid = QLabel("Avoid")
        avoid.setObjectName("fieldLabel")
        avoid.setToolTip(self.negative.toolTip())
        self.body.addWidget(avoid)
        self.body.addWidget(self.negative)

        self.prompt.set_text_keeping_undo(state.prompt)
        self.negative.set_text_keeping_undo(state.negative_prompt)
        self.prompt.textChanged.connect(lambda: state.set("prompt", self.prompt.toPlainText()))
        self.negative.textChanged.connect(lambda: state.set("negative_prompt", self.negative.toPlainText()))
        state.changed.connect(self._on_state)

    def _on_state(self, name: str) -> None:
        if name == "prompt":
            self.prompt.set_text_keeping_undo(self.state.prompt)
        elif name == "negative_prompt":
            self.negative.set_text_keeping_undo(self.state.negative_prompt)
