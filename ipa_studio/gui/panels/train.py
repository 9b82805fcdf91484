"""The Train tab: train an IP-Adapter on a folder of captioned pictures, watching it learn.

The run is a separate process (``core/train/process.py``), started with ``QProcess``: its events
arrive as lines on a pipe that Qt reads in the event loop, so nothing here blocks, and a crash or an
out-of-memory kill of the training ends that process, never the window. When the process ends
without saying why, its last stderr lines are shown in plain words.

The folder is checked first (``scan_captioned_folder`` on a thread): how many pictures, captions and
unreadable files, with examples, before a run can start.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QProcess, QSize, Qt, QThread, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.train.process import describe_ending, parse_event, worker_command
from ipa_studio.gui import dialogs
from ipa_studio.gui.library import LibrarySnapshot, LibraryWorker, path_key
from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.widgets.chart import RIGHT, LineChart
from ipa_studio.gui.widgets.column import ColumnScrollArea
from ipa_studio.gui.widgets.fields import ComboBox, SpinBox
from ipa_studio.gui.widgets.section import Section

THUMB = 96
EXAMPLES = 3  # unreadable files named in the check's summary
_STDERR_KEEP = 16_000  # characters of the process's stderr kept for its last words

VARIANT_CHOICES = (
    ("global", "Global: the reference's overall look (4 image tokens, the paper's)"),
    ("plus", "Plus: finer detail from the reference (16 image tokens)"),
)
PRECISION_CHOICES = (
    ("no", "Full precision (fp32)"),
    ("bf16", "bf16 (recent NVIDIA GPUs)"),
    ("fp16", "fp16 (older GPUs)"),
)


def duration_text(seconds: float | None) -> str:
    """ "about 3 min left" style, for the ETA."""
    if seconds is None:
        return "time left: measuring…"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s left"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"about {minutes} min left"
    return f"about {minutes / 60:.1f} h left"


def scan_summary(scan: Any) -> str:
    """What the check of a dataset folder found, in one or two lines."""
    images = len(scan.items)
    captions = images - scan.missing_captions
    parts = [f"{images} picture{'s' if images != 1 else ''}", f"{captions} with a caption"]
    text = " · ".join(parts) + f" (from {scan.source})"
    if scan.missing_captions:
        verb = "trains" if scan.missing_captions == 1 else "train"
        text += f". {scan.missing_captions} without a caption {verb} with an empty one"
    if scan.unreadable:
        examples = ", ".join(
            f"{Path(p).name} ({_short_reason(p, why)})" for p, why in scan.unreadable[:EXAMPLES]
        )
        more = f" and {len(scan.unreadable) - EXAMPLES} more" if len(scan.unreadable) > EXAMPLES else ""
        text += f". {len(scan.unreadable)} unreadable file(s) will be skipped: {examples}{more}"
    return text + "."


def _short_reason(path: Any, why: str) -> str:
    """The reason without the exception's class and the path the line already names."""
    head, _, rest = why.partition(": ")
    if rest and head.isidentifier():
        why = rest
    for form in (f"'{path}'", f'"{path}"', str(path)):
        why = why.replace(form, "").strip()
    return why.rstrip(" :") or "unreadable"


class _ScanThread(QThread):
    """Checks one dataset folder; a folder of 100 000 pictures takes a while (headers are read)."""

    done = Signal(int, object, str)  # request number, FolderScan or None, error message

    def __init__(self, number: int, folder: Path) -> None:
        super().__init__()
        self.number, self.folder = number, folder
        self.setObjectName("dataset-scan")

    def run(self) -> None:
        from ipa_studio.core.errors import IPAStudioError
        from ipa_studio.core.train.data import scan_dataset

        try:
            # A folder, or a .json list in the official format whose paths start at its folder.
            scan = scan_dataset(self.folder)
        except IPAStudioError as exc:
            self.done.emit(self.number, None, str(exc))
        except OSError as exc:
            self.done.emit(self.number, None, f"The folder '{self.folder}' cannot be read: {exc.strerror}.")
        else:
            self.done.emit(self.number, scan, "")


@dataclass
class RunInfo:
    folder: Path
    total: int
    step: int = 0
    start_step: int = 0
    ended: str = ""  # "" while running; "finished", "stopped", "failed"


class SampleGrid(QWidget):
    """The previews: the held-out references on top, then one row per preview step, newest last."""

    def __init__(self, loader: ImageLoader) -> None:
        super().__init__()
        self.loader = loader
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(4, 4, 4, 4)
        self.grid.setSpacing(4)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self._rows: dict[str, int] = {}
        self._cells: dict[tuple[str, int], QLabel] = {}
        self._token = 0  # thumbnails of an earlier run that arrive late are dropped
        loader.loaded.connect(self._on_loaded)

    def clear(self) -> None:
        self._token += 1
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self._rows.clear()
        self._cells.clear()

    def rows(self) -> list[str]:
        return list(self._rows)

    def loaded_count(self) -> int:
        return sum(
            1 for cell in self._cells.values() if cell.pixmap() is not None and not cell.pixmap().isNull()
        )

    def add_row(self, label: str, paths: list[str]) -> None:
        row = self._rows.setdefault(label, len(self._rows))
        title = QLabel(label)
        title.setObjectName("hint")
        title.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        title.setMinimumWidth(78)
        self.grid.addWidget(title, row, 0)
        for column, path in enumerate(paths):
            cell = QLabel()
            cell.setFixedSize(THUMB, THUMB)
            cell.setObjectName("sampleCell")
            cell.setToolTip(path)
            self.grid.addWidget(cell, row, column + 1)
            self._cells[(label, column)] = cell
            self.loader.load(
                ("train-sample", self._token, label, column), _thumbnail(path), "showing a sample"
            )

    def _on_loaded(self, key: object, image: QImage, error: str) -> None:
        if not (isinstance(key, tuple) and key[0] == "train-sample" and key[1] == self._token):
            return
        cell = self._cells.get((key[2], key[3]))
        if cell is not None and not image.isNull():
            cell.setPixmap(QPixmap.fromImage(image))
        elif cell is not None:
            cell.setText("?")
            cell.setToolTip(error)


def _thumbnail(path: str):  # noqa: ANN202 - a closure for the loader thread
    def make() -> QImage:
        image = QImage(path)
        if image.isNull():
            raise OSError(f"'{path}' is not a picture Qt can read")
        return image.scaled(
            QSize(THUMB, THUMB),
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )

    return make


class TrainPanel(QWidget):
    """Settings on the left; curves, numbers and the sample grid on the right."""

    run_ended = Signal(str)  # "finished" | "stopped" | "failed", for tests and the window
    scan_done = Signal(str)  # the summary or the error, for tests

    def __init__(
        self,
        library: LibraryWorker,
        loader: ImageLoader,
        runs_dir: Any,
        *,
        device: str = "auto",
        models: Any = None,
    ) -> None:
        super().__init__()
        self.library = library
        self.loader = loader
        self.runs_dir = runs_dir  # callable: where new run folders go
        self.device = device
        self.snapshot = LibrarySnapshot(library.root)
        self._defaults = models  # the Create tab's models, offered first
        self.scan: Any = None
        self._scan_number = 0
        self._scans: list[_ScanThread] = []
        self.process: QProcess | None = None
        self.run: RunInfo | None = None
        self._buffer = b""
        self._stderr = ""
        self._ended_by_event = ""
        self._stopping = False
        self._build()
        library.scanned.connect(self.set_snapshot)
        self.set_snapshot(self.snapshot)  # the Create tab's models, before the library's scan lands
        self._update_buttons()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        column = QWidget()
        column.setObjectName("trainColumn")
        col = QVBoxLayout(column)
        col.setContentsMargins(10, 10, 10, 10)
        col.setSpacing(10)

        data = Section(
            "Dataset",
            "A folder of pictures, each with a .txt caption beside it, or a metadata.jsonl; or a "
            '.json list in the official format [{"image_file", "text"}], its paths starting at its folder.',
        )
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("Choose the folder of training pictures")
        self.folder_edit.editingFinished.connect(lambda: self.set_folder(self.folder_edit.text()))
        self.choose_button = QPushButton("Choose…")
        self.choose_button.clicked.connect(self._choose_folder)
        self.json_button = QPushButton("JSON list…")
        self.json_button.setToolTip(
            "A dataset list in the official IP-Adapter format (tutorial_train.py's --data_json_file)"
        )
        self.json_button.clicked.connect(self._choose_json)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(self.choose_button)
        row.addWidget(self.json_button)
        data.body.addLayout(row)
        self.scan_label = QLabel("No folder chosen yet.")
        self.scan_label.setWordWrap(True)
        self.scan_label.setObjectName("hint")
        data.body.addWidget(self.scan_label)
        col.addWidget(data)

        models = Section(
            "Models", "Frozen while the adapter trains: the SD1.5 base model and the image encoder."
        )
        form = QFormLayout()
        self.base_combo = ComboBox()
        self.encoder_combo = ComboBox()
        for combo in (self.base_combo, self.encoder_combo):
            combo.setSizeAdjustPolicy(ComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(16)
        form.addRow("Base model", self.base_combo)
        form.addRow("Image encoder", self.encoder_combo)
        models.body.addLayout(form)
        col.addWidget(models)

        recipe = Section("Recipe", "The paper's: AdamW, learning rate 1e-4, text and image dropped 5% each.")
        form = QFormLayout()
        self.variant_combo = ComboBox()
        for value, label in VARIANT_CHOICES:
            self.variant_combo.addItem(label, value)
        self.resolution_box = self._spin(64, 1024, 512, step=8, suffix=" px")
        self.steps_box = self._spin(1, 10_000_000, 1000)
        self.batch_box = self._spin(1, 256, 8)
        self.precision_combo = ComboBox()
        for value, label in PRECISION_CHOICES:
            self.precision_combo.addItem(label, value)
        self.precision_combo.setCurrentIndex(0 if self.device == "cpu" else 1)
        self.checkpoint_box = self._spin(1, 1_000_000, 500)
        self.checkpoint_box.setToolTip("A checkpoint every this many steps, to resume from or to evaluate")
        self.sample_box = self._spin(0, 1_000_000, 100)
        tips = {
            self.choose_button: "The folder of training pictures (captions beside them, or a metadata.jsonl)",
            self.base_combo: "The SD1.5 model the adapter is trained for; it stays frozen",
            self.encoder_combo: "The CLIP image encoder that embeds the references; it stays frozen",
            self.variant_combo: (
                "Global: 4 tokens from the image embedding (the paper's); Plus: 16 from its grid"
            ),
            self.resolution_box: "Training pictures are cut to this square (the paper: 512)",
            self.steps_box: "Optimizer steps to train (the paper: 1,000,000 at batch 64)",
            self.batch_box: "Pictures per step; a smaller batch needs less memory",
            self.precision_combo: "The number format of the frozen models; the adapter itself learns in fp32",
        }
        for widget, tip in tips.items():
            widget.setToolTip(tip)
        self.sample_box.setSpecialValueText("off")
        self.sample_box.setToolTip(
            "Every this many steps, the held-out references are drawn with the adapter as it is then"
        )
        form.addRow("Variant", self.variant_combo)
        form.addRow("Resolution", self.resolution_box)
        form.addRow("Steps", self.steps_box)
        form.addRow("Batch size", self.batch_box)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Checkpoint every", self.checkpoint_box)
        form.addRow("Samples every", self.sample_box)
        recipe.body.addLayout(form)
        col.addWidget(recipe)
        col.addStretch(1)
        scroll = ColumnScrollArea(column)

        buttons = QHBoxLayout()
        buttons.setContentsMargins(10, 8, 10, 10)
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("primary")
        self.pause_button = QPushButton("Pause")
        self.resume_button = QPushButton("Resume")
        self.start_button.setToolTip("Start a new run in its own process; the window stays usable")
        self.resume_button.setToolTip("Go on with the paused run from the step it reached")
        self.stop_button = QPushButton("Stop")
        self.start_button.clicked.connect(self.start)
        self.pause_button.clicked.connect(self.pause)
        self.resume_button.clicked.connect(self.resume)
        self.stop_button.clicked.connect(self.stop)
        for button in (self.start_button, self.pause_button, self.resume_button, self.stop_button):
            buttons.addWidget(button)
        self.pause_button.setToolTip(
            "Saves a checkpoint and holds the run; Resume goes on from the same step"
        )
        self.stop_button.setToolTip("Ends the run at this step with a checkpoint and the adapter files")
        left = QWidget()
        left.setObjectName("trainLeftPane")
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(0)
        left_layout.addWidget(scroll, 1)
        left_layout.addLayout(buttons)

        right = QWidget()
        right.setObjectName("trainRightPane")
        rl = QVBoxLayout(right)
        rl.setContentsMargins(10, 10, 10, 10)
        rl.setSpacing(8)
        self.status = QLabel("Choose a dataset folder, then press Start training.")
        self.status.setWordWrap(True)
        self.status.setObjectName("trainStatus")
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.numbers = QLabel("")
        self.numbers.setObjectName("trainNumbers")
        self.chart = LineChart(title="Training curves")
        self.chart.add_series("loss", "#4e9cff", width=1.0)
        self.chart.add_series("smoothed loss", "#f5a142", width=2.5)
        self.chart.add_series("learning rate", "#5bd08c", axis=RIGHT, width=1.5, dashed=True)
        self.chart.set_titles(x="step", left="loss", right="learning rate")
        self.chart.set_placeholder("The loss appears here once the first step is done")
        samples_title = QLabel("Samples of held-out references (same seeds every time)")
        samples_title.setObjectName("sectionTitle")
        self.samples = SampleGrid(self.loader)
        self.samples_scroll = QScrollArea()
        self.samples_scroll.setWidgetResizable(True)
        self.samples_scroll.setWidget(self.samples)
        self.samples_scroll.setMinimumHeight(THUMB + 24)
        view = QSplitter(Qt.Orientation.Vertical)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addWidget(self.chart, 1)
        bottom = QWidget()
        bl = QVBoxLayout(bottom)
        bl.setContentsMargins(0, 0, 0, 0)
        bl.addWidget(samples_title)
        bl.addWidget(self.samples_scroll, 1)
        view.addWidget(top)
        view.addWidget(bottom)
        view.setChildrenCollapsible(False)
        view.setSizes([380, 300])
        rl.addWidget(self.status)
        rl.addWidget(self.numbers)
        rl.addWidget(view, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([440, 960])
        self.splitter.setChildrenCollapsible(False)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.splitter)

    @staticmethod
    def _spin(low: int, high: int, value: int, *, step: int = 1, suffix: str = "") -> SpinBox:
        box = SpinBox()
        box.setRange(low, high)
        box.setSingleStep(step)
        box.setValue(value)
        box.setSuffix(suffix)
        box.setGroupSeparatorShown(True)
        return box

    # ------------------------------------------------------------------ models
    def set_snapshot(self, snapshot: LibrarySnapshot) -> None:
        self.snapshot = snapshot
        self._fill(self.base_combo, "base", self._defaults.base if self._defaults else None)
        self._fill(
            self.encoder_combo, "image_encoder", self._defaults.image_encoder if self._defaults else None
        )

    def set_default_models(self, models: Any) -> None:
        """The Create tab's models: chosen here too until the person picks others."""
        self._defaults = models
        self.set_snapshot(self.snapshot)

    def _fill(self, combo: ComboBox, kind: str, default: str | None) -> None:
        current = combo.currentData() or default
        was = combo.blockSignals(True)
        combo.clear()
        seen = set()
        for entry in self.snapshot.of_kind(kind):
            if not entry.usable or (kind == "base" and entry.details.get("in_channels") == 9):
                continue  # an inpainting UNet is not trained on plain pictures
            combo.addItem(entry.name, str(entry.path))
            combo.setItemData(combo.count() - 1, str(entry.path), Qt.ItemDataRole.ToolTipRole)
            seen.add(path_key(entry.path))
        if default and path_key(default) not in seen:
            combo.addItem(Path(default).name, default)
            combo.setItemData(combo.count() - 1, default, Qt.ItemDataRole.ToolTipRole)
        index = combo.findData(current) if current else -1
        combo.setCurrentIndex(index if index >= 0 else (0 if combo.count() else -1))
        combo.blockSignals(was)
        if combo.count() == 0:
            combo.setPlaceholderText(f"No {kind.replace('_', ' ')} in the model library (Models tab)")

    # ------------------------------------------------------------------ dataset check
    def _choose_folder(self) -> None:
        chosen = dialogs.open_folder(self, "training data", "Choose the folder of training pictures")
        if chosen:
            self.set_folder(chosen)

    def _choose_json(self) -> None:
        chosen = dialogs.open_file(self, "training data", "Choose a dataset list", "JSON (*.json)")
        if chosen:
            self.set_folder(chosen)

    def set_folder(self, folder: str | Path) -> None:
        text = str(folder).strip()
        if self.folder_edit.text() != text:
            self.folder_edit.setText(text)
        self.scan = None
        self._update_buttons()
        if not text:
            self.scan_label.setText("No folder chosen yet.")
            return
        self._scan_number += 1
        self.scan_label.setText("Checking the folder…")
        thread = _ScanThread(self._scan_number, Path(text).expanduser())
        thread.done.connect(self._on_scanned)
        # Finished checks are dropped only here, never from their own signal: a QThread object
        # must outlive its thread.
        self._scans = [t for t in self._scans if not t.isFinished()]
        self._scans.append(thread)
        thread.start()

    def _on_scanned(self, number: int, scan: Any, error: str) -> None:
        if number != self._scan_number:
            return  # an older folder's check
        self.scan = scan
        text = scan_summary(scan) if scan is not None else error
        self.scan_label.setText(text)
        self.scan_label.setProperty("tone", "" if scan is not None else "bad")
        self._update_buttons()
        self.scan_done.emit(text)

    # ------------------------------------------------------------------ the run
    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    def settings(self, folder: Path) -> dict[str, Any]:
        """The ``TrainConfig`` of a run started now, as JSON."""
        from ipa_studio.core.train.trainer import TrainConfig, default_workers

        config = TrainConfig(
            data=Path(self.folder_edit.text()).expanduser(),
            base_model=Path(self.base_combo.currentData()),
            image_encoder=Path(self.encoder_combo.currentData()),
            output=folder,
            variant=self.variant_combo.currentData(),
            resolution=self.resolution_box.value(),
            batch_size=self.batch_box.value(),
            max_steps=self.steps_box.value(),
            mixed_precision=self.precision_combo.currentData(),
            checkpoint_every=self.checkpoint_box.value(),
            sample_every=self.sample_box.value(),
            device="cpu" if self.device == "cpu" else None,
            num_workers=0 if self.device == "cpu" else default_workers(),
        )
        return config.to_json()

    def start(self) -> bool:
        if self.running():
            return False
        problem = self._cannot_start()
        if problem:
            self._say(problem, bad=True)
            return False
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(self.runs_dir())
        folder = base / f"run-{stamp}"
        n = 2
        while folder.exists():
            folder = base / f"run-{stamp}-{n}"
            n += 1
        try:
            folder.mkdir(parents=True)
            settings_path = folder / "launch.json"
            settings_path.write_text(json.dumps(self.settings(folder), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            self._say(f"The run folder '{folder}' cannot be made: {exc.strerror}.", bad=True)
            return False
        self.run = RunInfo(folder, self.steps_box.value())
        self._buffer, self._stderr, self._ended_by_event, self._stopping = b"", "", "", False
        self.chart.clear()
        self.samples.clear()
        self.numbers.setText("")
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.ProcessChannelMode.SeparateChannels)
        proc.readyReadStandardOutput.connect(self._read_events)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_process_finished)
        proc.errorOccurred.connect(self._on_process_error)
        self.process = proc
        program, *args = worker_command(settings_path)
        proc.start(program, args)
        self._say(f"Starting: loading the models. The run folder is {folder}.")
        self._update_buttons()
        return True

    def _cannot_start(self) -> str:
        if self.scan is None:
            return "Choose a dataset folder first, and wait for its check to finish."
        if not self.base_combo.currentData():
            return "Choose a base model (add one on the Models tab)."
        if not self.encoder_combo.currentData():
            return "Choose an image encoder (add one on the Models tab)."
        if len(self.scan.items) < self.batch_box.value():
            return (
                f"The folder has {len(self.scan.items)} readable picture(s), fewer than one batch of "
                f"{self.batch_box.value()}: lower the batch size or add pictures."
            )
        return ""

    def _send(self, command: str) -> None:
        if self.running():
            assert self.process is not None
            self.process.write((command + "\n").encode())

    def pause(self) -> None:
        self._send("pause")
        self.pause_button.setEnabled(False)
        self._say("Pausing after this step (a checkpoint is saved)…")

    def resume(self) -> None:
        self._send("resume")
        self.resume_button.setEnabled(False)

    def stop(self) -> None:
        self._stopping = True
        self._send("stop")
        self._say("Stopping after this step: a checkpoint and the adapter files are written…")
        self._update_buttons()

    def kill(self) -> None:
        """Ends the training process at once (closing the window while it will not stop)."""
        if self.running():
            assert self.process is not None
            self.process.kill()

    # ------------------------------------------------------------------ events
    def _read_stderr(self) -> None:
        if self.process is None:
            return
        text = bytes(self.process.readAllStandardError().data()).decode("utf-8", errors="replace")
        self._stderr = (self._stderr + text)[-_STDERR_KEEP:]

    def _read_events(self) -> None:
        if self.process is None:
            return
        self._buffer += bytes(self.process.readAllStandardOutput().data())
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            event = parse_event(line)
            if event is not None:
                self.handle_event(event)

    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        run = self.run
        if run is None:
            return
        if kind == "started":
            run.start_step = run.step = int(event.get("start_step", 0))
            refs = event.get("references") or []
            if refs:
                self.samples.add_row("references", refs)
            self._say(f"Training on {event.get('dataset', 'the folder')}. Run folder: {run.folder}")
        elif kind == "step":
            run.step = int(event["step"])
            self.chart.append("loss", run.step, event["loss"])
            self.chart.append("smoothed loss", run.step, event["smoothed"])
            self.chart.append("learning rate", run.step, event["lr"])
            speed = event.get("steps_per_s")
            pace = f"{speed:.2f} steps/s" if speed else "measuring the pace"
            self.numbers.setText(
                f"Step {run.step:,} of {run.total:,} · loss {event['loss']:.4f} "
                f"(smoothed {event['smoothed']:.4f}) · lr {event['lr']:.1e} · {pace} · "
                f"{duration_text(event.get('eta_s'))}"
            )
        elif kind == "sample":
            self.samples.add_row(f"step {int(event['step']):,}", list(event["paths"]))
            # The newest row in view, once the layout has made room for it.
            bar = self.samples_scroll.verticalScrollBar()
            QTimer.singleShot(50, bar, lambda: bar.setValue(bar.maximum()))
        elif kind == "checkpoint":
            self._say(f"Checkpoint at step {int(event['step']):,}: {event['path']}")
        elif kind == "paused":
            self._say(f"Paused at step {int(event['step']):,}; a checkpoint is in {event['checkpoint']}.")
            self._paused = True
        elif kind == "resumed":
            self._paused = False
            self._say(f"Training again from step {int(event['step']):,}.")
        elif kind == "log":
            self.status.setToolTip(str(event.get("message", "")))
        elif kind == "finished":
            self._ended_by_event = "stopped" if event.get("stopped") else "finished"
            where = event.get("adapter")
            self._say(
                ("Stopped" if event.get("stopped") else "Finished")
                + f" at step {int(event['step']):,}."
                + (f" The adapter is {where}; the curves are in {event.get('curves')}." if where else "")
            )
        elif kind == "error":
            self._ended_by_event = "failed"
            self._say(str(event["message"]), bad=True)
        self._update_buttons()

    def _on_process_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.run is not None:
            self._ended_by_event = "failed"
            self._say("The training process could not be started: " + self.process.errorString(), bad=True)
            self._finish_run("failed")

    def _on_process_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read_events()
        self._read_stderr()
        if self.run is None:
            return
        ended = self._ended_by_event
        if not ended:
            crashed = status == QProcess.ExitStatus.CrashExit
            self._say(
                describe_ending(
                    None if crashed else code,
                    crashed=crashed,
                    stderr=self._stderr,
                    step=self.run.step,
                    run_folder=self.run.folder,
                ),
                bad=True,
            )
            ended = "failed"
        self._finish_run(ended)

    def _finish_run(self, ended: str) -> None:
        assert self.run is not None
        self.run.ended = ended
        self._paused = False
        if self.process is not None:
            self.process.deleteLater()
            self.process = None
        self._update_buttons()
        self.run_ended.emit(ended)

    # ------------------------------------------------------------------ state
    _paused = False

    def _say(self, text: str, *, bad: bool = False) -> None:
        self.status.setText(text)
        self.status.setProperty("tone", "bad" if bad else "")
        self.status.style().unpolish(self.status)
        self.status.style().polish(self.status)

    def _update_buttons(self) -> None:
        running = self.running()
        self.start_button.setEnabled(not running and self.scan is not None)
        self.pause_button.setEnabled(running and not self._paused and not self._stopping)
        self.resume_button.setEnabled(running and self._paused and not self._stopping)
        self.stop_button.setEnabled(running and not self._stopping)
        for widget in (
            self.folder_edit,
            self.choose_button,
            self.base_combo,
            self.encoder_combo,
            self.variant_combo,
            self.resolution_box,
            self.steps_box,
            self.batch_box,
            self.precision_combo,
            self.checkpoint_box,
            self.sample_box,
        ):
            widget.setEnabled(not running)

    def shutdown(self, timeout_ms: int = 60_000) -> None:
        """Ends the run (a checkpoint is saved when there is time) and waits for the folder checks."""
        if self.running():
            assert self.process is not None
            self._send("stop")
            self.process.closeWriteChannel()
            if not self.process.waitForFinished(timeout_ms):
                self.process.kill()
                self.process.waitForFinished(5_000)
        for thread in list(self._scans):
            thread.wait()
