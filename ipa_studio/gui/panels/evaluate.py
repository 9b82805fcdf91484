"""The Evaluate tab: the paper's CLIP-I / CLIP-T for a checkpoint or every saved checkpoint of a
training run, as a table and a chart against the step, with the best one marked.

The evaluation runs as ``ipa-studio evaluate --checkpoints … --events`` in a separate process, so
the window shows exactly the numbers the command line gives; the window only reads the JSON lines
the process prints (checkpoints, progress, scores, done). Loading models and generating happen in
that process: the window's event loop is never held, an out-of-memory or a crash there leaves the
window working, its memory is returned when it ends, and Cancel simply ends it (the checkpoints
already scored stay in the table and in their CSV files).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import QProcess, QProcessEnvironment, Qt, QTimer, Signal
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.settings import ModelPaths
from ipa_studio.gui import dialogs
from ipa_studio.gui.library import LibrarySnapshot, LibraryWorker
from ipa_studio.gui.widgets.chart import RIGHT, LineChart
from ipa_studio.gui.widgets.column import ColumnScrollArea
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.fields import ComboBox, DoubleSpinBox, SpinBox
from ipa_studio.gui.widgets.section import Section

CLIP_I_COLOR = "#4e9cff"
CLIP_T_COLOR = "#f5a142"
BEST_BY_CHOICES = (
    ("clip-i", "CLIP-I (likeness to the image prompt, the paper's first metric)"),
    ("clip-t", "CLIP-T (match with the caption)"),
)
COLUMNS = ("Step", "CLIP-I", "CLIP-T", "Adapter file")
_PATH_SEPARATOR = " ; "
_STYLE = """
QLabel#evalStatus[tone="bad"] { color: #ff8a80; }
QLabel#evalStatus[tone="good"] { color: #8fd19e; }
QTableWidget { background: #232326; alternate-background-color: #27272b; gridline-color: #34343a; }
"""


def _clip_model_near(models_dir: Path) -> str:
    """A CLIP ViT-L/14 folder (the paper's scoring model) in the models folder, if one is there."""
    try:
        for candidate in sorted(models_dir.glob("*clip-vit-large-patch14*")) + sorted(
            models_dir.glob("*/*clip-vit-large-patch14*")
        ):
            if (candidate / "config.json").is_file():
                return str(candidate)
    except OSError:
        pass
    return ""


def _short_name(adapter: Path) -> str:
    """Checkpoints of one run share a file name; their folder tells them apart."""
    return f"{adapter.parent.name}/{adapter.name}" if adapter.parent.name else adapter.name


class _PathField(QWidget):
    """A path typed or chosen with buttons; ``changed`` when the person is done editing."""

    changed = Signal()

    def __init__(self, placeholder: str, buttons: list[tuple[str, str, Callable[[], str | list[str]]]]):
        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(6)
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.edit.setClearButtonEnabled(True)
        for clear in self.edit.findChildren(QToolButton):  # the clear button Qt adds
            clear.setToolTip("Clear")
        self.edit.editingFinished.connect(self.changed)
        row.addWidget(self.edit, 1)
        self.buttons: list[QToolButton] = []
        for text, tip, choose in buttons:
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, choose=choose: self._choose(choose))
            row.addWidget(button)
            self.buttons.append(button)

    def _choose(self, choose: Callable[[], str | list[str]]) -> None:
        chosen = choose()
        paths = [chosen] if isinstance(chosen, str) else list(chosen)
        paths = [p for p in paths if p]
        if paths:
            self.set_paths(paths)
            self.changed.emit()

    def paths(self) -> list[str]:
        return [p.strip() for p in self.edit.text().split(_PATH_SEPARATOR.strip()) if p.strip()]

    def set_paths(self, paths: list[str]) -> None:
        self.edit.setText(_PATH_SEPARATOR.join(paths))
        self.edit.setCursorPosition(0)


class EvaluatePanel(QWidget):
    """``use_in_create(adapter, image_encoder)``: the person wants that checkpoint in the Create tab.
    ``ended(str)``: "finished" | "failed" | "cancelled", when an evaluation stops."""

    use_in_create = Signal(str, str)
    ended = Signal(str)

    def __init__(
        self,
        library: LibraryWorker,
        models: ModelPaths,
        outputs_dir: Callable[[], Path],
        models_dir: Callable[[], Path],
        device: str = "",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("evaluatePage")
        self.setStyleSheet(_STYLE)
        self._outputs_dir = outputs_dir
        self._models_dir = models_dir
        self.device = device
        self.snapshot = LibrarySnapshot(Path())
        self._defaults = models
        self.process: QProcess | None = None
        self._buffer = b""
        self._stderr = b""
        self._cancelling = False
        self.scores: list[dict[str, Any]] = []
        self.best: int | None = None
        self.best_by = "clip_i"
        self.results_csv: Path | None = None
        self.chart_png: Path | None = None
        self._image_encoder_used = ""
        self._build()
        library.scanned.connect(self.set_snapshot)
        self.set_snapshot(self.snapshot)  # the chosen models at once; the library's list follows
        # A scan of our own: one the window started earlier may have ended before this connection.
        library.scan([p for p in (models.base, models.image_encoder) if p])
        self.refresh_checkpoints()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        split = QSplitter(Qt.Orientation.Horizontal)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(split)

        column = QWidget()
        column.setObjectName("evaluateColumn")
        col = QVBoxLayout(column)
        col.setContentsMargins(10, 10, 10, 10)
        col.setSpacing(10)

        what = Section(
            "Checkpoints",
            "A training run folder (each checkpoint it saved is scored), or one or more adapter files.",
        )
        self.checkpoints = _PathField(
            "Run folder or adapter file",
            [
                (
                    "Run folder…",
                    "A folder made by training: each checkpoint in it is evaluated",
                    self._pick_run,
                ),
                ("Files…", "One or more adapter files (.safetensors, .bin)", self._pick_files),
            ],
        )
        self.checkpoints.changed.connect(self.refresh_checkpoints)
        what.body.addWidget(self.checkpoints)
        self.found = QLabel()
        self.found.setObjectName("hint")
        self.found.setWordWrap(True)
        what.body.addWidget(self.found)
        col.addWidget(what)

        data = Section(
            "Image prompts",
            "A folder of images with captions (a .txt beside each, or metadata.jsonl), or a .json list "
            'in the official format [{"image_file", "text"}]. The paper used COCO val2017.',
        )
        self.pairs = _PathField(
            "Folder of captioned images",
            [
                ("Folder…", "A folder of images with captions", self._pick_pairs_folder),
                ("JSON…", "A .json list in the official IP-Adapter format", self._pick_pairs_json),
            ],
        )
        data.body.addWidget(self.pairs)
        col.addWidget(data)

        models = Section("Models", "The base model and image encoder generate; the CLIP model scores.")
        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        self.base = ComboBox()
        self.base.setObjectName("evalBase")
        self.base.setToolTip("The Stable Diffusion 1.5 model the images are generated with")
        self.encoder = ComboBox()
        self.encoder.setObjectName("evalEncoder")
        self.encoder.setToolTip("The image encoder the adapter was trained with (ViT-H/14 for SD1.5)")
        for combo in (self.base, self.encoder):
            combo.setSizeAdjustPolicy(ComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(14)
        self.clip = _PathField(
            "CLIP model folder (openai/clip-vit-large-patch14)",
            [("Folder…", "A transformers CLIPModel folder; the paper scored with ViT-L/14", self._pick_clip)],
        )
        self.clip.set_paths([p for p in [_clip_model_near(self._models_dir())] if p])
        for row, (label, widget) in enumerate(
            (("Base", self.base), ("Encoder", self.encoder), ("CLIP", self.clip))
        ):
            text = QLabel(label)
            text.setObjectName("fieldLabel")
            grid.addWidget(text, row, 0)
            grid.addWidget(widget, row, 1)
        grid.setColumnStretch(1, 1)
        models.body.addLayout(grid)
        col.addWidget(models)

        settings = Section(
            "Settings", "The paper's: 4 images per prompt, empty text prompt, λ 1.0, DDIM 50 steps, 7.5."
        )
        form = QGridLayout()
        form.setHorizontalSpacing(10)
        self.num_images = self._spin(1, 16, 4, "Images generated for each image prompt")
        self.steps = self._spin(1, 200, 50, "Denoising steps (DDIM)")
        self.seed = self._spin(0, 2**31 - 1, 0, "Image prompt i is generated with seed + i")
        self.size = self._spin(64, 1024, 512, "Width and height of the generated images")
        self.size.setSingleStep(64)
        self.limit = self._spin(0, 1_000_000, 0, "Only the first N image prompts (0: all of them)")
        self.limit.setSpecialValueText("all")
        self.scale = DoubleSpinBox()
        self.scale.setRange(0.0, 2.0)
        self.scale.setSingleStep(0.05)
        self.scale.setValue(1.0)
        self.scale.setToolTip("λ, the strength of the image prompt")
        self.guidance = DoubleSpinBox()
        self.guidance.setRange(1.0, 30.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setValue(7.5)
        self.guidance.setToolTip("Classifier-free guidance scale")
        self.best_by_box = ComboBox()
        for key, text in BEST_BY_CHOICES:
            self.best_by_box.addItem(text, key)
        self.best_by_box.setToolTip("Which metric picks the best checkpoint (ties go to the other one)")
        fields = [
            ("Images each", self.num_images),
            ("Steps", self.steps),
            ("Seed", self.seed),
            ("λ", self.scale),
            ("Guidance", self.guidance),
            ("Size", self.size),
            ("Prompts", self.limit),
        ]
        for i, (label, widget) in enumerate(fields):
            text = QLabel(label)
            text.setObjectName("fieldLabel")
            form.addWidget(text, i // 2, (i % 2) * 2)
            form.addWidget(widget, i // 2, (i % 2) * 2 + 1)
        best = QLabel("Best by")
        best.setObjectName("fieldLabel")
        form.addWidget(best, 4, 0)
        form.addWidget(self.best_by_box, 4, 1, 1, 3)
        form.setColumnStretch(1, 1)
        form.setColumnStretch(3, 1)
        settings.body.addLayout(form)
        col.addWidget(settings)
        col.addStretch(1)
        scroll = ColumnScrollArea(column)

        run_bar = QWidget()
        run_bar.setObjectName("generatePanel")
        bar = QVBoxLayout(run_bar)
        bar.setContentsMargins(12, 10, 12, 10)
        bar.setSpacing(6)
        buttons = QHBoxLayout()
        self.start_button = QPushButton("Evaluate")
        self.start_button.setObjectName("generateButton")
        self.start_button.setToolTip("Generate and score the images of every checkpoint")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelButton")
        self.cancel_button.setToolTip("Stop the evaluation; the checkpoints scored so far stay in the table")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.cancel_button)
        bar.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(6)
        bar.addWidget(self.progress)
        self.status = ElidedLabel(mode=Qt.TextElideMode.ElideRight)
        self.status.setObjectName("evalStatus")
        bar.addWidget(self.status)

        left = QWidget()
        left.setObjectName("leftPane")
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(0)
        left_layout.addWidget(scroll, 1)
        left_layout.addWidget(run_bar)

        right = QWidget()
        right.setObjectName("rightPane")
        rl = QVBoxLayout(right)
        rl.setContentsMargins(10, 10, 10, 10)
        rl.setSpacing(8)
        self.chart = LineChart(title="CLIP-I and CLIP-T by checkpoint")
        self.chart.add_series("CLIP-I", CLIP_I_COLOR)
        self.chart.add_series("CLIP-T", CLIP_T_COLOR, axis=RIGHT)
        self.chart.set_titles(x="training step", left="CLIP-I", right="CLIP-T")
        self.chart.set_placeholder("Scores appear here, one point per checkpoint, as they are computed.")
        rl.addWidget(self.chart, 3)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        for corner in self.table.findChildren(QAbstractButton):  # Qt's select-all corner button
            corner.setToolTip("Select every row")
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        for c in range(3):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._show_selection)
        rl.addWidget(self.table, 2)
        actions = QHBoxLayout()
        self.summary = ElidedLabel(mode=Qt.TextElideMode.ElideRight)
        self.summary.setObjectName("summary")
        actions.addWidget(self.summary, 1)
        self.use_button = QPushButton("Use in Create")
        self.use_button.setObjectName("accentButton")
        self.use_button.setToolTip(
            "Make the selected checkpoint (the best one unless you pick another) the Create tab's adapter"
        )
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(self._use_selected)
        actions.addWidget(self.use_button)
        rl.addLayout(actions)

        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([440, 960])
        split.setChildrenCollapsible(False)
        self.splitter = split

    @staticmethod
    def _spin(low: int, high: int, value: int, tip: str) -> SpinBox:
        box = SpinBox()
        box.setRange(low, high)
        box.setValue(value)
        box.setToolTip(tip)
        return box

    # ------------------------------------------------------------------ choosers
    def _pick_run(self) -> str:
        return dialogs.open_folder(self, "training run", "Choose a training run folder")

    def _pick_files(self) -> list[str]:
        return dialogs.open_files(
            self,
            "adapter",
            "Choose adapter files",
            "Adapters (*.safetensors *.bin *.pth *.pt);;All files (*)",
        )

    def _pick_pairs_folder(self) -> str:
        return dialogs.open_folder(self, "evaluation pairs", "Choose a folder of captioned images")

    def _pick_pairs_json(self) -> str:
        return dialogs.open_file(self, "evaluation pairs", "Choose a dataset list", "JSON (*.json)")

    def _pick_clip(self) -> str:
        return dialogs.open_folder(self, "clip model", "Choose a CLIP model folder", self._models_dir())

    # ------------------------------------------------------------------ library
    def set_snapshot(self, snapshot: LibrarySnapshot) -> None:
        self.snapshot = snapshot
        self._fill(self.base, "base", self._defaults.base)
        self._fill(self.encoder, "image_encoder", self._defaults.image_encoder)

    def _fill(self, combo: ComboBox, kind: str, default: str) -> None:
        current = combo.currentData() or default
        was = combo.blockSignals(True)
        try:
            combo.clear()
            for entry in self.snapshot.of_kind(kind):
                if entry.usable:
                    combo.addItem(entry.name, str(entry.path))
                    combo.setItemData(combo.count() - 1, str(entry.path), Qt.ItemDataRole.ToolTipRole)
            if current and combo.findData(current) < 0:
                found = self.snapshot.find(current)
                if found is not None and found.usable:
                    current = str(found.path)
                else:
                    combo.addItem(Path(current).name, current)
            combo.setCurrentIndex(max(combo.findData(current), 0) if combo.count() else -1)
        finally:
            combo.blockSignals(was)

    def set_models(self, base: str, image_encoder: str) -> None:
        """Choose the base model and image encoder (e.g. the Create tab's)."""
        self._defaults = ModelPaths(base, self._defaults.adapter, image_encoder)
        for combo, path in ((self.base, base), (self.encoder, image_encoder)):
            if path and combo.findData(path) < 0:
                combo.addItem(Path(path).name, path)
            if path:
                combo.setCurrentIndex(combo.findData(path))

    # ------------------------------------------------------------------ checkpoints
    def refresh_checkpoints(self) -> None:
        """List what the chosen paths hold (cheap: file names and small JSON files only)."""
        from ipa_studio.core.errors import IPAStudioError
        from ipa_studio.core.evaluate.checkpoints import find_checkpoints

        paths = self.checkpoints.paths()
        if not paths:
            self.found.setText("Nothing chosen yet.")
            return
        try:
            found = find_checkpoints(paths)
        except IPAStudioError as exc:
            self.found.setText(str(exc))
            return
        labels = ", ".join(c.label for c in found[:8]) + (" …" if len(found) > 8 else "")
        self.found.setText(f"{len(found)} checkpoint{'s' if len(found) != 1 else ''}: {labels}")

    def _output_csv(self) -> Path:
        """A new results file: in the run folder when one is evaluated, else in the outputs folder."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        paths = [Path(p) for p in self.checkpoints.paths()]
        run = next((p for p in paths if p.is_dir() and (p / "checkpoints").is_dir()), None)
        folder = run / "evaluations" if run is not None else self._outputs_dir() / "evaluations"
        return folder / f"evaluation-{stamp}.csv"

    # ------------------------------------------------------------------ running
    def command(self, out: Path) -> list[str]:
        """The ``ipa-studio evaluate`` arguments of the current choices (after ``-m ipa_studio.cli``)."""
        args = ["evaluate", "--checkpoints", *self.checkpoints.paths()]
        args += ["--pairs", self.pairs.paths()[0] if self.pairs.paths() else ""]
        args += [
            "--model",
            self.base.currentData() or "",
            "--image-encoder",
            self.encoder.currentData() or "",
        ]
        args += ["--clip-model", self.clip.paths()[0] if self.clip.paths() else ""]
        args += ["--num-images", str(self.num_images.value()), "--steps", str(self.steps.value())]
        args += ["--seed", str(self.seed.value()), "--scale", repr(self.scale.value())]
        args += ["--guidance", repr(self.guidance.value()), "--size", str(self.size.value())]
        if self.limit.value():
            args += ["--limit", str(self.limit.value())]
        args += ["--best-by", self.best_by_box.currentData()]
        if self.device and self.device != "auto":
            args += ["--device", self.device]
        return [*args, "--out", str(out), "--events", "--quiet"]

    def _missing(self) -> str:
        needs = [
            (self.checkpoints.paths(), "a run folder or adapter file (Checkpoints)"),
            (self.pairs.paths(), "the image prompts (a folder of captioned images)"),
            (self.base.currentData(), "a base model"),
            (self.encoder.currentData(), "an image encoder"),
            (self.clip.paths(), "a CLIP model folder, e.g. openai/clip-vit-large-patch14"),
        ]
        missing = [what for value, what in needs if not value]
        return "Choose " + ", ".join(missing) + "." if missing else ""

    def running(self) -> bool:
        return self.process is not None

    def start(self) -> bool:
        """Start the evaluation process; False (and a message) when something is missing."""
        if self.running():
            return False
        missing = self._missing()
        if missing:
            self._say(missing, "bad")
            return False
        out = self._output_csv()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._say(f"The results folder '{out.parent}' cannot be made: {exc.strerror or exc}.", "bad")
            return False
        self._clear_results()
        self.results_csv = out
        self._image_encoder_used = self.encoder.currentData() or ""
        self.best_by = self.best_by_box.currentData().replace("-", "_")
        process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PYTHONIOENCODING", "utf-8")
        env.insert("IPA_STUDIO_BACKGROUND", "1")  # a lower CPU priority than the window's
        process.setProcessEnvironment(env)
        process.setProgram(sys.executable)
        process.setArguments(["-m", "ipa_studio.cli", *self.command(out)])
        process.readyReadStandardOutput.connect(self._read_output)
        process.readyReadStandardError.connect(self._read_errors)
        process.finished.connect(self._on_finished)
        process.errorOccurred.connect(self._on_process_error)
        self.process = process
        self._buffer, self._stderr, self._cancelling = b"", b"", False
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self._say("Starting: loading the models…", "")
        process.start()
        return True

    def cancel(self) -> None:
        if self.process is None:
            return
        self._cancelling = True
        self._say("Cancelling…", "")
        self.process.terminate()  # the process removes its half-written files on SIGTERM
        process = self.process
        QTimer.singleShot(3000, lambda: process.kill() if self.process is process else None)

    def shutdown(self) -> None:
        """End a running evaluation (window closing)."""
        if self.process is not None:
            process = self.process
            self._cancelling = True
            process.terminate()
            if not process.waitForFinished(3000):
                process.kill()
                process.waitForFinished(3000)

    def _read_output(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput().data())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            try:
                event = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue  # not one of ours (a library printing); nothing to show
            if isinstance(event, dict):
                self._on_event(event)

    def _read_errors(self) -> None:
        if self.process is not None:
            # Only the end matters: the last words of the process, for a failure message.
            self._stderr = (self._stderr + bytes(self.process.readAllStandardError().data()))[-20_000:]

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "checkpoints":
            self._expected = event.get("items", [])
        elif kind == "progress":
            self.progress.setValue(round(1000 * float(event.get("fraction", 0))))
            n, total = int(event["checkpoint"]) + 1, int(event["checkpoints"])
            label = self._label(n - 1)
            self._say(
                f"Checkpoint {n} of {total} ({label}) · image prompt {int(event['pair']) + 1} of "
                f"{event['pairs']} · step {event['step']} of {event['steps']}",
                "",
            )
        elif kind == "score":
            self._add_score(event)
        elif kind == "done":
            self.best = int(event["best"])
            self._mark_best()

    def _label(self, index: int) -> str:
        items = getattr(self, "_expected", [])
        return str(items[index]["label"]) if 0 <= index < len(items) else f"#{index + 1}"

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.process is not None:
            self._say(f"The evaluation could not be started ({sys.executable}).", "bad")
            self._end("failed")

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        if self.process is None:
            return
        self._read_output()
        self._read_errors()
        if self._cancelling:
            done = len(self.scores)
            self._say(f"Cancelled. {done} checkpoint{'s' if done != 1 else ''} scored before.", "")
            outcome = "cancelled"
        elif code == 0 and status == QProcess.ExitStatus.NormalExit and self.best is not None:
            self._save_chart()
            where = self.results_csv.parent if self.results_csv else ""
            self._say(f"Done. Results and chart saved in {where}.", "good")
            outcome = "finished"
        else:
            self._say(self._failure_text(code), "bad")
            outcome = "failed"
        self._end(outcome)

    def _failure_text(self, code: int) -> str:
        lines = [ln.strip() for ln in self._stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        said = next((ln[len("error: ") :] for ln in reversed(lines) if ln.startswith("error: ")), "")
        if said:
            return f"The evaluation stopped: {said}"
        if lines:
            return f"The evaluation stopped unexpectedly (exit code {code}): {lines[-1]}"
        return f"The evaluation process ended unexpectedly (exit code {code})."

    def _end(self, outcome: str) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.deleteLater()
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if outcome == "finished":
            self.progress.setValue(1000)
        self.ended.emit(outcome)

    def _say(self, text: str, tone: str) -> None:
        self.status.setText(text)
        if self.status.property("tone") != tone:
            # Re-polishing restyles the label (milliseconds); progress lines keep their tone.
            self.status.setProperty("tone", tone)
            self.status.style().unpolish(self.status)
            self.status.style().polish(self.status)

    # ------------------------------------------------------------------ results
    def _clear_results(self) -> None:
        self.scores = []
        self.best = None
        self.table.setRowCount(0)
        self.chart.clear()
        self.summary.setText("")
        self.use_button.setEnabled(False)

    def _x(self, index: int) -> float:
        step = self.scores[index].get("step")
        return float(step) if step is not None else float(index + 1)

    def _add_score(self, score: dict[str, Any]) -> None:
        self.scores.append(score)
        index = len(self.scores) - 1
        row = self.table.rowCount()
        self.table.insertRow(row)
        step = score.get("step")
        cells = [
            "—" if step is None else str(step),
            f"{score['clip_i']:.4f}",
            f"{score['clip_t']:.4f}",
            _short_name(Path(score["adapter"])),
        ]
        for column, text in enumerate(cells):
            item = QTableWidgetItem(text)
            if column < 3:
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if column == 3:
                item.setToolTip(score["adapter"])
            self.table.setItem(row, column, item)
        self.chart.append("CLIP-I", self._x(index), score["clip_i"])
        self.chart.append("CLIP-T", self._x(index), score["clip_t"])
        self.use_button.setEnabled(True)

    def _mark_best(self) -> None:
        if self.best is None or not (0 <= self.best < len(self.scores)):
            return
        best = self.scores[self.best]
        series = "CLIP-I" if self.best_by == "clip_i" else "CLIP-T"
        self.chart.set_mark(series, self._x(self.best), best[self.best_by], "best")
        bold = QFont(self.table.font())
        bold.setBold(True)
        for column in range(self.table.columnCount()):
            item = self.table.item(self.best, column)
            if item is not None:
                item.setFont(bold)
        step_item = self.table.item(self.best, 0)
        if step_item is not None:
            step_item.setText(f"★ {step_item.text()}")
            step_item.setToolTip(
                "The best checkpoint: " + ("highest CLIP-I" if self.best_by == "clip_i" else "highest CLIP-T")
            )
        self.table.selectRow(self.best)
        label = f"step {best['step']}" if best.get("step") is not None else Path(best["adapter"]).name
        metric = "CLIP-I" if self.best_by == "clip_i" else "CLIP-T"
        self.summary.setText(
            f"Best: {label}, CLIP-I {best['clip_i']:.4f}, CLIP-T {best['clip_t']:.4f} (highest {metric})"
        )

    def _save_chart(self) -> None:
        if self.results_csv is None:
            return
        target = self.results_csv.with_suffix(".png")
        try:
            self.chart_png = self.chart.save_png(target, self.chart.size().expandedTo(self.chart.sizeHint()))
        except OSError:
            self.chart_png = None

    def _selected_row(self) -> int | None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            return rows[0].row()
        return self.best

    def _show_selection(self) -> None:
        row = self._selected_row()
        self.use_button.setEnabled(row is not None and 0 <= row < len(self.scores))

    def _use_selected(self) -> None:
        row = self._selected_row()
        if row is None or not (0 <= row < len(self.scores)):
            return
        self.use_in_create.emit(str(self.scores[row]["adapter"]), self._image_encoder_used)

    def selected_adapter(self) -> str:
        row = self._selected_row()
        return str(self.scores[row]["adapter"]) if row is not None and 0 <= row < len(self.scores) else ""
