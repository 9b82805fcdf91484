"""Models and folders: which needed files are present, where they go, choose or download them.

The app opens and stays usable without any model: this view says plainly what is missing, lets
people point at files they already have, and (when the network is there) downloads the defaults from
the Hugging Face hub with a progress bar that can be cancelled and resumed later.

Each row first shows a quick check on disk (instant), then the model library's verdict once its
thread has read the file's headers: only that can tell an SDXL checkpoint or a LoRA from an SD1.5
model, since they all end in ``.safetensors``.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import QThread, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.errors import Cancelled
from ipa_studio.gui import dialogs
from ipa_studio.gui.errors import describe_error
from ipa_studio.gui.library import LibrarySnapshot, LibraryWorker
from ipa_studio.gui.model_check import KINDS, Check, check_model
from ipa_studio.gui.state import ViewState

KIND_TEXT = {
    "base": (
        "Base model",
        "Stable Diffusion 1.5: a diffusers folder (unet, vae, text_encoder, tokenizer, scheduler "
        "inside) or a single .safetensors checkpoint. Community SD1.5 models work too.",
    ),
    "adapter": (
        "IP-Adapter",
        "The adapter file that lets pictures act as prompts, e.g. ip-adapter_sd15.safetensors from "
        "h94/IP-Adapter.",
    ),
    "image_encoder": (
        "Image encoder",
        "The CLIP ViT-H/14 folder (config.json and model.safetensors) that reads the reference "
        "pictures: models/image_encoder in h94/IP-Adapter.",
    ),
}


_IN_SENTENCE = {"base": "the base model", "adapter": "the IP-Adapter", "image_encoder": "the image encoder"}


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def default_entries() -> dict[str, Any]:
    """The catalog's first-run set by kind; empty when the catalog cannot be read."""
    try:
        from ipa_studio.core.models.catalog import recommended

        return {e.kind: e for e in recommended() if e.kind in KINDS}
    except Exception:  # a damaged install must still open the window; downloads are then unavailable
        return {}


# --------------------------------------------------------------------------------------------------
# The download thread
# --------------------------------------------------------------------------------------------------


class DownloadWorker(QThread):
    """One thread for network work, so a slow server never blocks the window. Jobs run in order."""

    network_checked = Signal(bool)
    progress = Signal(str, float, float)  # kind, bytes done, bytes total (floats: sizes pass 2 GiB)
    finished_download = Signal(str, str)  # kind, local path
    failed = Signal(str, str)  # kind, message
    cancelled = Signal(str)  # kind

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ipa-studio-downloads")
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._cancel: set[str] = set()

    def check_network(self) -> None:
        self._put(("network", None))

    def download(self, kind: str, entry: Any, dest: Path) -> None:
        with self._lock:
            self._cancel.discard(kind)
        self._put(("download", (kind, entry, dest)))

    def cancel(self, kind: str | None = None) -> None:
        with self._lock:
            self._cancel.update(KINDS if kind is None else (kind,))

    def stop(self, timeout_ms: int = 30_000) -> bool:
        if not self.isRunning():
            return True
        self.cancel()
        self._queue.put(None)
        return self.wait(timeout_ms)

    def _put(self, item: tuple[str, Any]) -> None:
        self._queue.put(item)
        if not self.isRunning():
            self.start()

    def _cancelled(self, kind: str) -> bool:
        with self._lock:
            return kind in self._cancel

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            what, args = item
            if what == "network":
                self.network_checked.emit(self._network())
            else:
                self._download(*args)

    @staticmethod
    def _network() -> bool:
        try:
            from ipa_studio.core.models.download import network_available

            return bool(network_available(timeout=2.0))
        except Exception:
            return False

    def _download(self, kind: str, entry: Any, dest: Path) -> None:
        if self._cancelled(kind):
            self.cancelled.emit(kind)
            return
        last = [0.0]

        def on_progress(done: int, total: int) -> None:
            # At most ~20 updates a second: a fast connection calls this for every MiB.
            now = time.monotonic()
            if now - last[0] >= 0.05 or done >= total:
                last[0] = now
                self.progress.emit(kind, float(done), float(total))

        try:
            from ipa_studio.core.models.download import download_entry

            path = download_entry(
                entry, dest, on_progress=on_progress, should_cancel=lambda: self._cancelled(kind)
            )
        except Cancelled:
            self.cancelled.emit(kind)
            return
        except Exception as exc:
            self.failed.emit(kind, describe_error(exc, f"downloading {entry.name}"))
            return
        self.finished_download.emit(kind, str(path))


# --------------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------------


class ModelRow(QFrame):
    def __init__(self, kind: str, entry: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind = kind
        self.entry = entry
        self.setObjectName("modelRow")
        title, description = KIND_TEXT[kind]
        grid = QGridLayout(self)
        grid.setContentsMargins(14, 12, 14, 12)
        grid.setHorizontalSpacing(12)
        grid.setVerticalSpacing(4)

        self.status_icon = QLabel()
        self.status_icon.setObjectName("statusIcon")
        self.status_icon.setFixedWidth(28)
        heading = QLabel(title)
        heading.setObjectName("sectionTitle")
        self.status = QLabel()
        self.status.setObjectName("modelStatus")
        self.status.setWordWrap(True)
        about = QLabel(description)
        about.setObjectName("hint")
        about.setWordWrap(True)
        self.path = QLabel()
        self.path.setObjectName("pathLabel")
        self.path.setWordWrap(True)
        self.path.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

        self.choose = QPushButton("Choose…")
        what = "folder" if kind != "adapter" else "file"
        self.choose.setToolTip(f"Point at a {what} you already have on this computer")
        label = "Download"
        if entry is not None:
            approx = "about " if getattr(entry, "size_approximate", True) else ""
            label = f"Download ({_size(entry.size_bytes)})"
            size = f"{approx}{_size(entry.size_bytes)}"
            tip = f"Download {entry.name} from {entry.repo_id} ({size}): {entry.description}"
        else:
            tip = "No download is known for this model"
        self.download = QPushButton(label)
        self.download.setToolTip(tip)
        self.download.setEnabled(entry is not None)
        self.cancel = QPushButton("Cancel")
        self.cancel.setToolTip(
            "Stop the download; what was downloaded is kept and the next download continues"
        )
        self.cancel.hide()
        self.bar = QProgressBar()
        self.bar.setFixedHeight(14)
        self.bar.setFormat("%p%")
        self.bar.hide()
        self.bar_text = QLabel()
        self.bar_text.setObjectName("hint")
        self.bar_text.hide()

        grid.addWidget(self.status_icon, 0, 0, 2, 1)
        grid.addWidget(heading, 0, 1)
        grid.addWidget(self.status, 0, 2)
        buttons = QHBoxLayout()
        buttons.addWidget(self.choose)
        buttons.addWidget(self.download)
        buttons.addWidget(self.cancel)
        grid.addLayout(buttons, 0, 3)
        grid.addWidget(about, 1, 1, 1, 3)
        grid.addWidget(self.path, 2, 1, 1, 3)
        grid.addWidget(self.bar, 3, 1, 1, 2)
        grid.addWidget(self.bar_text, 3, 3)
        grid.setColumnStretch(2, 1)

    def show_check(self, path: str, ok: bool, text: str) -> None:
        self.status_icon.setText("✔" if ok else "✖")
        self.status_icon.setProperty("ok", ok)
        self.status_icon.style().unpolish(self.status_icon)
        self.status_icon.style().polish(self.status_icon)
        self.status.setText(text)
        self.path.setText(path or "No file chosen.")
        self.path.setToolTip(path)

    def show_progress(self, done: float, total: float) -> None:
        self.bar.show()
        self.bar_text.show()
        self.cancel.show()
        self.download.setEnabled(False)
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(1000 * done / total) if total > 0 else 0)
        self.bar_text.setText(f"{_size(done)} of {_size(total)}")

    def show_idle(self, note: str = "") -> None:
        self.cancel.hide()
        self.bar.setVisible(bool(note) and self.bar.value() > 0)
        self.bar_text.setVisible(bool(note))
        self.bar_text.setText(note)


class SetupPanel(QScrollArea):
    """The Models tab. Model paths go into the view state; folder changes are signalled."""

    outputs_changed = Signal(str)
    models_dir_changed = Signal(str)
    checked = Signal()  # the rows were checked again: what is missing may have changed

    def __init__(
        self,
        state: ViewState,
        models_dir: Path,
        outputs_dir: Path,
        entries: dict[str, Any] | None = None,
        parent: QWidget | None = None,
        library: LibraryWorker | None = None,
    ) -> None:
        super().__init__(parent)
        self.state = state
        self.models_dir = models_dir
        self.outputs_dir = outputs_dir
        self.entries = default_entries() if entries is None else entries
        self.snapshot: LibrarySnapshot | None = None
        if library is not None:
            library.scanned.connect(self.set_library)
            self.snapshot = library.latest
        self.online: bool | None = None
        self.downloads = DownloadWorker(self)
        self.downloads.network_checked.connect(self._on_network)
        self.downloads.progress.connect(self._on_progress)
        self.downloads.finished_download.connect(self._on_downloaded)
        self.downloads.failed.connect(self._on_failed)
        self.downloads.cancelled.connect(self._on_cancelled)
        self._downloading: set[str] = set()

        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        page = QWidget()
        page.setObjectName("setupPage")
        self.setWidget(page)
        outer = QVBoxLayout(page)
        outer.setContentsMargins(32, 24, 32, 24)
        outer.setSpacing(12)

        heading = QLabel("Models")
        heading.setObjectName("pageTitle")
        outer.addWidget(heading)
        intro = QLabel(
            "IPA Studio needs three model files. They stay on this computer; nothing is sent anywhere."
        )
        intro.setObjectName("hint")
        outer.addWidget(intro)
        self.summary = QLabel()
        self.summary.setObjectName("summary")
        self.summary.setWordWrap(True)
        outer.addWidget(self.summary)

        self.rows: dict[str, ModelRow] = {}
        for kind in KINDS:
            row = ModelRow(kind, self.entries.get(kind))
            if kind == "base":
                # A base model is a folder or one file; a dialog picks one or the other, so ask first.
                menu = QMenu(row.choose)
                menu.addAction("A diffusers folder…", lambda: self.choose("base"))
                menu.addAction("A single checkpoint file (.safetensors)…", lambda: self.choose("base", True))
                row.choose.setMenu(menu)
            else:
                row.choose.clicked.connect(lambda _=False, k=kind: self.choose(k))
            row.download.clicked.connect(lambda _=False, k=kind: self.start_download(k))
            row.cancel.clicked.connect(lambda _=False, k=kind: self.downloads.cancel(k))
            self.rows[kind] = row
            outer.addWidget(row)

        net_row = QHBoxLayout()
        self.network = QLabel("Checking the internet connection…")
        self.network.setObjectName("networkStatus")
        self.network.setWordWrap(True)
        self.check_again = QPushButton("Check again")
        self.check_again.setToolTip("Check the internet connection again")
        self.check_again.clicked.connect(self.check_network)
        self.download_all = QPushButton("Download all missing")
        self.download_all.setObjectName("accentButton")
        self.download_all.setToolTip("Download every missing model, one after the other")
        self.download_all.clicked.connect(self.download_missing)
        net_row.addWidget(self.network, 1)
        net_row.addWidget(self.check_again)
        net_row.addWidget(self.download_all)
        outer.addLayout(net_row)

        folders = QLabel("Folders")
        folders.setObjectName("pageTitle")
        outer.addSpacing(12)
        outer.addWidget(folders)
        self.models_dir_label = self._folder_row(
            outer,
            "Downloads go to",
            "Where downloaded models are stored",
            self._choose_models_dir,
        )
        self.outputs_label = self._folder_row(
            outer,
            "Pictures are saved in",
            "Where every generated picture is saved, with its settings inside the PNG",
            self._choose_outputs_dir,
        )
        outer.addStretch(1)

        self._autodetect()
        self.refresh()

    def _folder_row(self, outer: QVBoxLayout, label: str, tip: str, choose: Any) -> QLabel:
        row = QHBoxLayout()
        name = QLabel(label)
        name.setObjectName("fieldLabel")
        name.setMinimumWidth(160)
        path = QLabel()
        path.setObjectName("pathLabel")
        path.setToolTip(tip)
        path.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        change = QPushButton("Change…")
        change.setToolTip(tip)
        change.clicked.connect(choose)
        open_ = QPushButton("Open")
        open_.setToolTip("Show this folder in the file manager")
        open_.clicked.connect(lambda: self._open(path.text()))
        row.addWidget(name)
        row.addWidget(path, 1)
        row.addWidget(change)
        row.addWidget(open_)
        outer.addLayout(row)
        return path

    # ------------------------------------------------------------------ state
    def paths(self) -> dict[str, str]:
        m = self.state.models
        return {"base": m.base, "adapter": m.adapter, "image_encoder": m.image_encoder}

    def check(self, kind: str) -> Check:
        path = self.paths()[kind]
        found = self.snapshot.find(path) if self.snapshot is not None and path else None
        return check_model(kind, path, found)

    def missing(self) -> list[str]:
        return [k for k in KINDS if not self.check(k).ok]

    def set_path(self, kind: str, path: str) -> None:
        self.state.set_models(replace(self.state.models, **{kind: path}))  # the window listens
        self.refresh()

    def set_library(self, snapshot: LibrarySnapshot) -> None:
        """The library's latest scan: its detections replace the quick checks of the rows."""
        self.snapshot = snapshot
        self.refresh()

    def refresh(self) -> None:
        for kind, path in self.paths().items():
            check = self.check(kind)
            self.rows[kind].show_check(path, check.ok, check.text)
        missing = self.missing()
        if not missing:
            self.summary.setText("All three models are ready. Go to the Create tab to make pictures.")
        else:
            names = [_IN_SENTENCE[k] for k in missing]
            listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
            self.summary.setText(
                f"Missing: {listed}. Choose files you already have, or download them. Until then "
                "the rest of the app works, but it cannot make pictures yet."
            )
        self.models_dir_label.setText(str(self.models_dir))
        self.outputs_label.setText(str(self.outputs_dir))
        self._update_download_all()
        self.checked.emit()

    def _update_download_all(self) -> None:
        todo = [k for k in self.missing() if k in self.entries and k not in self._downloading]
        self.download_all.setEnabled(bool(todo) and self.online is not False)
        for kind, row in self.rows.items():
            if kind not in self._downloading:
                row.download.setEnabled(row.entry is not None and self.online is not False)

    def _autodetect(self) -> None:
        """Fill in models downloaded earlier into the models folder, if no path was chosen."""
        for kind, entry in self.entries.items():
            if self.paths()[kind]:
                continue
            local = entry.local_path(self.models_dir)
            if check_model(kind, str(local)).ok:
                self.state.set_models(replace(self.state.models, **{kind: str(local)}))

    # ------------------------------------------------------------------ choosing
    def choose(self, kind: str, single_file: bool = False) -> None:
        title = f"Choose the {KIND_TEXT[kind][0].lower()}"
        what = KIND_TEXT[kind][0].lower()
        current = self.paths()[kind]
        start = Path(current).parent if current else self.models_dir
        if kind == "adapter":
            path = dialogs.open_file(
                self, what, title, "IP-Adapter (*.safetensors *.bin *.pth);;All files (*)", start
            )
        elif kind == "base" and single_file:
            path = dialogs.open_file(
                self, what + " file", title, "SD1.5 checkpoint (*.safetensors *.ckpt);;All files (*)", start
            )
        else:
            path = dialogs.open_folder(self, what, title, start)
        if path:
            self.set_path(kind, path)

    def _choose_models_dir(self) -> None:
        path = dialogs.open_folder(
            self, "models folder", "Where should downloaded models go?", current=self.models_dir
        )
        if path:
            self.models_dir = Path(path)
            self.models_dir_changed.emit(path)
            self.refresh()

    def _choose_outputs_dir(self) -> None:
        path = dialogs.open_folder(
            self, "outputs folder", "Where should pictures be saved?", current=self.outputs_dir
        )
        if path:
            self.set_outputs_dir(Path(path))

    def set_outputs_dir(self, path: Path) -> None:
        self.outputs_dir = path
        self.outputs_changed.emit(str(path))
        self.refresh()

    @staticmethod
    def _open(path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    # ------------------------------------------------------------------ network and downloads
    def check_network(self) -> None:
        self.network.setText("Checking the internet connection…")
        self.downloads.check_network()

    def _on_network(self, online: bool) -> None:
        self.online = online
        if online:
            self.network.setText("Connected: missing models can be downloaded from the Hugging Face hub.")
        else:
            self.network.setText(
                "No internet connection (or offline mode is on), so models cannot be downloaded now. "
                "If you already have the files, use Choose… to point at them; otherwise connect to the "
                "internet and press Check again."
            )
        self._update_download_all()

    def start_download(self, kind: str) -> None:
        entry = self.entries.get(kind)
        if entry is None or kind in self._downloading:
            return
        if self.online is False:
            self.rows[kind].show_idle("No internet connection: downloads are not possible right now.")
            return
        self._downloading.add(kind)
        self.rows[kind].show_progress(0, max(entry.size_bytes, 1))
        self.rows[kind].bar_text.setText("Starting…")
        self.downloads.download(kind, entry, self.models_dir)
        self._update_download_all()

    def download_missing(self) -> None:
        for kind in self.missing():
            self.start_download(kind)

    def _on_progress(self, kind: str, done: float, total: float) -> None:
        if kind in self._downloading:
            self.rows[kind].show_progress(done, total)

    def _on_downloaded(self, kind: str, path: str) -> None:
        self._downloading.discard(kind)
        self.rows[kind].show_idle("Downloaded.")
        self.set_path(kind, path)

    def _on_failed(self, kind: str, message: str) -> None:
        self._downloading.discard(kind)
        self.rows[kind].show_idle(message)
        self.rows[kind].bar_text.setWordWrap(True)
        self._update_download_all()

    def _on_cancelled(self, kind: str) -> None:
        self._downloading.discard(kind)
        self.rows[kind].show_idle("Download paused. Press Download to continue where it stopped.")
        self._update_download_all()

    def shutdown(self) -> None:
        self.downloads.stop()
