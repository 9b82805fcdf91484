"""The studio window: panels on the left, the picture in the middle, history underneath.

The window owns the view state, the engine worker and the panels, and is the only place where
worker signals meet widgets. Nothing slow runs here: the worker thread generates and saves, the
loader thread decodes pictures, the download thread talks to the network.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QByteArray, QFile, QPoint, QRect, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QCloseEvent,
    QDesktopServices,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
    QKeySequence,
    QResizeEvent,
    QShortcut,
    QShowEvent,
)
from PySide6.QtWidgets import (
    QLabel,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.errors import IPAStudioError, RequestError
from ipa_studio.core.foreign_metadata import read_foreign_settings
from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.metadata import JSON_KEY, request_from_metadata
from ipa_studio.core.presets import BlockPreset, layer_weights
from ipa_studio.core.request import GenerationRequest, ModelSpec
from ipa_studio.core.settings import Settings, save_settings
from ipa_studio.gui import dialogs
from ipa_studio.gui.canvas.editor import CanvasEditor
from ipa_studio.gui.canvas.regions import RegionEditor
from ipa_studio.gui.foreign_settings import apply_foreign_settings
from ipa_studio.gui.library import LibraryWorker, library_root
from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.model_check import check_model
from ipa_studio.gui.panels.balance import BalancePanel
from ipa_studio.gui.panels.control import ControlPanel
from ipa_studio.gui.panels.evaluate import EvaluatePanel
from ipa_studio.gui.panels.gallery import GalleryPanel
from ipa_studio.gui.panels.generate import GeneratePanel
from ipa_studio.gui.panels.init_image import InitImagePanel
from ipa_studio.gui.panels.models import ModelPicker
from ipa_studio.gui.panels.prompt import PromptPanel
from ipa_studio.gui.panels.references import ReferencesPanel
from ipa_studio.gui.panels.settings import SettingsPanel
from ipa_studio.gui.panels.setup import SetupPanel
from ipa_studio.gui.panels.sweep import SweepPage, parse_lambdas
from ipa_studio.gui.panels.train import TrainPanel
from ipa_studio.gui.state import ViewState
from ipa_studio.gui.sweep_job import CellView, SweepOutcome
from ipa_studio.gui.widgets.banner import Banner
from ipa_studio.gui.widgets.column import ColumnScrollArea
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.flow import FlowLayout
from ipa_studio.gui.widgets.focus import set_reading_tab_order
from ipa_studio.gui.widgets.image_view import ImageView
from ipa_studio.gui.worker import EngineFactory, GenerationWorker, SavedImage, default_engine_factory

log = logging.getLogger("ipa_studio.gui")

CREATE_TAB, MODELS_TAB, TRAIN_TAB = 0, 1, 2
DEFAULT_SIZE = (1400, 900)
BANNER_MAX_WIDTH = 760
EMPTY_TEXT = "Your pictures appear here.\n\nAdd a reference image on the left, then press Generate."
READY_TEXT = "Your pictures appear here.\n\nPress Generate (Ctrl+Enter) to make one."


def _memory_text() -> str:
    """Resident memory of this process: on CPU and Apple MPS (shared memory) that is the model's
    footprint. GPU memory is in the device label."""
    try:
        import psutil  # optional: installed with most scientific stacks

        rss = psutil.Process().memory_info().rss
    except Exception:
        try:
            import os

            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except Exception:
            return ""
    return f"Memory {rss / 2**30:.1f} GB"


class MainWindow(QMainWindow):
    """``settings_path=None`` keeps settings in memory only (self-test, screenshots)."""

    models_ready = Signal(str)  # "" or the message of a failed preload
    generation_ended = Signal(str)  # "finished" | "failed" | "cancelled", for tests and the self-test
    sweep_ended = Signal(str)  # the same for a λ sweep
    scorer_ready = Signal(str)  # "" or why the sweep's CLIP model could not be loaded

    def __init__(
        self,
        settings: Settings,
        settings_path: Path | None = None,
        engine_factory: EngineFactory | None = None,
        *,
        check_network: bool = True,
    ) -> None:
        super().__init__()
        self.setWindowTitle("IPA Studio")
        self.settings = settings
        self.settings_path = settings_path
        self.state = ViewState(settings.last, settings.models)
        self.library = LibraryWorker(library_root(settings.models_path), self)  # starts with its first scan
        self.loader = ImageLoader(self)
        self._custom_engine = engine_factory is not None
        self.worker = GenerationWorker(
            engine_factory
            or default_engine_factory(settings.device, settings.precision, settings.library_path)
        )
        self._jobs: dict[int, GenerationRequest] = {}
        self._running: int | None = None
        self._live = False  # the large view follows the running job's preview
        self._full_images: dict[str, QImage] = {}  # recent results, so viewing them does not re-read disk
        self._closed = False
        self._models_loading = False
        self._refusal = ""  # the last "cannot generate yet" message, taken down once it is fixed
        self._before_job: Path | None = None  # the picture shown before a job's live preview
        # User block presets live beside the settings file (the command line's default place);
        # without a settings file (self-test, screenshots) in a folder of this window's own.
        if settings_path is not None:
            self.presets_path = Path(settings_path).with_name("block_presets.json")
        else:
            import tempfile

            self._presets_dir = tempfile.TemporaryDirectory(prefix="ipa-studio-presets-")
            self.presets_path = Path(self._presets_dir.name) / "block_presets.json"
        self._shown_once = False
        dialogs.bind(settings.dialog_folders)

        self._build()
        self._connect()
        # A picture dropped anywhere no panel takes it (the large view included) opens its settings.
        self.setAcceptDrops(True)
        self.view.setAcceptDrops(False)
        self.view.viewport().setAcceptDrops(False)
        self._show_placeholder()
        self._restore_layout()
        self.worker.start()
        self._preload()
        if self.settings.clip_model and Path(self.settings.clip_model).is_dir():
            self.worker.preload_scorer(Path(self.settings.clip_model))
        self.gallery.load_history(self.outputs_dir)
        notes = []
        if self.state.repairs:
            notes.append(self.state.repairs_text())
        if self.setup.missing():
            self.tabs.setCurrentIndex(MODELS_TAB)
            notes.append("Some models are missing: the Models tab shows which, and how to get them.")
        if notes:
            self.show_note(" ".join(notes))
        if check_network:
            self.setup.check_network()
        self._memory_timer = QTimer(self)
        self._memory_timer.timeout.connect(self._update_memory)
        self._memory_timer.start(2000)
        self._update_memory()

    # ------------------------------------------------------------------ building
    @property
    def outputs_dir(self) -> Path:
        return self.settings.outputs_path

    def _build(self) -> None:
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        central = QWidget()
        central_layout = QVBoxLayout(central)
        central_layout.setContentsMargins(0, 0, 0, 0)
        central_layout.setSpacing(0)
        central_layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        # Messages float over the picture area (see Banner): showing one moves nothing.
        self.banner = Banner(central)

        # --- Create tab: controls | picture over history
        from ipa_studio.core.references import ReferenceStore

        self.references = ReferencesPanel(
            self.state,
            self.loader,
            lambda: self.outputs_dir / "references",
            library=ReferenceStore(self.settings.library_path),
        )
        self.prompt = PromptPanel(self.state)
        self.balance = BalancePanel(self.state, self.presets_path)
        self.settings_panel = SettingsPanel(self.state, self.settings.precision)
        self.settings_panel.precision_chosen.connect(self._set_precision)
        self.init_panel = InitImagePanel(self.state, lambda: self.outputs_dir / "references")
        self.control = ControlPanel(
            self.state,
            maps_dir=lambda: self.outputs_dir / "controls",
            models_dir=lambda: self.settings.models_path,
            weights_dir=lambda: self.settings.models_path / "annotators",
            device=self.settings.device,
        )
        if self.settings.annotators_dir:
            self.control.set_weights_dir(self.settings.annotators_dir)
        column = QWidget()
        column.setObjectName("controlColumn")
        col = QVBoxLayout(column)
        col.setContentsMargins(10, 10, 10, 10)
        col.setSpacing(10)
        self.picker = ModelPicker(self.state, self.library)
        col.addWidget(self.picker)
        for panel in (self.references, self.prompt, self.balance, self.control, self.settings_panel):
            col.addWidget(panel)
        col.insertWidget(col.indexOf(self.references), self.init_panel)  # the mode comes first
        col.addStretch(1)
        self.column_scroll = scroll = ColumnScrollArea(column)
        self.generate_panel = GeneratePanel()
        left = QWidget()
        left.setObjectName("leftPane")
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(0)
        left_layout.addWidget(scroll, 1)
        left_layout.addWidget(self.generate_panel)

        self.view = ImageView(EMPTY_TEXT)
        self.caption = ElidedLabel()
        self.caption.setObjectName("caption")
        toolbar = self._view_toolbar()
        self.gallery = GalleryPanel(self.loader)
        history_title = QLabel("History")
        history_title.setObjectName("sectionTitle")

        right = QWidget()
        right.setObjectName("rightPane")
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(10, 10, 10, 10)
        right_layout.setSpacing(8)
        # Result and Canvas share the large area; the history stays visible under both.
        self.result_page = QWidget()
        result_layout = QVBoxLayout(self.result_page)
        result_layout.setContentsMargins(0, 6, 0, 0)
        result_layout.setSpacing(8)
        result_layout.addLayout(toolbar)
        result_layout.addWidget(self.view, 1)
        result_layout.addWidget(self.caption)
        self.canvas = CanvasEditor(self.state, self.loader, lambda: self.outputs_dir / "references")
        self.view_tabs = QTabWidget()
        self.view_tabs.setDocumentMode(True)
        self.view_tabs.addTab(self.result_page, "Result")
        self.view_tabs.addTab(self.canvas, "Canvas")
        self.view_tabs.setTabToolTip(1, "The start picture for img2img and inpainting, and its mask")
        self.regions = RegionEditor(self.state, self.loader, lambda: self.outputs_dir / "references")
        self.view_tabs.addTab(self.regions, "Regions")
        self.view_tabs.setTabToolTip(2, "Where in the picture each reference image acts")
        self.sweep_page = SweepPage(
            lambda: self.balance.presets, self._this_block_map, self.settings.clip_model
        )
        self.view_tabs.addTab(self.sweep_page, "λ sweep")
        self.view_tabs.setTabToolTip(
            3, "Which λ is best: the same seed at several λ, each picture scored with CLIP-I and CLIP-T"
        )
        self._sweep_job: int | None = None
        self._sweep_rows: dict[str, BlockPreset] = {}
        right_layout.addWidget(self.view_tabs, 1)
        right_layout.addWidget(history_title)
        right_layout.addWidget(self.gallery)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(0, 0)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([440, 960])
        self.splitter.setChildrenCollapsible(False)
        self.tabs.addTab(self.splitter, "Create")

        # --- Models tab
        self.setup = SetupPanel(self.state, self.settings.models_path, self.outputs_dir, library=self.library)
        self.tabs.addTab(self.setup, "Models")
        self._show_models_tab_state()

        # --- Train tab: the run is a separate process, the window only reads its events
        self.train = TrainPanel(
            self.library,
            self.loader,
            lambda: self.outputs_dir / "training",
            device=self.settings.device,
            models=self.state.models,
        )
        self.tabs.addTab(self.train, "Train")
        self.tabs.setTabToolTip(TRAIN_TAB, "Train your own IP-Adapter on a folder of captioned pictures")
        # --- Evaluate tab: CLIP-I / CLIP-T of checkpoints, in a process of its own
        self.evaluate_panel = EvaluatePanel(
            self.library,
            self.settings.models,
            lambda: self.outputs_dir,
            lambda: self.settings.models_path,
            self.settings.device,
        )
        self.tabs.addTab(self.evaluate_panel, "Evaluate")
        self.tabs.setTabToolTip(
            self.tabs.indexOf(self.evaluate_panel), "Score an adapter or each checkpoint of a training run"
        )

        # --- status bar
        self.device_label = QLabel("Starting the engine…")
        self.device_label.setToolTip(
            "Where pictures are computed: an NVIDIA GPU (CUDA), Apple MPS or the CPU"
        )
        self.memory_label = QLabel()
        self.memory_label.setToolTip("Memory used by IPA Studio")
        self.outputs_button = QPushButton()
        self.outputs_button.setFlat(True)
        self.outputs_button.setObjectName("statusLink")
        self.outputs_button.setToolTip("Open the folder where pictures are saved")
        self.outputs_button.clicked.connect(self.open_outputs_folder)
        self.statusBar().addWidget(self.device_label)
        self.statusBar().addWidget(self.memory_label)
        self.statusBar().addPermanentWidget(self.outputs_button)
        self._show_outputs_dir()

    def _view_toolbar(self) -> FlowLayout:
        bar = FlowLayout()  # wraps in a narrow window instead of widening it

        def tool(text: str, tip: str, slot: object) -> QToolButton:
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            bar.addWidget(button)
            return button

        tool("Fit", "Show the whole picture (double-click the picture to switch)", lambda: self.view.fit())
        tool("1:1", "Show the picture at its real size", lambda: self.view.actual_size())
        tool("−", "Zoom out (mouse wheel)", lambda: self.view.zoom_by(0.8))
        tool("+", "Zoom in (mouse wheel)", lambda: self.view.zoom_by(1.25))
        bar.addSpacing(16)
        self.reuse_button = tool(
            "Reuse settings",
            "Put this picture's prompt, references and settings (seed included) back into the panels",
            lambda: self.reuse_settings(self.gallery.current_path()),
        )
        self.as_reference_button = tool(
            "Use as reference",
            "Add this picture to the reference images",
            lambda: self.use_as_reference(self.gallery.current_path()),
        )
        self.to_canvas_button = tool(
            "Send to canvas",
            "Start img2img or inpainting from this picture: it becomes the Canvas picture",
            lambda: self.send_to_canvas(self.gallery.current_path()),
        )
        self.copy_button = tool(
            "Copy", "Copy this picture to the clipboard", lambda: self.copy_image(self.gallery.current_path())
        )
        tool("Open folder", "Open the folder where pictures are saved", self.open_outputs_folder)
        self._image_actions = (
            self.reuse_button,
            self.as_reference_button,
            self.to_canvas_button,
            self.copy_button,
        )
        for b in self._image_actions:
            b.setEnabled(False)
        return bar

    def _connect(self) -> None:
        gp = self.generate_panel
        gp.generate.clicked.connect(self.generate)
        gp.cancel.clicked.connect(self.cancel)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.generate)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.cancel)
        # Ctrl+V in a text box pastes text (the box takes the key first); anywhere else, a reference.
        QShortcut(QKeySequence.StandardKey.Paste, self, self.references.paste)

        queued = Qt.ConnectionType.QueuedConnection
        w = self.worker
        w.engine_ready.connect(self._on_engine_ready, queued)
        w.job_started.connect(self._on_started, queued)
        w.job_progress.connect(self._on_progress, queued)
        w.job_finished.connect(self._on_finished, queued)
        w.job_failed.connect(self._on_failed, queued)
        w.job_cancelled.connect(self._on_cancelled, queued)
        w.models_loaded.connect(self._on_models_loaded, queued)

        self.references.message.connect(self.show_error)
        self.references.paint_region.connect(self.show_regions)
        self.regions.message.connect(lambda text, kind: self.banner.show_message(text, kind))
        self.balance.message.connect(self.show_error)
        sp = self.sweep_page
        sp.run_requested.connect(self.run_sweep)
        sp.cancel_requested.connect(self.cancel_sweep)
        sp.use_requested.connect(self.use_sweep_cell)
        sp.message.connect(self.show_error)
        sp.clip_model_changed.connect(self._on_clip_model_changed)
        w.sweep_started.connect(lambda _id: None, queued)
        w.sweep_progress.connect(self._on_sweep_progress, queued)
        w.sweep_cell.connect(self._on_sweep_cell, queued)
        w.sweep_finished.connect(self._on_sweep_finished, queued)
        w.sweep_failed.connect(self._on_sweep_failed, queued)
        w.sweep_cancelled.connect(self._on_sweep_cancelled, queued)
        w.scorer_loaded.connect(self._on_scorer_loaded, queued)
        self.init_panel.message.connect(self.show_error)
        self.init_panel.show_canvas.connect(self.show_canvas)
        self.canvas.message.connect(lambda text, kind: self.banner.show_message(text, kind))
        self.gallery.itemClicked.connect(lambda _item: self.view_tabs.setCurrentWidget(self.result_page))
        self.control.message.connect(self.show_error)
        self.control.show_image.connect(self._show_control_map)
        self.evaluate_panel.use_in_create.connect(self.use_adapter)
        self.gallery.current_changed.connect(self._on_gallery_selection)
        self.gallery.reuse_requested.connect(self.reuse_settings)
        self.gallery.reference_requested.connect(self.use_as_reference)
        self.gallery.copy_requested.connect(self.copy_image)
        self.gallery.delete_requested.connect(self.delete_picture)
        self.gallery.open_folder_requested.connect(self.open_outputs_folder)
        self.gallery.itemDoubleClicked.connect(lambda _item: self.view.actual_size())

        self.banner.placement_changed.connect(self._place_banner)
        self.tabs.currentChanged.connect(lambda _i: self._place_banner())
        self.view_tabs.currentChanged.connect(self._on_view_tab)
        self.splitter.splitterMoved.connect(lambda _pos, _i: self._place_banner())

        self.state.changed.connect(self._on_state_changed)
        self.state.control_changed.connect(lambda _uid: self._take_down_fixed_refusal())
        self.setup.outputs_changed.connect(self._on_outputs_changed)
        self.setup.models_dir_changed.connect(self._on_models_dir_changed)
        self.setup.checked.connect(self._show_models_tab_state)
        self.picker.message.connect(lambda text, kind: self.banner.show_message(text, kind))
        self._order_tabs()

    def _order_tabs(self) -> None:
        """Tab follows the panels top to bottom (cards added later included)."""
        set_reading_tab_order(self)

    def _on_view_tab(self, _index: int) -> None:
        page = self.view_tabs.currentWidget()
        if page in (self.canvas, self.regions):
            # Its keys ([ ] brush size, X, Ctrl+Z) work at once, without a click that would paint.
            page.canvas.setFocus(Qt.FocusReason.OtherFocusReason)
        self._place_banner()

    def show_regions(self, uid: int | None = None) -> None:
        """The Regions page, painting the region of reference ``uid``."""
        if uid is not None:
            self.regions.select(uid)
        self.tabs.setCurrentIndex(CREATE_TAB)
        self.view_tabs.setCurrentWidget(self.regions)
        self.regions.canvas.setFocus(Qt.FocusReason.OtherFocusReason)

    # ------------------------------------------------------------------ models
    def _show_models_tab_state(self) -> None:
        missing = len(self.setup.missing())
        self.tabs.setTabText(MODELS_TAB, f"Models ⚠ {missing} missing" if missing else "Models")
        self.tabs.setTabToolTip(MODELS_TAB, "Which model files IPA Studio uses, and where pictures are saved")

    def _preload(self) -> None:
        """Have the worker load the chosen models now rather than at the start of the first job."""
        m = self.state.models
        if not check_model("base", m.base).ok:
            return
        with_adapter = (
            check_model("adapter", m.adapter).ok and check_model("image_encoder", m.image_encoder).ok
        )
        spec = ModelSpec(m.base, m.adapter, m.image_encoder) if with_adapter else ModelSpec(m.base)
        self._models_loading = True
        self.picker.set_loading(True)
        self.worker.preload(spec)

    def _on_models_loaded(self, error: str) -> None:
        self._models_loading = False
        self.picker.set_loading(False, error)
        if error:
            self.show_error(error)
        else:
            self._take_down_fixed_refusal()
        self.models_ready.emit(error)

    @property
    def models_loading(self) -> bool:
        return self._models_loading

    def _on_state_changed(self, name: str) -> None:
        if name == "models":
            self.setup.refresh()
            self._show_models_tab_state()
            self.save_settings()
            self._preload()
            self.train.set_default_models(self.state.models)
        if name in ("references", "controls", "mode"):
            self._order_tabs()  # the panels have rebuilt their cards by now (connected first)
        if name in ("references", "prompt"):
            self._show_placeholder()
        if name == "blocks":
            self.sweep_page.refresh_rows()
        self._take_down_fixed_refusal()

    def _take_down_fixed_refusal(self) -> None:
        """A "cannot generate yet" message goes away once its cause is gone (the models became
        ready, a reference was added …): a red strip that no longer applies misleads."""
        if not self._refusal or self.banner.text() != self._refusal:
            self._refusal = ""
            return
        try:
            self.state.build_request()
        except IPAStudioError as exc:
            if str(exc) == self._refusal:
                return
        self._refusal = ""
        self.banner.hide()

    def _show_placeholder(self) -> None:
        ready = bool(self.state.references or self.state.prompt.strip())
        self.view.set_placeholder(READY_TEXT if ready else EMPTY_TEXT)

    # ------------------------------------------------------------------ generating
    def generate(self) -> int | None:
        """Queue one job from the panels; returns its id, or None when the panels are incomplete."""
        if self._closed:
            return None
        try:
            if self.state.mode == "inpaint":
                self.canvas.commit_mask()  # the painted mask becomes the file the request names
            request = self.state.next_request()
        except IPAStudioError as exc:
            self.show_error(str(exc))
            self._refusal = str(exc)
            missing = set(self.setup.missing())
            if "base" in missing or (self.state.references and missing & {"adapter", "image_encoder"}):
                self.tabs.setCurrentIndex(MODELS_TAB)  # the message points there; take people there
            return None
        self.banner.hide()
        job_id = self.worker.submit(request, self.outputs_dir)
        self.view_tabs.setCurrentWidget(self.result_page)  # where the live preview shows
        self._jobs[job_id] = request
        self.generate_panel.cancel.setEnabled(True)
        if self._running is None:
            self.generate_panel.show_starting(len(self._jobs) - 1)
        self.save_settings()
        return job_id

    def cancel(self) -> None:
        if self._jobs:
            self.worker.cancel()
            self.generate_panel.status.setText("Cancelling…")
        self.cancel_sweep()

    # ------------------------------------------------------------------ the λ sweep
    def _this_block_map(self) -> BlockPreset:
        s = self.state
        return BlockPreset(s.block_preset or "Custom", dict(s.block_weights or {"default": 1.0}))

    def run_sweep(self) -> int | None:
        """Queue a λ sweep of the current settings (the seed shown); None when it cannot start."""
        if self._closed or self._sweep_job is not None:
            return None
        page = self.sweep_page
        try:
            strengths = parse_lambdas(page.lambdas.text())
        except ValueError as exc:
            self.show_error(str(exc))
            return None
        rows = page.chosen_rows()
        if not rows:
            self.show_error("Tick at least one row (a block map) for the sweep.")
            return None
        if len(rows) * len(strengths) > 64:
            self.show_error(
                f"A sweep can have at most 64 pictures; {len(rows)} rows × {len(strengths)} λ values "
                "were asked. Untick a row or type fewer λ values."
            )
            return None
        clip = page.clip_model
        if not clip or not Path(clip).is_dir():
            self.show_error(
                "The sweep scores its pictures with a CLIP model: choose its folder first (Choose CLIP "
                "model…), for example openai/clip-vit-large-patch14, the model the paper used."
            )
            return None
        try:
            if self.state.mode == "inpaint":
                self.canvas.commit_mask()
            request = self.state.build_request()
            if not request.references:
                raise RequestError("A λ sweep compares pictures with the references: add a reference image.")
            if not request.prompt.strip():
                raise RequestError(
                    "A λ sweep weighs the references against the prompt: type a prompt first (with "
                    "an empty prompt λ 1 is always best)."
                )
        except IPAStudioError as exc:
            self.show_error(str(exc))
            return None
        self.banner.hide()
        # One row of the paper's adapter is a plain λ sweep, as the command line's default.
        plain = len(rows) == 1 and all(w == 1.0 for w in layer_weights(rows[0].weights))
        presets = [] if plain else rows
        self._sweep_rows = {p.name: p for p in presets}
        job = self.worker.submit_sweep(request, strengths, presets, Path(clip), self.outputs_dir)
        self._sweep_job = job
        page.start(len(strengths), [None] if plain else [p.name for p in presets])
        self.view_tabs.setCurrentWidget(page)
        return job

    def cancel_sweep(self) -> None:
        if self._sweep_job is not None:
            self.worker.cancel(self._sweep_job)
            self.sweep_page.status.setText("Cancelling the sweep…")

    def _on_sweep_progress(self, job_id: int, done: int, total: int) -> None:
        if job_id == self._sweep_job:
            self.sweep_page.show_progress(done, total)

    def _on_sweep_cell(self, job_id: int, cell: CellView) -> None:
        if job_id == self._sweep_job:
            self.sweep_page.add_cell(cell)

    def _on_sweep_finished(self, job_id: int, outcome: SweepOutcome) -> None:
        if job_id != self._sweep_job:
            return
        self._sweep_job = None
        self.sweep_page.finish(outcome)
        if outcome.notices:
            self.show_note(" ".join(outcome.notices))
        self.sweep_ended.emit("finished")

    def _on_sweep_failed(self, job_id: int, message: str) -> None:
        if job_id != self._sweep_job:
            return
        self._sweep_job = None
        self.sweep_page.failed(message)
        self.show_error(message)
        self.sweep_ended.emit("failed")

    def _on_sweep_cancelled(self, job_id: int) -> None:
        if job_id != self._sweep_job:
            return
        self._sweep_job = None
        self.sweep_page.cancelled()
        self.sweep_ended.emit("cancelled")

    def use_sweep_cell(self, cell: CellView) -> None:
        """Put a sweep picture's λ (and block map) and seed into the panels: the next Generate
        makes that picture again."""
        preset = self._sweep_rows.get(cell.preset) if cell.preset else None
        if preset is not None:
            if preset.name not in {p.name for p in self.balance.presets}:
                preset = BlockPreset("", preset.weights)  # the edited map the sweep ran with
            self.state.choose_block_preset(preset)
        elif cell.preset is None:
            self.state.apply_scale(1.0)  # a plain λ row: every layer at λ
        self.state.set("scale", cell.strength)
        if cell.request is not None:
            self.state.choose_seed(cell.request.seed)
        where = f" with {cell.preset}" if cell.preset else ""
        self.show_note(
            f"λ {cell.strength:g}{where} is set in the balance panel; the next Generate makes "
            "this picture again."
        )

    def _on_clip_model_changed(self, path: str) -> None:
        self.settings.clip_model = path
        self.save_settings()
        if Path(path).is_dir():
            self.worker.preload_scorer(Path(path))

    def _on_scorer_loaded(self, error: str) -> None:
        if error:
            self.sweep_page.status.setText(f"The CLIP model could not be loaded: {error}")
        self.scorer_ready.emit(error)

    def _on_started(self, job_id: int) -> None:
        self._running = job_id
        if not self._live:
            self._before_job = self.gallery.current_path()
        self._live = True
        self.gallery.blockSignals(True)
        self.gallery.clearSelection()
        self.gallery.setCurrentItem(None)
        self.gallery.blockSignals(False)
        self._set_image_actions(False)
        self.generate_panel.show_starting(len(self._jobs) - 1)

    def _on_progress(
        self, job_id: int, step: int, total: int, elapsed: float, left: float, preview: QImage
    ) -> None:
        if job_id != self._running:
            return
        self.generate_panel.show_step(step, total, elapsed, left, len(self._jobs) - 1)
        if self._live and not preview.isNull():
            request = self._jobs[job_id]
            self.view.set_image(preview, logical_size=(request.width, request.height))
            self.caption.setText(f"Live preview · step {step} of {total}")

    def _on_finished(self, job_id: int, saved: list[SavedImage]) -> None:
        self._job_over(job_id)
        for item in saved:
            self._full_images[str(item.path)] = item.image
        while len(self._full_images) > 16:
            self._full_images.pop(next(iter(self._full_images)))
        # Newest ends up first; select the first picture of the batch.
        for item in reversed(saved):
            self.gallery.add_saved(item, select=False)
        if saved:
            self._live = False
            self.gallery.setCurrentRow(0)
        seconds = saved[0].seconds if saved else 0.0
        n = len(saved)
        self._idle_text(f"Done in {seconds:.1f} s · {n} picture{'s' if n != 1 else ''} saved")
        if saved and saved[0].notices:
            self.show_note(" ".join(saved[0].notices))
        self.generation_ended.emit("finished")

    def _on_failed(self, job_id: int, message: str) -> None:
        self._job_over(job_id)
        self.show_error(message)
        self._back_from_live()
        self._idle_text("The last generation failed; see the message over the picture.")
        self.generation_ended.emit("failed")

    def _on_cancelled(self, job_id: int) -> None:
        self._job_over(job_id)
        self._back_from_live()
        self._idle_text("Cancelled. Nothing was saved.")
        self.generation_ended.emit("cancelled")

    def _back_from_live(self) -> None:
        """After a job that made nothing, show again the picture that was shown before it (with its
        Reuse / Send / Copy buttons), rather than a half-done preview or an empty view."""
        if not self._live or self._jobs:
            return  # someone chose another picture meanwhile, or the next job's preview follows
        self._live = False
        row = self.gallery.row_of(self._before_job) if self._before_job is not None else -1
        if row >= 0:
            self.gallery.setCurrentRow(row)
        else:
            self.view.set_image(None)
            self.caption.setText("")
            self._set_image_actions(False)

    def _job_over(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        if self._running == job_id:
            self._running = None

    def _idle_text(self, text: str) -> None:
        # The window counts jobs itself: what the worker knows arrives later, through signals.
        if self._jobs:
            self.generate_panel.show_starting(len(self._jobs) - 1)
        else:
            self.generate_panel.show_idle(text)

    # ------------------------------------------------------------------ results
    def _on_gallery_selection(self, path: Path | None) -> None:
        self._set_image_actions(path is not None)
        if path is None:
            return
        self._live = False
        image = self._full_images.get(str(path))
        if image is None:
            image = QImage(str(path))
        if image.isNull():
            self.show_error(
                f"The picture {path.name} could not be opened; it may have been moved or deleted."
            )
            return
        self.view.set_image(image)
        self.caption.setText(f"{path.name} · {image.width()} × {image.height()}")

    def _set_image_actions(self, on: bool) -> None:
        for b in self._image_actions:
            b.setEnabled(on)

    def reuse_settings(self, path: Path | None) -> bool:
        if path is None:
            return False
        try:
            request = request_from_metadata(read_png_metadata(path), missing="drop")
        except IPAStudioError as exc:
            self.show_error(f"The settings of {Path(path).name} could not be reused: {exc}")
            return False
        notes = self.state.apply_request(request)
        self.tabs.setCurrentIndex(CREATE_TAB)
        if notes:
            self.show_note(" ".join(notes))
        else:
            keep = "" if self.state.seed_locked else " (later ones get new seeds unless you tick Keep)"
            self.show_note(
                f"Settings of {Path(path).name} restored: the next Generate uses its seed and makes it "
                f"again{keep}."
            )
        return True

    def open_settings(self, path: str | Path) -> bool:
        """Put the settings stored in a PNG into the panels: IPA Studio's own (everything), or those
        AUTOMATIC1111, ComfyUI or InvokeAI wrote (prompt, negative, seed, steps, guidance, size,
        sampler, model)."""
        path = Path(path)
        try:
            meta = read_png_metadata(path)
        except IPAStudioError as exc:
            self.show_error(str(exc))
            return False
        if JSON_KEY in meta:
            return self.reuse_settings(path)
        found = read_foreign_settings(meta)
        if found is None:
            self.show_error(
                f"{path.name} holds no generation settings IPA Studio can read (it reads pictures made "
                "by IPA Studio, AUTOMATIC1111 and similar, ComfyUI and InvokeAI)."
            )
            return False
        entries = self.picker.snapshot.entries
        from ipa_studio.core.hashes import default_cache

        known = default_cache().known(str(e.path) for e in entries if e.kind == "base" and not e.sha256)
        notes = apply_foreign_settings(self.state, found, entries, known)
        self.tabs.setCurrentIndex(CREATE_TAB)
        self.show_note(
            " ".join([f"Settings of {path.name} ({found.source}) restored; the seed is kept.", *notes])
        )
        return True

    @staticmethod
    def _dropped_pngs(event: QDragEnterEvent | QDropEvent) -> list[Path]:
        mime = event.mimeData()
        if not mime.hasUrls():
            return []
        paths = [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]
        return [p for p in paths if p.suffix.lower() == ".png"]

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if self._dropped_pngs(event):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        paths = self._dropped_pngs(event)
        if paths:
            event.acceptProposedAction()
            self.open_settings(paths[0])

    def _show_control_map(self, image: QImage, caption: str) -> None:
        self._live = False  # a running job's next preview would otherwise replace the map at once
        self.view.set_image(image)
        self.caption.setText(caption)
        self.view_tabs.setCurrentWidget(self.result_page)  # the map shows there, not on the Canvas

    def send_to_canvas(self, path: Path | None) -> None:
        """Start img2img / inpainting from a result (a mask of the same size is kept, to refine)."""
        if path is not None:
            self.canvas.set_init(path)
            self.show_canvas()

    def show_canvas(self) -> None:
        self.tabs.setCurrentIndex(CREATE_TAB)
        self.view_tabs.setCurrentWidget(self.canvas)
        self.canvas.canvas.setFocus(Qt.FocusReason.OtherFocusReason)

    def delete_picture(self, path: Path | None) -> bool:
        """Move a picture of the history to the trash (or, where there is none, delete it after
        asking). Its settings go with it; the reference copies stay, other pictures may use them."""
        if path is None:
            return False
        path = Path(path)
        done = "was moved to the trash"
        if path.exists() and not QFile.moveToTrash(str(path)):
            done = "was deleted"
            answer = QMessageBox.question(
                self,
                "Delete the picture?",
                f"{path.name} cannot be moved to the trash here. Delete it for good?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                QMessageBox.StandardButton.Cancel,
            )
            if answer != QMessageBox.StandardButton.Yes:
                return False
            try:
                path.unlink()
            except OSError as exc:
                self.show_error(f"{path.name} could not be deleted: {exc.strerror or exc}.")
                return False
        self._full_images.pop(str(path), None)
        was_shown = self.gallery.current_path() == path
        self.gallery.remove_path(path)
        if was_shown and self.gallery.count() == 0:
            self.view.set_image(None)
            self.caption.setText("")
            self._set_image_actions(False)
        self.statusBar().showMessage(f"{path.name} {done}.", 5000)
        return True

    def use_as_reference(self, path: Path | None) -> None:
        if path is not None:
            self.state.add_reference(path)

    def copy_image(self, path: Path | None) -> None:
        if path is None:
            return
        image = self._full_images.get(str(path)) or QImage(str(path))
        if image.isNull():
            self.show_error(f"The picture {Path(path).name} could not be opened to copy it.")
            return
        QGuiApplication.clipboard().setImage(image)
        self.statusBar().showMessage("Picture copied to the clipboard.", 3000)

    def open_outputs_folder(self) -> None:
        try:
            self.outputs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.show_error(f"The folder {self.outputs_dir} could not be created: {exc.strerror or exc}.")
            return
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.outputs_dir)))

    # ------------------------------------------------------------------ messages and status
    def show_error(self, text: str) -> None:
        self.banner.show_message(text, "error")

    def use_adapter(self, adapter: str, image_encoder: str = "") -> None:
        """Make ``adapter`` (e.g. a checkpoint from the Evaluate tab) the Create tab's adapter, with
        the image encoder it was evaluated with; the base model and everything else stay."""
        models = replace(self.state.models, adapter=adapter)
        if image_encoder:
            models = replace(models, image_encoder=image_encoder)
        self.state.set_models(models)
        self.tabs.setCurrentIndex(CREATE_TAB)
        self.show_note(f"The adapter is now {Path(adapter).parent.name}/{Path(adapter).name}.")

    def show_note(self, text: str) -> None:
        self.banner.show_message(text, "note")

    def _banner_host(self) -> QWidget:
        """What the message floats over: the picture (never the buttons around it) on the Create
        tab, the top of the page on the others."""
        if self.tabs.currentIndex() == CREATE_TAB:
            page = self.view_tabs.currentWidget()
            if page is self.result_page:
                return self.view
            # The canvas pages float it over their picture; the sweep page over the whole page.
            return getattr(page, "canvas", page)
        page = self.tabs.currentWidget()
        return page.viewport() if hasattr(page, "viewport") else page

    def _place_banner(self) -> None:
        if self.banner.isHidden():
            return
        host = self._banner_host()
        central = self.centralWidget()
        if not host.isVisible():
            host = central
        top_left = host.mapTo(central, QPoint(0, 0))
        width = max(min(host.width() - 24, BANNER_MAX_WIDTH), 120)
        height = self.banner.heightForWidth(width)
        if height <= 0:
            height = self.banner.sizeHint().height()
        x = top_left.x() + max((host.width() - width) // 2, 0)
        self.banner.setGeometry(QRect(x, top_left.y() + 12, width, height))
        self.banner.raise_()

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            self._fit_to_screen()  # now that the window frame's size is known

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        QTimer.singleShot(0, self, self._place_banner)  # after the layouts have placed the picture

    def _set_precision(self, name: str) -> None:
        """A new engine in that number format; the chosen models load into it at once."""
        if name == self.settings.precision:
            return
        self.settings.precision = name
        if not self._custom_engine:
            self.worker.replace_engine(
                default_engine_factory(self.settings.device, name, self.settings.library_path)
            )
            self.device_label.setText("Starting the engine…")
            self._preload()

    def _on_engine_ready(self, description: str) -> None:
        self.device_label.setText(description)

    def _update_memory(self) -> None:
        self.memory_label.setText(_memory_text())

    def _show_outputs_dir(self) -> None:
        self.outputs_button.setText(f"Saving to {self.outputs_dir}")

    def _on_outputs_changed(self, path: str) -> None:
        self.settings.outputs_dir = path
        self._show_outputs_dir()
        self.gallery.load_history(self.outputs_dir)
        self.save_settings()

    def _on_models_dir_changed(self, path: str) -> None:
        self.settings.models_dir = path
        self.save_settings()
        m = self.state.models
        self.library.set_root(library_root(self.settings.models_path), (m.base, m.adapter, m.image_encoder))

    # ------------------------------------------------------------------ settings and closing
    def _restore_layout(self) -> None:
        layout = self.settings.window
        if layout.geometry:
            self.restoreGeometry(QByteArray.fromBase64(layout.geometry.encode()))
        else:
            self.resize(*DEFAULT_SIZE)
        self._fit_to_screen()
        if layout.state:
            self.restoreState(QByteArray.fromBase64(layout.state.encode()))
        if "main" in layout.splitters:
            self.splitter.restoreState(QByteArray.fromBase64(layout.splitters["main"].encode()))

    def _fit_to_screen(self) -> None:
        """Never larger than the screen it opens on (a size saved on a large monitor, the default
        size on a laptop), and not placed off it."""
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            return
        area = screen.availableGeometry()
        frame = self.frameGeometry().size() - self.geometry().size()
        width = min(self.width(), area.width() - frame.width())
        height = min(self.height(), area.height() - frame.height())
        if (width, height) != (self.width(), self.height()):
            self.resize(max(width, 1), max(height, 1))
        if self.isVisible() or self.settings.window.geometry:
            x = min(max(self.x(), area.left()), area.right() - self.frameGeometry().width() + 1)
            y = min(max(self.y(), area.top()), area.bottom() - self.frameGeometry().height() + 1)
            self.move(max(x, area.left()), max(y, area.top()))

    def _store_layout(self) -> None:
        layout = self.settings.window
        layout.geometry = bytes(self.saveGeometry().toBase64()).decode()
        layout.state = bytes(self.saveState().toBase64()).decode()
        layout.splitters["main"] = bytes(self.splitter.saveState().toBase64()).decode()

    def save_settings(self) -> None:
        self.settings.last = self.state.last_values()
        self.settings.models = self.state.models
        chosen = self.control.chosen_weights_dir
        self.settings.annotators_dir = str(chosen) if chosen else ""
        self._store_layout()
        if self.settings_path is None:
            return
        try:
            save_settings(self.settings, self.settings_path)
        except IPAStudioError as exc:
            self.show_error(str(exc))

    def shutdown(self) -> None:
        """Stop every thread this window started. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._memory_timer.stop()
        self.save_settings()
        self.worker.stop()
        self.evaluate_panel.shutdown()
        self.train.shutdown()
        self.setup.shutdown()
        self.control.shutdown()
        self.library.stop()
        self.loader.wait()

    def confirm_close(self) -> bool:
        """While pictures are being made, ask before closing: closing cancels them unsaved. While a
        training runs, ask too: closing stops it (with a checkpoint to continue from)."""
        if self._closed:
            return True
        if self.train.running():
            box = QMessageBox(
                QMessageBox.Icon.Question,
                "Close IPA Studio?",
                "A training run is going on. Closing stops it after the current step; a checkpoint "
                "and the adapter so far are saved in its run folder.",
                parent=self,
            )
            close = box.addButton("Stop training and close", QMessageBox.ButtonRole.DestructiveRole)
            box.addButton("Keep training", QMessageBox.ButtonRole.RejectRole)
            box.setDefaultButton(box.buttons()[-1])
            box.exec()
            if box.clickedButton() is not close:
                return False
        if not self._jobs:
            return True
        queued = len(self._jobs) - 1
        more = f" and {queued} more queued" if queued else ""
        box = QMessageBox(
            QMessageBox.Icon.Question,
            "Close IPA Studio?",
            f"A picture is being made{more}. Closing now cancels "
            f"{'them' if queued else 'it'}; nothing of {'them' if queued else 'it'} is saved.",
            parent=self,
        )
        close = box.addButton("Close and cancel", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton("Keep working", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(box.buttons()[-1])
        box.exec()
        return box.clickedButton() is close

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        if not self.confirm_close():
            event.ignore()
            return
        self.shutdown()
        super().closeEvent(event)
