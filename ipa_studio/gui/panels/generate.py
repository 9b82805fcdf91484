"""The Generate / Cancel controls, progress and time: always visible under the control column."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s"


class GeneratePanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("generatePanel")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 12)
        layout.setSpacing(6)

        buttons = QHBoxLayout()
        self.generate = QPushButton("Generate")
        self.generate.setObjectName("generateButton")
        self.generate.setToolTip(
            "Make pictures from the references and prompt (Ctrl+Enter). Pressing it again while one "
            "is running adds another to the queue."
        )
        self.generate.setMinimumHeight(46)
        self.cancel = QPushButton("Cancel")
        self.cancel.setObjectName("cancelButton")
        self.cancel.setToolTip("Stop the running generation and any queued ones (Esc). Nothing is saved.")
        self.cancel.setMinimumHeight(46)
        self.cancel.setEnabled(False)
        buttons.addWidget(self.generate, 3)
        buttons.addWidget(self.cancel, 1)
        layout.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(8)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)

        self.status = QLabel("Ready. Ctrl+Enter generates, Esc cancels.")
        self.status.setObjectName("hint")
        layout.addWidget(self.status)

    def show_idle(self, text: str) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.cancel.setEnabled(False)
        self.status.setText(text)

    def show_starting(self, queued_after: int) -> None:
        self.cancel.setEnabled(True)
        self.progress.setRange(0, 0)  # busy indicator while models load and references are encoded
        self.status.setText("Loading models and preparing…" + _queued(queued_after))

    def show_step(self, step: int, total: int, elapsed: float, left: float, queued_after: int) -> None:
        self.cancel.setEnabled(True)
        self.progress.setRange(0, total)
        self.progress.setValue(step)
        remaining = f" · about {_duration(left)} left" if left >= 0 else ""
        self.status.setText(
            f"Step {step} of {total} · {_duration(elapsed)}{remaining}" + _queued(queued_after)
        )


def _queued(n: int) -> str:
    return f" · {n} more queued" if n > 0 else ""
