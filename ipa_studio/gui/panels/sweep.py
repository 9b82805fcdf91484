"""The λ sweep page: the same seed at several λ (and block presets), scored and laid out as a grid.

Pictures fill in as the worker finishes them, each with its CLIP-I (how much it looks like the
references) and CLIP-T (how well it follows the prompt); when the sweep ends the balance point is
framed, and "Use this λ" under any picture puts its λ (and preset) into the balance panel. The sheet
and its CSV are saved by the worker, as ``ipa-studio sweep`` saves them; "Save sheet…" copies both
elsewhere. The page only shows and asks; the window submits and cancels the job.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QPixmap, QResizeEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.presets import BlockPreset
from ipa_studio.gui import dialogs
from ipa_studio.gui.sweep_job import CellView, SweepOutcome
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.flow import FlowLayout

DEFAULT_LAMBDAS = "0, 0.2, 0.4, 0.6, 0.8, 1"
MAX_CELLS = 64  # core.sweep.MAX_CELLS, without importing the engine's modules
THIS_MAP = "This block map"


def parse_lambdas(text: str) -> list[float]:
    """The λ list as typed ("0, 0.5, 1" or "0 0.5 1"), or ValueError in the person's words."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError("Type the λ values to compare, for example 0, 0.3, 0.6, 1.")
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"'{part}' is not a number: type λ values such as 0, 0.3, 0.6, 1.") from None
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise ValueError(f"λ {part} is outside 0 to 1, the range of the λ slider.")
        values.append(value)
    return values


class SweepCellWidget(QFrame):
    use_requested = Signal(object)  # CellView

    def __init__(self, cell: CellView, side: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sweepCell")
        self.cell = cell
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(3)
        self.picture = QLabel()
        self.picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.title = QLabel()
        self.title.setObjectName("sweepTitle")
        self.scores = QLabel()
        self.scores.setObjectName("hint")
        self.use = QPushButton("Use this λ")
        self.use.setToolTip("Put this picture's λ (and block preset) into the balance panel")
        self.use.clicked.connect(lambda: self.use_requested.emit(self.cell))
        for w in (self.picture, self.title, self.scores, self.use):
            layout.addWidget(w)
        self.set_side(side)
        self.set_cell(cell, balance=False)

    def set_side(self, side: int) -> None:
        pixmap = QPixmap.fromImage(self.cell.image)
        self.picture.setFixedSize(side, side)
        self.picture.setPixmap(
            pixmap.scaled(
                side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
        )

    def set_cell(self, cell: CellView, *, balance: bool) -> None:
        self.cell = cell
        self.balance = balance
        # The frame and the star mark it; the words stay short so its column is no wider.
        self.title.setText(f"λ {cell.strength:g}  ★ best" if balance else f"λ {cell.strength:g}")
        # Two lines: the caption is no wider than a small picture.
        self.scores.setText(f"CLIP-I {cell.clip_i:.3f}\nCLIP-T {cell.clip_t:.3f}")
        tip = (
            f"CLIP-I {cell.clip_i:.4f}: how much it looks like the references\n"
            f"CLIP-T {cell.clip_t:.4f}: how well it follows the prompt"
        )
        if balance:
            tip += "\n★ the balance point: the picture that gives up least of either score"
        if not math.isnan(cell.balance_score):
            tip += f"\nbalance score {cell.balance_score:.3f} (the highest is the balance point)"
        if cell.path is not None:
            tip += f"\n{cell.path}"
        self.setToolTip(tip)
        self.setProperty("balance", balance)
        self.style().unpolish(self)
        self.style().polish(self)


class SweepPage(QWidget):
    run_requested = Signal()
    cancel_requested = Signal()
    use_requested = Signal(object)  # CellView
    clip_model_changed = Signal(str)
    message = Signal(str)

    def __init__(
        self,
        presets: Callable[[], list[BlockPreset]],
        this_map: Callable[[], BlockPreset],
        clip_model: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("sweepPage")
        self._presets = presets
        self._this_map = this_map
        self.clip_model = clip_model
        self.cells: list[SweepCellWidget] = []
        self.outcome: SweepOutcome | None = None
        self._columns = 1
        self._rows: list[str | None] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 6, 0, 0)
        layout.setSpacing(8)

        top = QHBoxLayout()
        label = QLabel("λ values")
        label.setObjectName("fieldLabel")
        self.lambdas = QLineEdit(DEFAULT_LAMBDAS)
        self.lambdas.setToolTip("The λ of each column, from 0 (the prompt only) to 1 (the references)")
        label.setToolTip(self.lambdas.toolTip())
        self.run_button = QPushButton("Run sweep")
        self.run_button.setObjectName("accentButton")
        self.run_button.setToolTip(
            "Make the current settings once per λ (and per row) with the same seed, and score each picture"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the sweep; the pictures made so far stay on the page")
        top.addWidget(label)
        top.addWidget(self.lambdas, 1)
        top.addWidget(self.run_button)
        top.addWidget(self.cancel_button)
        layout.addLayout(top)

        rows = QHBoxLayout()
        rows_label = QLabel("Rows")
        rows_label.setObjectName("fieldLabel")
        rows_label.setToolTip("One row of pictures per block map ticked")
        rows.addWidget(rows_label, 0, Qt.AlignmentFlag.AlignTop)
        self._row_box = QWidget()
        self._row_flow = FlowLayout(self._row_box)
        self._row_flow.setContentsMargins(0, 0, 0, 0)
        rows.addWidget(self._row_box, 1)
        layout.addLayout(rows)
        self.row_checks: dict[str, QCheckBox] = {}

        clip = QHBoxLayout()
        clip_label = QLabel("Scored with")
        clip_label.setObjectName("fieldLabel")
        self.clip_label = ElidedLabel()
        self.clip_label.setObjectName("pathLabel")
        self.clip_button = QPushButton("Choose CLIP model…")
        self.clip_button.setToolTip(
            "The CLIP model folder for the scores (the paper used openai/clip-vit-large-patch14)"
        )
        clip.addWidget(clip_label)
        clip.addWidget(self.clip_label, 1)
        clip.addWidget(self.clip_button)
        layout.addLayout(clip)

        status = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(8)
        self.progress.setRange(0, 1)
        self.status = QLabel(
            "Compares the references with the prompt: the same seed at each λ, scored with CLIP-I and CLIP-T."
        )
        self.status.setObjectName("hint")
        self.status.setWordWrap(True)
        status.addWidget(self.status, 1)
        layout.addLayout(status)
        layout.addWidget(self.progress)

        self.grid_host = QWidget()
        self.grid_host.setObjectName("sweepGrid")
        self.grid = QGridLayout(self.grid_host)
        self.grid.setContentsMargins(4, 4, 4, 4)
        self.grid.setSpacing(8)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.grid_host)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        layout.addWidget(self.scroll, 1)

        bottom = QHBoxLayout()
        self.saved_label = ElidedLabel()
        self.saved_label.setObjectName("caption")
        self.save_button = QPushButton("Save sheet…")
        self.save_button.setToolTip("Save a copy of the contact sheet (PNG) and its scores (CSV)")
        self.save_button.setEnabled(False)
        self.folder_button = QPushButton("Open folder")
        self.folder_button.setToolTip("Open the folder with this sweep's pictures, sheet and scores")
        self.folder_button.setEnabled(False)
        bottom.addWidget(self.saved_label, 1)
        bottom.addWidget(self.save_button)
        bottom.addWidget(self.folder_button)
        layout.addLayout(bottom)

        self.run_button.clicked.connect(self.run_requested)
        self.lambdas.returnPressed.connect(self.run_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.clip_button.clicked.connect(self._choose_clip)
        self.save_button.clicked.connect(self._save_copy)
        self.folder_button.clicked.connect(self._open_folder)
        self._show_clip()
        self.refresh_rows()

    # ------------------------------------------------------------------ what to sweep
    def refresh_rows(self) -> None:
        """The row choices: this block map, then every preset (ticks are kept by name)."""
        current = self._this_map()
        names = [THIS_MAP] + [p.name for p in self._presets()]
        if names == list(self.row_checks):
            # Only the map changed (a bar being dragged): relabel, do not rebuild the boxes.
            self.row_checks[THIS_MAP].setText(f"This block map ({current.name})")
            return
        ticked = {name for name, box in self.row_checks.items() if box.isChecked()} or {THIS_MAP}
        for box in self.row_checks.values():
            self._row_flow.removeWidget(box)
            box.hide()  # gone at once, not only when the deferred delete runs
            box.deleteLater()
        self.row_checks = {}
        for name in names:
            label = f"This block map ({current.name})" if name == THIS_MAP else name
            box = QCheckBox(label)
            box.setChecked(name in ticked)
            box.setToolTip(
                "The block map of the balance panel, as it is now"
                if name == THIS_MAP
                else f"The preset {name}"
            )
            self._row_flow.addWidget(box)
            self.row_checks[name] = box

    def chosen_rows(self) -> list[BlockPreset]:
        """The ticked block maps, in the order shown, without repeats of the same map."""
        chosen: list[BlockPreset] = []
        by_name = {p.name: p for p in self._presets()}
        for name, box in self.row_checks.items():
            if not box.isChecked():
                continue
            preset = self._this_map() if name == THIS_MAP else by_name.get(name)
            if preset is not None and all(dict(p.weights) != dict(preset.weights) for p in chosen):
                chosen.append(preset)
        return chosen

    def _choose_clip(self) -> None:
        path = dialogs.open_folder(self, "clip model", "The CLIP model folder for the sweep's scores")
        if path:
            self.set_clip_model(path)

    def set_clip_model(self, path: str) -> None:
        self.clip_model = str(path)
        self._show_clip()
        self.clip_model_changed.emit(self.clip_model)

    def _show_clip(self) -> None:
        self.clip_label.setText(self.clip_model or "no CLIP model chosen yet")

    # ------------------------------------------------------------------ a sweep's life
    def start(self, columns: int, rows: list[str | None]) -> None:
        self.clear()
        self._columns = columns
        self._rows = rows
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        n = columns * len(rows)
        self.status.setText(f"Loading the models and the CLIP model… ({n} picture{'s' if n != 1 else ''})")
        for r, name in enumerate(rows):
            if len(rows) > 1 or name is not None:
                label = QLabel(name or "λ")
                label.setObjectName("sweepRowLabel")
                label.setWordWrap(True)
                label.setFixedWidth(80)
                self.grid.addWidget(label, r, 0, Qt.AlignmentFlag.AlignVCenter)

    def clear(self) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.cells = []
        self.outcome = None
        self.save_button.setEnabled(False)
        self.folder_button.setEnabled(False)
        self.saved_label.setText("")

    def show_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.status.setText(f"Picture {len(self.cells) + 1} of {self._columns * len(self._rows)}…")

    def add_cell(self, cell: CellView) -> None:
        widget = SweepCellWidget(cell, self._side())
        widget.use_requested.connect(self.use_requested)
        self.grid.addWidget(widget, cell.row, cell.column + 1)
        self.cells.append(widget)
        if len(self.cells) == 1:
            self.view_changed()

    def view_changed(self) -> None:
        """Size the pictures again (the page was resized, or its first picture arrived)."""
        side = self._side()
        for widget in self.cells:
            widget.set_side(side)

    def finish(self, outcome: SweepOutcome) -> None:
        self.outcome = outcome
        for widget, cell in zip(self.cells, outcome.cells, strict=True):
            widget.set_cell(cell, balance=cell.index == outcome.balance)
        self.scroll.ensureWidgetVisible(self.cells[outcome.balance], 8, 8)
        best = outcome.cells[outcome.balance]
        where = f" ({best.preset})" if best.preset else ""
        self._idle(
            f"Balance point: λ {best.strength:g}{where}, CLIP-I {best.clip_i:.3f}, CLIP-T {best.clip_t:.3f}. "
            f"{len(outcome.cells)} pictures in {outcome.seconds:.1f} s."
        )
        self.saved_label.setText(f"Saved in {outcome.folder}")
        self.save_button.setEnabled(True)
        self.folder_button.setEnabled(True)

    def failed(self, text: str) -> None:
        self._idle(f"The sweep stopped: {text}")

    def cancelled(self) -> None:
        n = len(self.cells)
        self._idle(f"Cancelled after {n} picture{'s' if n != 1 else ''}; nothing was saved.")

    def _idle(self, text: str) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status.setText(text)

    @property
    def running(self) -> bool:
        return self.cancel_button.isEnabled()

    # ------------------------------------------------------------------ layout
    def _side(self) -> int:
        """Picture size: the whole sheet fits the page where it can (96–256 px a picture)."""
        viewport = self.scroll.viewport()
        labels = 88 if len(self._rows) > 1 or any(self._rows) else 0
        by_width = (viewport.width() - labels - 8 * (self._columns + 1)) // max(self._columns, 1) - 14
        caption = 84  # λ line, two score lines, the button, the margins
        by_height = (viewport.height() - 8 * (len(self._rows) + 1)) // max(len(self._rows), 1) - caption
        return int(min(max(min(by_width, by_height), 96), 256))

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self.view_changed()

    # ------------------------------------------------------------------ files
    def _save_copy(self) -> None:
        if self.outcome is None:
            return
        target = dialogs.save_file(
            self, "sweep", "Save the contact sheet", "sweep.png", "PNG pictures (*.png)"
        )
        if target:
            self.save_copy(Path(target))

    def save_copy(self, target: Path) -> tuple[Path, Path] | None:
        """Copy the sheet to ``target`` (.png) and its CSV beside it (.csv)."""
        assert self.outcome is not None
        target = target if target.suffix.lower() == ".png" else target.with_suffix(".png")
        csv_target = target.with_suffix(".csv")
        try:
            _copy_atomic(self.outcome.sheet, target)
            _copy_atomic(self.outcome.csv, csv_target)
        except OSError as exc:
            self.message.emit(f"The sheet could not be saved to {target}: {exc.strerror or exc}.")
            return None
        self.saved_label.setText(f"Saved {target.name} and {csv_target.name} in {target.parent}")
        return target, csv_target

    def _open_folder(self) -> None:
        if self.outcome is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.outcome.folder)))


def _copy_atomic(source: Path, target: Path) -> None:
    """Copy beside the target first, then move over it: a full disk never leaves half a sheet."""
    from ipa_studio.core.files import temporary

    with temporary(target) as tmp:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
