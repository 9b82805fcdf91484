"""Structure control (ControlNet): a photo, its pose or depth map next to it, and the ControlNet.

Each card is one control: drop a photo, pick how it becomes a map (pose, depth, or "already a map"),
see the map beside the photo before generating, choose the ControlNet, its strength and the part of
the steps it guides, or switch it off. Several cards work together (pose + depth).

Cards write into the view state and show what it holds. Maps are made by the panel's
``ControlWorker`` thread and only when what a map depends on (photo, preprocessor, its settings)
changed: strength, steps and on/off never make a new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QMouseEvent, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.gui import dialogs
from ipa_studio.gui.control_worker import ControlNetCheck, ControlWorker, MapJob, MapResult, ServiceFactory
from ipa_studio.gui.panels.references import IMAGE_FILTER
from ipa_studio.gui.state import LIMITS, ControlItem, ViewState
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.fields import ComboBox, DoubleSpinBox, Slider, SpinBox
from ipa_studio.gui.widgets.section import Section

THUMB = 150
SHORT_LABELS = {
    "openpose": "Pose (OpenPose)",
    "depth_midas": "Depth (MiDaS)",
    "depth_zoe": "Depth (ZoeDepth)",
    "none": "Already a map (use as is)",
}
MAP_NAMES = {"openpose": "pose map", "depth_midas": "depth map", "depth_zoe": "depth map", "none": "map"}
KIND_LABELS = {"openpose": "OpenPose ControlNet", "depth": "Depth ControlNet"}
CONTROLNET_TIP = (
    "The ControlNet that reads the map: a diffusers folder (config.json and "
    "diffusion_pytorch_model.safetensors) for SD1.5, for example lllyasviel/control_v11p_sd15_openpose "
    "for poses or lllyasviel/control_v11f1p_sd15_depth for depth. Folders in the models folder's "
    "'controlnet' folder are listed here."
)
STYLESHEET = """
QFrame#controlCard { background: #323237; border: 1px solid #414147; border-radius: 6px; }
QFrame#controlCard[off="true"] { background: #2a2a2e; border-style: dashed; }
QFrame#controlCard QLabel { background: transparent; border: none; }
QFrame#controlCard QLabel#controlThumb {
    background: #1c1c1e; border: 1px solid #45454b; border-radius: 4px; color: #8a8a92;
}
QFrame#controlCard QLabel#controlThumb[dropping="true"] { border: 2px solid #3d8bfd; }
QLabel#controlProblem { color: #ff9f7a; }
QLabel#controlOk { color: #8fd18f; }
QLabel#controlName { font-weight: 600; }
"""


class _Thumb(QLabel):
    """A fixed box showing a picture fitted inside; clickable, and a drop target when ``drops``."""

    clicked = Signal()
    dropped = Signal(object)  # QMimeData

    def __init__(self, placeholder: str, tip: str, drops: bool) -> None:
        super().__init__(placeholder)
        self.setObjectName("controlThumb")
        self.placeholder = placeholder
        self.setFixedSize(THUMB, THUMB)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWordWrap(True)
        self.setToolTip(tip)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setAcceptDrops(drops)
        self.image: QImage | None = None

    def show_image(self, image: QImage | None, placeholder: str | None = None) -> None:
        self.image = image if image is not None and not image.isNull() else None
        if self.image is None:
            self.setPixmap(QPixmap())
            self.setText(placeholder or self.placeholder)
            return
        ratio = self.devicePixelRatioF()
        inner = round((THUMB - 4) * ratio)
        pixmap = QPixmap.fromImage(self.image).scaled(
            inner, inner, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
        pixmap.setDevicePixelRatio(ratio)
        self.setPixmap(pixmap)

    def has_image(self) -> bool:
        return self.image is not None

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mousePressEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()
            self._dropping(True)

    def dragLeaveEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        self._dropping(False)

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        self._dropping(False)
        event.acceptProposedAction()
        self.dropped.emit(event.mimeData())

    def _dropping(self, on: bool) -> None:
        self.setProperty("dropping", on)
        self.style().unpolish(self)
        self.style().polish(self)


class ControlCard(QFrame):
    """One control. Emits ``edited(uid, changes)``; never writes the state itself."""

    edited = Signal(int, dict)
    remove_requested = Signal(int)
    choose_photo = Signal(int)
    photo_dropped = Signal(int, object)  # uid, QMimeData
    browse_model = Signal(int)
    map_clicked = Signal(int)
    download_requested = Signal(int)

    def __init__(self, item: ControlItem, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.uid = item.uid
        self.setObjectName("controlCard")
        self.pending = False  # a map job for the current photo and settings is on its way
        self.checking = ""  # the ControlNet folder being checked
        self.result: MapResult | None = None  # the last map result for the current settings
        self.requested_key: tuple | None = None
        self.menu: dict[str, Any] = {}
        self._item = item

        outer = QVBoxLayout(self)
        outer.setContentsMargins(10, 8, 8, 10)
        outer.setSpacing(6)

        header = QHBoxLayout()
        self.enabled = QCheckBox("Control")
        self.enabled.setObjectName("controlName")
        self.enabled.setToolTip("Use this control in the next generations (off: kept here, not used)")
        self.kind_label = QLabel()
        self.kind_label.setObjectName("hint")
        self.remove_button = QToolButton()
        self.remove_button.setText("✕")
        self.remove_button.setAutoRaise(True)
        self.remove_button.setToolTip("Remove this control")
        header.addWidget(self.enabled)
        header.addWidget(self.kind_label, 1)
        header.addWidget(self.remove_button)
        outer.addLayout(header)

        self.body = QWidget()
        body = QVBoxLayout(self.body)
        body.setContentsMargins(0, 0, 0, 0)
        body.setSpacing(6)
        outer.addWidget(self.body)

        pictures = QHBoxLayout()
        pictures.setSpacing(6)
        self.photo_box = _Thumb(
            "Drop a photo here\nor click to choose",
            "The photo to take the pose or depth from, or a map you already have. Click to choose a file.",
            drops=True,
        )
        arrow = QLabel("→")
        arrow.setObjectName("hint")
        self.map_box = _Thumb(
            "The map appears here",
            "The map the ControlNet will follow. Click to see it large.",
            drops=False,
        )
        pictures.addWidget(self.photo_box)
        pictures.addWidget(arrow)
        pictures.addWidget(self.map_box)
        pictures.addStretch(1)
        body.addLayout(pictures)

        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        grid.setColumnStretch(1, 1)

        self.preprocessor = ComboBox()
        self.preprocessor.addItem("Loading…")
        self.preprocessor.setEnabled(False)
        self.preprocessor.setSizeAdjustPolicy(ComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.preprocessor.setMinimumContentsLength(12)
        self.resolution = SpinBox()
        self.resolution.setRange(*(int(v) for v in LIMITS["control_resolution"]))
        self.resolution.setSingleStep(64)
        self.resolution.setSuffix(" px")
        self.resolution.setToolTip(
            "Detail: the short side of the map. 512 is what the ControlNets were trained with; more finds "
            "smaller people and details, but is slower."
        )
        row = QHBoxLayout()
        row.setSpacing(6)
        row.addWidget(self.preprocessor, 1)
        row.addWidget(self.resolution)
        grid.addWidget(self._label("Map from"), 0, 0)
        grid.addLayout(row, 0, 1)

        self.hands = QCheckBox("Hands")
        self.hands.setToolTip("Also find the fingers (needs the OpenPose hand model)")
        self.face = QCheckBox("Face")
        self.face.setToolTip("Also find the face outline and features (needs the OpenPose face model)")
        self.pose_options = QWidget()
        options = QHBoxLayout(self.pose_options)
        options.setContentsMargins(0, 0, 0, 0)
        options.addWidget(self.hands)
        options.addWidget(self.face)
        options.addStretch(1)
        grid.addWidget(self.pose_options, 1, 1)

        self.model = ComboBox()
        self.model.setToolTip(CONTROLNET_TIP)
        self.model.setPlaceholderText("Choose a ControlNet folder")
        self.model.setSizeAdjustPolicy(ComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(12)
        self.browse = QToolButton()
        self.browse.setText("…")
        self.browse.setToolTip("Choose a ControlNet folder on this computer")
        row = QHBoxLayout()
        row.setSpacing(6)
        row.addWidget(self.model, 1)
        row.addWidget(self.browse)
        grid.addWidget(self._label("ControlNet"), 2, 0)
        grid.addLayout(row, 2, 1)
        self.model_note = QLabel()
        self.model_note.setWordWrap(True)
        self.model_note.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        grid.addWidget(self.model_note, 3, 1)

        low, high = LIMITS["control_scale"]
        self.strength_slider = Slider(Qt.Orientation.Horizontal)
        self.strength_slider.setRange(round(low * 100), round(high * 100))
        self.strength_spin = DoubleSpinBox()
        self.strength_spin.setRange(low, high)
        self.strength_spin.setSingleStep(0.05)
        self.strength_spin.setDecimals(2)
        tip = "How strongly the picture follows the map: 1 is normal, 0.5 loosely, 0 not at all."
        for w in (self.strength_slider, self.strength_spin):
            w.setToolTip(tip)
        row = QHBoxLayout()
        row.setSpacing(6)
        row.addWidget(self.strength_slider, 1)
        row.addWidget(self.strength_spin)
        grid.addWidget(self._label("Strength", tip), 4, 0)
        grid.addLayout(row, 4, 1)

        self.start = SpinBox()
        self.end = SpinBox()
        for spin in (self.start, self.end):
            spin.setRange(0, 100)
            spin.setSingleStep(5)
            spin.setSuffix(" %")
        tip = (
            "The part of the denoising steps the ControlNet guides. Ending early (say at 60 %) fixes the "
            "layout and leaves the details free."
        )
        self.start.setToolTip(tip)
        self.end.setToolTip(tip)
        row = QHBoxLayout()
        row.setSpacing(6)
        row.addWidget(self.start)
        row.addWidget(QLabel("to"))
        row.addWidget(self.end)
        row.addWidget(QLabel("of the steps"))
        row.addStretch(1)
        grid.addWidget(self._label("Guides", tip), 5, 0)
        grid.addLayout(row, 5, 1)
        body.addLayout(grid)

        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.download_button = QPushButton("Download")
        self.download_button.hide()
        body.addWidget(self.status)
        body.addWidget(self.download_button, 0, Qt.AlignmentFlag.AlignLeft)

        self._connect()

    @staticmethod
    def _label(text: str, tip: str = "") -> QLabel:
        label = QLabel(text)
        label.setObjectName("fieldLabel")
        label.setToolTip(tip)
        return label

    def _connect(self) -> None:
        def edit(**changes: object) -> None:
            self.edited.emit(self.uid, changes)

        self.enabled.toggled.connect(lambda on: edit(enabled=on))
        self.remove_button.clicked.connect(lambda: self.remove_requested.emit(self.uid))
        self.photo_box.clicked.connect(lambda: self.choose_photo.emit(self.uid))
        self.photo_box.dropped.connect(lambda mime: self.photo_dropped.emit(self.uid, mime))
        self.map_box.clicked.connect(lambda: self.map_clicked.emit(self.uid))
        self.preprocessor.activated.connect(lambda _i: edit(**self._preprocessor_change()))
        self.resolution.valueChanged.connect(lambda v: edit(resolution=int(v)))
        self.hands.toggled.connect(lambda on: edit(hands=on))
        self.face.toggled.connect(lambda on: edit(face=on))
        self.model.activated.connect(lambda _i: edit(model=self.model.currentData() or ""))
        self.browse.clicked.connect(lambda: self.browse_model.emit(self.uid))
        self.strength_slider.valueChanged.connect(lambda v: edit(scale=v / 100.0))
        self.strength_spin.valueChanged.connect(lambda v: edit(scale=round(v, 2)))
        self.start.valueChanged.connect(lambda v: edit(**self._window_change(start=v / 100.0)))
        self.end.valueChanged.connect(lambda v: edit(**self._window_change(end=v / 100.0)))
        self.download_button.clicked.connect(lambda: self.download_requested.emit(self.uid))

    def _preprocessor_change(self) -> dict[str, object]:
        name = self.preprocessor.currentData() or "none"
        if name == "openpose":
            return {"preprocessor": name}
        return {"preprocessor": name, "hands": False, "face": False}  # OpenPose-only options

    def _window_change(self, **moved: float) -> dict[str, float]:
        # Keep start below end by moving the other end, as a range slider would.
        start = moved.get("start", self._item.start)
        end = moved.get("end", self._item.end)
        if start >= end:
            if "start" in moved:
                end = min(1.0, start + 0.05)
                start = min(start, end - 0.05)
            else:
                start = max(0.0, end - 0.05)
                end = max(end, start + 0.05)
        return {"start": round(start, 4), "end": round(end, 4)}

    # ------------------------------------------------------------------ showing the state
    def render(self, item: ControlItem, number: int, width: int, height: int) -> None:
        """Show ``item``; widgets are updated with their signals blocked (no edits echo back)."""
        self._item = item
        widgets = (
            self.enabled,
            self.preprocessor,
            self.resolution,
            self.hands,
            self.face,
            self.model,
            self.strength_slider,
            self.strength_spin,
            self.start,
            self.end,
        )
        for w in widgets:
            w.blockSignals(True)
        try:
            self.enabled.setText(f"Control {number}")
            self.enabled.setChecked(item.enabled)
            self._fill_preprocessors(item)
            self.resolution.show_value(item.resolution)
            self.hands.setChecked(item.hands)
            self.face.setChecked(item.face)
            index = self.model.findData(item.model) if item.model else -1
            if item.model and index < 0:
                self.model.addItem(Path(item.model).name, item.model)
                index = self.model.count() - 1
            self.model.setCurrentIndex(index)
            self.model.setToolTip(f"{item.model}\n\n{CONTROLNET_TIP}" if item.model else CONTROLNET_TIP)
            self.strength_slider.show_value(item.scale * 100)
            self.strength_spin.show_value(item.scale)
            self.start.show_value(item.start * 100)
            self.end.show_value(item.end * 100)
        finally:
            for w in widgets:
                w.blockSignals(False)
        self.pose_options.setVisible(item.preprocessor == "openpose")
        self.resolution.setVisible(item.preprocessor != "none")
        self.body.setEnabled(item.enabled)
        if self.property("off") != (not item.enabled):
            # Re-polishing restyles every child: only when the look really changes, not per slider step.
            self.setProperty("off", not item.enabled)
            self.style().unpolish(self)
            self.style().polish(self)
        self._show_model(item)
        self._show_status(item, width, height)

    def _fill_preprocessors(self, item: ControlItem) -> None:
        if not self.menu:
            return
        from ipa_studio.core.preprocess import preprocessors_for  # loaded by the worker already

        wanted = [p.name for p in preprocessors_for(item.model_kind)]
        if item.preprocessor not in wanted:
            wanted.insert(0, item.preprocessor)  # a reused map, before the ControlNet was checked
        if [self.preprocessor.itemData(i) for i in range(self.preprocessor.count())] != wanted:
            self.preprocessor.clear()
            for name in wanted:
                info = self.menu.get(name)
                self.preprocessor.addItem(SHORT_LABELS.get(name, info.label if info else name), name)
                if info is not None:
                    self.preprocessor.setItemData(
                        self.preprocessor.count() - 1, info.description, Qt.ItemDataRole.ToolTipRole
                    )
        self.preprocessor.setEnabled(True)
        self.preprocessor.setCurrentIndex(self.preprocessor.findData(item.preprocessor))
        info = self.menu.get(item.preprocessor)
        self.preprocessor.setToolTip(info.description if info else "")

    def _show_model(self, item: ControlItem) -> None:
        if not item.model:
            self.kind_label.setText("")
            self._note(self.model_note, "No ControlNet chosen yet.", problem=False)
        elif self.checking == item.model:
            self._note(self.model_note, "Checking the ControlNet…", problem=False)
        elif item.model_problem:
            self.kind_label.setText("")
            self._note(self.model_note, item.model_problem, problem=True)
        else:
            label = KIND_LABELS.get(item.model_kind, "ControlNet (its name does not say for what map)")
            self.kind_label.setText(f"· {label}")
            self.model_note.setText("")
            self.model_note.hide()
            return
        self.model_note.show()

    def _show_status(self, item: ControlItem, width: int, height: int) -> None:
        can_download = bool(self.result and self.result.downloads and item.map_problem)
        self.download_button.setVisible(can_download)
        if can_download and self.download_button.isEnabled() and self.result is not None:
            self.download_button.setText(missing_weights_text(self.result))
        what = MAP_NAMES.get(item.preprocessor, "map")
        if item.map_problem:
            self._note(self.status, item.map_problem, problem=True)
        elif not item.photo:
            self._note(self.status, "Drop a photo (or a map you already have) on the box on the left.")
        elif self.pending or not item.map_path:
            self._note(self.status, f"Making the {what}…" if item.preprocessor != "none" else "Opening…")
        else:
            self._note(self.status, self._ready_text(item, width, height), ok=True)

    def _ready_text(self, item: ControlItem, width: int, height: int) -> str:
        image = self.map_box.image
        if image is None:
            return "Map ready."
        w, h = image.width(), image.height()
        if self.result is not None and self.result.map_image is not None:
            w, h = self.result.map_image.width(), self.result.map_image.height()
        what = MAP_NAMES.get(item.preprocessor, "map").capitalize()
        if item.preprocessor == "none":
            text = f"Used as it is · {w} × {h}"
        elif self.result is not None and self.result.ran:
            text = f"{what} {w} × {h} · made in {self.result.seconds:.1f} s"
        else:
            text = f"{what} {w} × {h} · from the cache"
        if abs(w / h - width / height) > 0.02:
            text += f" · stretched to the {width} × {height} picture"
        return text

    @staticmethod
    def _note(label: QLabel, text: str, problem: bool = False, ok: bool = False) -> None:
        label.setText(text)
        name = "controlProblem" if problem else "controlOk" if ok else "hint"
        if label.objectName() != name:
            label.setObjectName(name)
            label.style().unpolish(label)
            label.style().polish(label)

    def has_map(self) -> bool:
        return self.map_box.has_image() and bool(self._item.map_path)


class ControlPanel(Section):
    """The control cards, "Add control", and where the preprocessor weights are.

    ``message(text)`` reports problems for the window's banner; ``show_image(image, caption)`` asks
    the window to show a map large.
    """

    message = Signal(str)
    show_image = Signal(QImage, str)

    def __init__(
        self,
        state: ViewState,
        maps_dir: Callable[[], Path],
        models_dir: Callable[[], Path],
        weights_dir: Callable[[], Path],
        device: str | None = None,
        service_factory: ServiceFactory | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(
            "Structure (ControlNet)",
            "Follow the pose or depth of a photo. Drop a photo, check its map, choose the ControlNet.",
            parent,
        )
        self.setStyleSheet(STYLESHEET)
        self.state = state
        self.maps_dir = maps_dir
        self.models_dir = models_dir
        self.default_weights_dir = weights_dir
        self._weights_dir: Path | None = None  # chosen by hand; None follows the models folder
        self.cards: dict[int, ControlCard] = {}
        self.map_jobs = 0  # map jobs sent to the worker: the tests count them
        self.menu: dict[str, Any] = {}
        self.found: list[tuple[str, str]] = []  # (name, folder) of the ControlNets in the models folder
        self._photo_thumbs: dict[str, QImage] = {}
        self._downloads: Any = None
        self.setAcceptDrops(True)

        self.worker = ControlWorker(self.weights_dir, device, service_factory)
        queued = Qt.ConnectionType.QueuedConnection
        self.worker.menu_ready.connect(self._on_menu, queued)
        self.worker.map_ready.connect(self._on_map, queued)
        self.worker.controlnet_checked.connect(self._on_checked, queued)
        self.worker.controlnets_found.connect(self._on_found, queued)

        self.cards_box = QVBoxLayout()
        self.cards_box.setSpacing(8)
        self.body.addLayout(self.cards_box)

        self.drop_hint = QLabel("Drop a photo here to add a control")
        self.drop_hint.setObjectName("dropZone")
        self.drop_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.drop_hint.setMinimumHeight(44)
        self.body.addWidget(self.drop_hint)

        buttons = QHBoxLayout()
        self.add_button = QPushButton("Add control")
        self.add_button.setToolTip("Add a control: one photo (or map) and the ControlNet that follows it")
        self.add_button.clicked.connect(lambda: self.add_control())
        buttons.addWidget(self.add_button)
        buttons.addStretch(1)
        self.body.addLayout(buttons)

        weights = QHBoxLayout()
        weights_title = QLabel("Preprocessor weights")
        weights_title.setObjectName("hint")
        self.weights_label = ElidedLabel()
        self.weights_label.setObjectName("hint")
        self.weights_button = QToolButton()
        self.weights_button.setText("Change…")
        self.weights_button.setToolTip(
            "The folder with the OpenPose / MiDaS / ZoeDepth files, laid out like the "
            "lllyasviel/Annotators repo"
        )
        self.weights_button.clicked.connect(self._choose_weights_dir)
        weights.addWidget(weights_title)
        weights.addWidget(self.weights_label, 1)
        weights.addWidget(self.weights_button)
        self.body.addLayout(weights)
        self._show_weights_dir()

        state.changed.connect(self._on_state)
        state.control_changed.connect(self._on_control_changed)
        self._rebuild()

    # ------------------------------------------------------------------ adding
    def add_control(self, photo: str | Path = "") -> int:
        """Add a control (with ``photo``, when given) and return its uid."""
        self.refresh_controlnets()  # one may have been downloaded since the last control was added
        item = self.state.add_control(photo=str(photo), model=self._default_model())
        return item.uid

    def add_files(self, paths: Iterable[str | Path]) -> int:
        added = 0
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.message.emit(f"'{path.name}' is a folder; drop a picture file instead.")
                continue
            self.add_control(path)
            added += 1
        return added

    def _photo_from_mime(self, mime: QMimeData) -> list[str]:
        local = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()]
        if local:
            return local
        if mime.hasImage():
            image = QImage(mime.imageData())
            saved = self._save_pasted(image) if not image.isNull() else None
            return [saved] if saved else []
        if mime.urls():
            self.message.emit(
                "Pictures from web addresses cannot be used directly: save the picture to a file first, "
                "then drop the file."
            )
        else:
            self.message.emit("There is no picture to use: drop a picture file or an image.")
        return []

    def _save_pasted(self, image: QImage) -> str | None:
        """A picture with no file is saved next to the maps, so the PNGs made with it can name it."""
        folder = self.maps_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.message.emit(f"The picture could not be saved in {folder}: {exc.strerror or exc}.")
            return None
        path = folder / f"pasted-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}.png"
        if not image.save(str(path), "PNG", 90):
            self.message.emit(f"The picture could not be saved in {folder}.")
            return None
        return str(path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        paths = self._photo_from_mime(event.mimeData())
        if paths and self.add_files(paths):
            event.acceptProposedAction()

    # ------------------------------------------------------------------ cards
    def _on_state(self, name: str) -> None:
        if name == "controls":
            self._rebuild()
        elif name in ("width", "height"):
            for uid in self.cards:
                self._render(uid)
        elif name == "models":
            # Another base model may take other ControlNets (SD1.5 needs 768-wide ones).
            for item in self.state.controls:
                self._check_model(item)

    def _rebuild(self) -> None:
        wanted = {c.uid for c in self.state.controls}
        for uid in list(self.cards):
            if uid not in wanted:
                card = self.cards.pop(uid)
                self.worker.forget(uid)
                self.cards_box.removeWidget(card)
                card.deleteLater()
        for index, item in enumerate(self.state.controls):
            card = self.cards.get(item.uid)
            if card is None:
                card = self._make_card(item)
                self._check_model(item)
            self.cards_box.insertWidget(index, card)
        for uid in self.cards:
            self._render(uid)
            self._maybe_make_map(uid)
        empty = not self.state.controls
        self.drop_hint.setText(
            "Drop a photo here to add a control" if empty else "Drop a photo here to add another control"
        )
        self.drop_hint.setMinimumHeight(80 if empty else 36)

    def _make_card(self, item: ControlItem) -> ControlCard:
        card = ControlCard(item)
        card.menu = self.menu
        self._fill_models(card)
        card.edited.connect(self._on_edited)
        card.remove_requested.connect(self.state.remove_control)
        card.choose_photo.connect(self._choose_photo)
        card.photo_dropped.connect(self._on_photo_dropped)
        card.browse_model.connect(self._browse_model)
        card.map_clicked.connect(self._on_map_clicked)
        card.download_requested.connect(self._download)
        self.cards[item.uid] = card
        if item.photo in self._photo_thumbs:
            card.photo_box.show_image(self._photo_thumbs[item.photo])
        return card

    def _render(self, uid: int) -> None:
        item, card = self.state.control(uid), self.cards.get(uid)
        if item is not None and card is not None:
            number = [c.uid for c in self.state.controls].index(uid) + 1
            card.render(item, number, self.state.width, self.state.height)

    def _on_edited(self, uid: int, changes: dict) -> None:
        if "model" in changes:
            self.set_model(uid, str(changes.pop("model")))
        if changes:
            self.state.update_control(uid, **changes)

    def _on_control_changed(self, uid: int) -> None:
        item, card = self.state.control(uid), self.cards.get(uid)
        if item is None or card is None:
            return
        self._render(uid)
        self._maybe_make_map(uid)

    def _maybe_make_map(self, uid: int) -> None:
        """Send a map job when what the map depends on changed; nothing else ever sends one."""
        item, card = self.state.control(uid), self.cards.get(uid)
        if item is None or card is None or not item.photo:
            if card is not None and item is not None and not item.photo:
                card.requested_key = None
                card.photo_box.show_image(None)
                card.map_box.show_image(None)
            return
        if item.map_key == card.requested_key or card.checking:
            return  # made already (or being made), or waiting to learn what the ControlNet wants
        card.requested_key = item.map_key
        card.pending = True
        card.result = None
        card.map_box.show_image(None, "Making the map…")
        card.photo_box.show_image(self._photo_thumbs.get(item.photo), "Opening…")
        self.map_jobs += 1
        if self.worker.weights_dir != self.weights_dir:  # the models folder moved
            self.worker.set_weights_dir(self.weights_dir)
            self._show_weights_dir()
        self.worker.submit_map(
            MapJob(
                uid,
                item.photo,
                item.preprocessor,
                item.resolution,
                item.hands,
                item.face,
                str(self.maps_dir()),
                want_photo=item.photo not in self._photo_thumbs,
            )
        )
        self._render(uid)

    def _on_map(self, result: MapResult) -> None:
        job = result.job
        if result.photo_thumb is not None:
            self._photo_thumbs[job.photo] = result.photo_thumb
            while len(self._photo_thumbs) > 64:
                self._photo_thumbs.pop(next(iter(self._photo_thumbs)))
        item, card = self.state.control(job.uid), self.cards.get(job.uid)
        if item is None or card is None:
            return
        if item.photo == job.photo and result.photo_thumb is not None:
            card.photo_box.show_image(result.photo_thumb)
        if item.map_key != job.key:
            return  # the photo or its settings changed meanwhile; a newer job is on its way
        card.pending = False
        card.result = result
        if result.photo_unreadable:
            card.requested_key = None
            self.state.update_control(job.uid, photo="", map_path="", map_problem=result.error)
            self.message.emit(result.error)
        elif result.ok:
            card.map_box.show_image(result.map_thumb)
            self.state.update_control(job.uid, map_path=result.map_path, map_problem="")
        else:
            card.map_box.show_image(None, "No map")
            self.state.update_control(job.uid, map_path="", map_problem=result.error)
        self._render(job.uid)

    def _retry_failed_maps(self) -> None:
        """Run again the maps that failed (after the weights folder changed or a download ended)."""
        for item in self.state.controls:
            card = self.cards.get(item.uid)
            if card is not None and item.map_problem and item.photo:
                card.requested_key = None
                self.state.update_control(item.uid, map_problem="")
                self._maybe_make_map(item.uid)

    # ------------------------------------------------------------------ the preprocessor menu
    def _on_menu(self, menu: dict) -> None:
        self.menu.clear()
        self.menu.update(menu)
        if not menu:
            self.message.emit(
                "The preprocessors could not be loaded (see the log); only maps you already have can be used."
            )
        for uid in self.cards:
            self._render(uid)

    # ------------------------------------------------------------------ ControlNets
    def refresh_controlnets(self) -> None:
        """Look again for ControlNets in the models folder (after a download or a new folder)."""
        self.worker.find_controlnets(self.models_dir())

    def _default_model(self) -> str:
        used = {c.model for c in self.state.controls}
        free = [path for _name, path in self.found if path not in used]
        return free[0] if free else (self.found[0][1] if self.found else "")

    def _on_found(self, found: list[tuple[str, str]]) -> None:
        self.found = list(found)
        for card in self.cards.values():
            self._fill_models(card)
        for item in list(self.state.controls):
            if not item.model and self.found:
                self.set_model(item.uid, self._default_model())
            else:
                self._render(item.uid)

    def _fill_models(self, card: ControlCard) -> None:
        card.model.blockSignals(True)
        current = card.model.currentData()
        card.model.clear()
        for name, path in self.found:
            card.model.addItem(name, path)
            card.model.setItemData(card.model.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        card.model.setCurrentIndex(card.model.findData(current) if current else -1)
        card.model.blockSignals(False)

    def _browse_model(self, uid: int) -> None:
        item = self.state.control(uid)
        start = Path(item.model).parent if item and item.model else self.models_dir() / "controlnet"
        folder = dialogs.open_folder(self, "controlnet", "Choose a ControlNet folder", start)
        if folder:
            self.set_model(uid, folder)

    def set_model(self, uid: int, folder: str | Path) -> None:
        card = self.cards.get(uid)
        if card is not None and folder:
            card.checking = str(folder)  # before the change: no map job until the check says what fits
        item = self.state.update_control(uid, model=str(folder), model_kind="unknown", model_problem="")
        if item is not None:
            self._check_model(item)

    def _check_model(self, item: ControlItem | None) -> None:
        card = self.cards.get(item.uid) if item is not None else None
        if item is None or card is None or not item.model:
            return
        card.checking = item.model
        self.worker.check_controlnet(item.uid, item.model, self.state.models.base)
        self._render(item.uid)

    def _on_checked(self, check: ControlNetCheck) -> None:
        item, card = self.state.control(check.uid), self.cards.get(check.uid)
        if item is None or card is None:
            return
        if card.checking == check.path:
            card.checking = ""
        if item.model != check.path:
            return  # another folder was chosen meanwhile; its own check follows
        changes: dict[str, object] = {
            "model_kind": check.kind,
            "model_problem": "" if check.usable else check.reason,
        }
        # A pose ControlNet does nothing useful with a depth map: switch to a preprocessor it reads.
        if self.menu:
            from ipa_studio.core.preprocess import preprocessors_for  # loaded by the worker already

            offered = [p.name for p in preprocessors_for(check.kind)]
            if item.preprocessor not in offered:
                changes.update(preprocessor=offered[0], hands=False, face=False)
        self.state.update_control(check.uid, **changes)
        self._render(check.uid)
        self._maybe_make_map(check.uid)

    # ------------------------------------------------------------------ photos and maps
    def _choose_photo(self, uid: int) -> None:
        path = dialogs.open_file(self, "control photo", "Choose a photo or a map", IMAGE_FILTER)
        if path:
            self.state.update_control(uid, photo=path)

    def _on_photo_dropped(self, uid: int, mime: QMimeData) -> None:
        paths = self._photo_from_mime(mime)
        if paths:
            self.state.update_control(uid, photo=str(paths[0]))
            if len(paths) > 1:
                self.add_files(paths[1:])

    def set_photo(self, uid: int, photo: str | Path) -> None:
        self.state.update_control(uid, photo=str(photo))

    def _on_map_clicked(self, uid: int) -> None:
        card = self.cards.get(uid)
        if card is None or card.result is None or card.result.map_image is None:
            return
        image = card.result.map_image
        number = [c.uid for c in self.state.controls].index(uid) + 1
        self.show_image.emit(image, f"Map of control {number} · {image.width()} × {image.height()}")

    # ------------------------------------------------------------------ preprocessor weights
    @property
    def weights_dir(self) -> Path:
        return self._weights_dir or self.default_weights_dir()

    @property
    def chosen_weights_dir(self) -> Path | None:
        """The folder picked by hand, or None while the default (under the models folder) applies."""
        return self._weights_dir

    def set_weights_dir(self, folder: str | Path) -> None:
        self._weights_dir = Path(folder)
        self.worker.set_weights_dir(self.weights_dir)
        self._show_weights_dir()
        self._retry_failed_maps()

    def _show_weights_dir(self) -> None:
        self.weights_label.setText(str(self.weights_dir))

    def _choose_weights_dir(self) -> None:
        title = "Choose the preprocessor weights folder"
        folder = dialogs.open_folder(self, "annotators", title, current=self.weights_dir)
        if folder:
            self.set_weights_dir(folder)

    def _download(self, uid: int) -> None:
        card = self.cards.get(uid)
        if card is None or card.result is None or not card.result.downloads:
            return
        if self._downloads is None:
            from ipa_studio.gui.panels.setup import DownloadWorker

            self._downloads = DownloadWorker(self)
            self._downloads.progress.connect(self._on_download_progress)
            self._downloads.finished_download.connect(self._on_downloaded)
            self._downloads.failed.connect(self._on_download_failed)
            self._downloads.cancelled.connect(lambda _name: self._retry_failed_maps())
        card.download_button.setEnabled(False)
        card.download_button.setText("Downloading…")
        for entry in card.result.downloads:
            self._downloads.download(entry.name, entry, self.weights_dir)

    def _on_download_progress(self, name: str, done: float, total: float) -> None:
        percent = f" {100 * done / total:.0f} %" if total else ""
        for card in self.cards.values():
            if card.result and any(e.name == name for e in card.result.downloads):
                card.download_button.setText(f"Downloading {name}…{percent}")

    def _on_downloaded(self, _name: str, _path: str) -> None:
        self._retry_failed_maps()

    def _on_download_failed(self, _name: str, message: str) -> None:
        self.message.emit(message)
        for card in self.cards.values():
            card.download_button.setEnabled(True)
            card.download_button.setText("Download")

    # ------------------------------------------------------------------ closing
    def shutdown(self) -> None:
        """Stop the threads this panel started. Safe to call twice."""
        self.worker.stop()
        if self._downloads is not None:
            self._downloads.stop()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return super().sizeHint().expandedTo(QSize(340, 0))


def missing_weights_text(result: MapResult) -> str:
    """The files a download would fetch, with their sizes, for the Download button."""
    sizes = sum(getattr(e, "size_bytes", 0) or 0 for e in result.downloads)
    return f"Download {', '.join(result.missing_files)} ({sizes / 1e6:.0f} MB)" if sizes else "Download"
