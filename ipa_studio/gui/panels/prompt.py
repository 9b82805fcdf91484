"""The text prompt and the negative prompt, each with its token count."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QStringListModel, Qt, QTimer
from PySide6.QtGui import QDragEnterEvent, QKeyEvent, QTextCursor
from PySide6.QtWidgets import QCompleter, QHBoxLayout, QLabel, QMenu, QPlainTextEdit, QToolButton, QWidget

from ipa_studio.gui.state import ViewState
from ipa_studio.gui.widgets.section import Section

log = logging.getLogger("ipa_studio.gui")

CHUNK_HELP = (
    "Prompts are read in chunks of 75 tokens (words and word pieces); a longer prompt simply gets "
    "another chunk. Write BREAK to start a new chunk yourself. (word:1.2) gives a word more weight, "
    "[word] less."
)


class _SharedTokenizer:
    """SD1.5's tokenizer, loaded once per process on a background thread so typing never waits for
    it; ``get()`` is ``None`` until it is there. Counting with it takes well under a millisecond."""

    def __init__(self) -> None:
        self._tokenizer: Any = None
        self._failed = False
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        # A daemon thread: loading reads two small files and is never waited for at exit.
        threading.Thread(target=self._load, name="ipa-studio-tokenizer", daemon=True).start()

    def _load(self) -> None:
        try:
            from ipa_studio.core.prompts import load_bundled_tokenizer

            self._tokenizer = load_bundled_tokenizer()
        except Exception:  # the count is a help; the window works without it
            log.exception("the tokenizer for the token count could not be loaded")
            self._failed = True

    def get(self) -> Any:
        return self._tokenizer

    @property
    def failed(self) -> bool:
        return self._failed


TOKENIZER = _SharedTokenizer()


class _TextBox(QPlainTextEdit):
    def __init__(self, placeholder: str, lines: int, tooltip: str) -> None:
        super().__init__()
        self.setPlaceholderText(placeholder)
        self.setToolTip(tooltip)
        self.setTabChangesFocus(True)  # Tab moves on, as in a form; prompts rarely need tab characters
        height = self.fontMetrics().lineSpacing() * lines + 16
        self.setFixedHeight(height)
        # Typing "<" offers the embeddings by name (A1111 users know "<" from <lora:…>); choosing
        # one writes its name, which is how a prompt uses an embedding.
        self.names: Callable[[], list[str]] = list
        self.completer = QCompleter(QStringListModel([], self), self)
        self.completer.setWidget(self)
        self.completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.completer.setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.completer.activated.connect(self._complete_with)

    def _open_bracket(self) -> int:
        """Where the "<" being completed starts in the text, or -1."""
        cursor = self.textCursor()
        block = cursor.block().text()[: cursor.positionInBlock()]
        at = block.rfind("<")
        if at < 0 or any(c.isspace() or c in ",>" for c in block[at + 1 :]):
            return -1
        return cursor.block().position() + at

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        popup = self.completer.popup()
        keys = (Qt.Key.Key_Enter, Qt.Key.Key_Return, Qt.Key.Key_Escape, Qt.Key.Key_Tab, Qt.Key.Key_Backtab)
        if popup.isVisible() and event.key() in keys:
            event.ignore()  # the completer's popup takes these (choose / close)
            return
        super().keyPressEvent(event)
        start = self._open_bracket()
        names = self.names() if start >= 0 else []
        if not names:
            popup.hide()
            return
        prefix = self.toPlainText()[start + 1 : self.textCursor().position()]
        model = self.completer.model()
        assert isinstance(model, QStringListModel)
        if model.stringList() != names:
            model.setStringList(names)
        self.completer.setCompletionPrefix(prefix)
        if self.completer.completionCount() == 0:
            popup.hide()
            return
        rect = self.cursorRect()
        rect.setWidth(popup.sizeHintForColumn(0) + popup.verticalScrollBar().sizeHint().width() + 16)
        self.completer.complete(rect)
        popup.setCurrentIndex(self.completer.completionModel().index(0, 0))

    def _complete_with(self, name: str) -> None:
        start = self._open_bracket()
        cursor = self.textCursor()
        if start >= 0:
            cursor.setPosition(start, QTextCursor.MoveMode.KeepAnchor)
        cursor.insertText(name)
        self.setTextCursor(cursor)

    def insert_name(self, name: str) -> None:
        """Write ``name`` at the cursor, with a separating comma and space when text comes before."""
        cursor = self.textCursor()
        before = self.toPlainText()[: cursor.position()].rstrip()
        cursor.insertText((", " if before and not before.endswith(",") else " " if before else "") + name)
        self.setTextCursor(cursor)

    def set_text_keeping_undo(self, text: str) -> None:
        # setPlainText would wipe the undo history; replacing through a cursor keeps Ctrl+Z working,
        # so "Image only" clearing the prompt can be undone.
        if self.toPlainText() == text:
            return
        cursor = self.textCursor()
        cursor.select(QTextCursor.SelectionType.Document)
        cursor.insertText(text)
        self.setTextCursor(cursor)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        # A picture file dropped here is for the window (its settings open), not a path to type in.
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.ignore()
            return
        super().dragEnterEvent(event)


class TokenCount(QLabel):
    """ "82 / 150 tokens · 2 chunks" under a prompt box, updated as one types."""

    DELAY_MS = 40
    """Keys typed faster than this are counted once, after the last (a count of a 600-token prompt
    takes a few milliseconds; see benchmarks/prompt_tokens.py)."""

    def __init__(self, box: _TextBox) -> None:
        super().__init__()
        self.box = box
        self.setObjectName("tokenCount")
        self.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.setToolTip(CHUNK_HELP)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.DELAY_MS)
        self._timer.timeout.connect(self.refresh)
        box.textChanged.connect(self._timer.start)

    def refresh(self) -> bool:
        """Count now; False while the tokenizer is still loading."""
        tokenizer = TOKENIZER.get()
        if tokenizer is None:
            return False
        from ipa_studio.core.prompts import MAX_CHUNKS, tokenize_prompt

        chunks = tokenize_prompt(tokenizer, self.box.toPlainText())
        text = chunks.describe()
        tip = CHUNK_HELP
        if chunks.chunk_count > 1:
            starts = []
            for k, ids in enumerate(chunks.ids[1:], start=2):
                body = [i for i in ids[1:] if i not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
                words = tokenizer.decode(body[:6]).strip()
                starts.append(f"Chunk {k} starts with “{words}…”" if words else f"Chunk {k} is empty")
            tip += "\n\n" + "\n".join(starts)
        too_long = chunks.chunk_count > MAX_CHUNKS
        if too_long:
            text += f" · too long: at most {MAX_CHUNKS} chunks"
        if bool(self.property("warning")) != too_long:
            self.setProperty("warning", too_long)
            self.style().unpolish(self)
            self.style().polish(self)
        self.setText(text)
        self.setToolTip(tip)
        return True


class PromptPanel(Section):
    def __init__(self, state: ViewState, parent: QWidget | None = None) -> None:
        super().__init__("Prompt", "Optional with reference images: what to add or change.", parent)
        self.state = state
        self.prompt = _TextBox(
            "e.g. a cat wearing a tiny wizard hat, studio light",
            3,
            "What the picture should show, in words. Leave it empty to follow only the reference images. "
            "(word:1.2) or word+ weighs a word more, [word] less; long prompts are fine. "
            "Ctrl+Enter generates.",
        )
        self.negative = _TextBox(
            "e.g. blurry, low quality, text",
            2,
            "What the picture should not show (negative prompt).",
        )
        self.prompt_count = TokenCount(self.prompt)
        self.negative_count = TokenCount(self.negative)
        for box in (self.prompt, self.negative):
            box.names = lambda: sorted(self.state.embedding_files, key=str.lower)
        self.embeddings = QToolButton()
        self.embeddings.setObjectName("embeddingsButton")
        self.embeddings.setText("Embeddings")
        self.embeddings.setToolTip(
            "Textual-inversion embeddings in the library: choose one to write its name into the "
            "prompt (or into Avoid, for negative embeddings). Typing < in a prompt offers them too."
        )
        self.embeddings.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.embeddings_menu = QMenu(self.embeddings)
        self.embeddings_menu.aboutToShow.connect(self._fill_embeddings)
        self.embeddings.setMenu(self.embeddings_menu)
        count_row = QHBoxLayout()
        count_row.addWidget(self.embeddings)
        count_row.addStretch(1)
        count_row.addWidget(self.prompt_count)
        self.body.addWidget(self.prompt)
        self.body.addLayout(count_row)
        avoid = QLabel("Avoid")
        avoid.setObjectName("fieldLabel")
        avoid.setToolTip(self.negative.toolTip())
        avoid_row = QHBoxLayout()
        avoid_row.addWidget(avoid)
        avoid_row.addStretch(1)
        avoid_row.addWidget(self.negative_count)
        self.body.addLayout(avoid_row)
        self.body.addWidget(self.negative)

        self.prompt.set_text_keeping_undo(state.prompt)
        self.negative.set_text_keeping_undo(state.negative_prompt)
        self.prompt.textChanged.connect(lambda: state.set("prompt", self.prompt.toPlainText()))
        self.negative.textChanged.connect(lambda: state.set("negative_prompt", self.negative.toPlainText()))
        state.changed.connect(self._on_state)

        TOKENIZER.start()
        # Until the tokenizer is loaded (a fraction of a second), look again now and then.
        self._waiting = QTimer(self)
        self._waiting.setInterval(100)
        self._waiting.timeout.connect(self._count_when_ready)
        if not self._count_when_ready():
            self._waiting.start()

    def _fill_embeddings(self) -> None:
        menu = self.embeddings_menu
        menu.clear()
        names = sorted(self.state.embedding_files, key=str.lower)
        if not names:
            menu.addAction("No embeddings in the library yet").setEnabled(False)
            return
        into_prompt = menu.addMenu("Into the prompt")
        into_avoid = menu.addMenu("Into Avoid (negative)")
        for name in names:
            into_prompt.addAction(name, lambda n=name: self.prompt.insert_name(n))
            into_avoid.addAction(name, lambda n=name: self.negative.insert_name(n))

    def _count_when_ready(self) -> bool:
        ready = self.prompt_count.refresh() and self.negative_count.refresh()
        if ready or TOKENIZER.failed:
            self._waiting.stop()
        return ready

    def _on_state(self, name: str) -> None:
        if name == "prompt":
            self.prompt.set_text_keeping_undo(self.state.prompt)
        elif name == "negative_prompt":
            self.negative.set_text_keeping_undo(self.state.negative_prompt)
