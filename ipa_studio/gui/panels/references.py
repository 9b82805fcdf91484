"""Reference images: drop, paste or open pictures; a weight each; what the encoder sees of each;
under a card's More: when it acts, the crop / pad / tile choice and its region; the negative image;
the reference library."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from PySide6.QtCore import QMimeData, QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
    QPixmap,
)
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.images import load_image
from ipa_studio.core.references import ReferenceStore, encoder_inputs
from ipa_studio.core.request import EncoderView
from ipa_studio.gui import dialogs
from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.panels.crop_editor import CropEditor, centre_box
from ipa_studio.gui.qimage import pil_to_qimage
from ipa_studio.gui.state import LIMITS, ReferenceItem, ViewState
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.fields import ComboBox, DoubleSpinBox, Slider
from ipa_studio.gui.widgets.section import Section

CARD_THUMB = 96
CACHE_ENTRIES = 64  # encoder inputs and editor pictures kept in memory, so going back is instant
EDITOR_PICTURE = 480  # the crop editor shows a copy this large at most; the square is in real pixels
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)"
MASK_FILTER = "PNG mask (*.png);;Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"
CROP_TIP = (
    "This is exactly what the image encoder sees of the picture (its whole input, shown smaller): "
    "anything outside it has no effect. Open More to choose another part (Crop), the whole picture "
    "on a square (Pad to square) or several squares along it (Tile)."
)
FITS: tuple[tuple[str, str, str], ...] = (
    ("centre", "Centre", "The middle square, as CLIP cuts it (the default)"),
    ("crop", "Crop", "A square you choose: drag it on the picture, drag a corner to resize it"),
    ("pad", "Pad to square", "The whole picture on a black square: nothing is cut, the subject is smaller"),
    ("tile", "Tile", "The whole picture as up to four overlapping squares along its long side"),
)
REGION_TIP = (
    "Where in the picture this reference acts (white = here). Without a region it acts "
    "everywhere; with one, reference A can drive the left and B the right."
)
REGION_COLOURS = ("#ff6b4a", "#3d9bff", "#4cd07d", "#ffc933", "#b86bff", "#24d0d0")
"""Each reference's region tint on the Regions canvas and its swatch on the card, by position."""


def region_colour(index: int) -> str:
    return REGION_COLOURS[index % len(REGION_COLOURS)]


def encoder_side(image_encoder: str) -> int:
    """The side of the encoder's input square (224 for ViT-H), from the encoder folder's config."""
    import json

    config = Path(image_encoder) / "config.json" if image_encoder else None
    try:
        data = json.loads(config.read_text()) if config is not None and config.is_file() else {}
    except (OSError, ValueError):
        data = {}
    data = data.get("vision_config", data) if isinstance(data, dict) else {}
    size = data.get("image_size", 224) if isinstance(data, dict) else 224
    return size if isinstance(size, int) and 8 <= size <= 1024 else 224


def make_encoder_view(path: str, view: EncoderView, size: int) -> QImage:
    """What the encoder gets for ``path`` seen through ``view`` (runs on the loader thread).

    The squares come from :func:`ipa_studio.core.references.encoder_inputs`, the function the
    engine feeds the encoder with; several tiles are laid side by side.
    """
    squares = encoder_inputs(path, view, size)
    if len(squares) == 1:
        return pil_to_qimage(squares[0])
    from PIL import Image

    strip = Image.new("RGB", (size * len(squares), size))
    for i, square in enumerate(squares):
        strip.paste(square, (i * size, 0))
    return pil_to_qimage(strip)


def make_editor_picture(path: str) -> QImage:
    """The picture for the crop editor, upright as the engine loads it, at most EDITOR_PICTURE
    pixels a side; its real size travels in the image's "size" text."""
    picture = load_image(path)
    real = picture.size
    picture.thumbnail((EDITOR_PICTURE, EDITOR_PICTURE))
    image = pil_to_qimage(picture)
    image.setText("size", f"{real[0]},{real[1]}")
    return image


class ReferenceCard(QFrame):
    """One reference: what the encoder sees, the weight, and (under More) when, what and where."""

    remove_requested = Signal(int)
    weight_changed = Signal(int, float)
    paint_region_requested = Signal(int)
    load_region_requested = Signal(int)
    save_requested = Signal(int)
    picture_wanted = Signal(int)  # the crop editor needs the picture: the panel loads it

    def __init__(self, item: ReferenceItem, state: ViewState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.uid = item.uid
        self.path = item.path
        self.state = state
        self.setObjectName("referenceCard")
        outer = QVBoxLayout(self)
        outer.setContentsMargins(8, 8, 8, 8)
        outer.setSpacing(6)
        layout = QHBoxLayout()
        layout.setSpacing(10)
        outer.addLayout(layout)

        self.thumb = QLabel("Loading…")
        self.thumb.setObjectName("referenceThumb")
        self.thumb.setFixedSize(CARD_THUMB, CARD_THUMB)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setToolTip(CROP_TIP)
        layout.addWidget(self.thumb)
        self.encoder_image = QImage()
        """The encoder's input as the card shows it (full size, before scaling to the thumbnail)."""

        column = QVBoxLayout()
        column.setSpacing(4)
        name_row = QHBoxLayout()
        name_row.setSpacing(6)
        self.swatch = QLabel()
        self.swatch.setFixedSize(10, 10)
        self.swatch.setToolTip("This reference's colour on the Regions canvas")
        name = QLabel(Path(item.path).name)
        name.setObjectName("referenceName")
        name.setToolTip(item.path)
        name.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        name_row.addWidget(self.swatch)
        name_row.addWidget(name, 1)
        self.seen = QLabel("← what the encoder sees")
        self.seen.setObjectName("hint")
        self.seen.setToolTip(CROP_TIP)
        self.seen.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        # What is set under More, in a word each, so a closed card still says it.
        self.tags = QLabel()
        self.tags.setObjectName("hint")
        self.tags.setWordWrap(True)
        self.tags.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        column.addLayout(name_row)
        column.addWidget(self.seen)
        column.addWidget(self.tags)
        column.addStretch(1)

        weight_row = QHBoxLayout()
        weight_label = QLabel("Weight")
        low, high = LIMITS["weight"]
        self.slider = Slider(Qt.Orientation.Horizontal)
        self.slider.setRange(round(low * 100), round(high * 100))
        self.spin = DoubleSpinBox()
        self.spin.setRange(low, high)
        self.spin.setSingleStep(0.05)
        self.spin.setDecimals(2)
        tip = (
            "How much this picture counts compared with the other reference images "
            "(1 = normal, 0 = ignored, 2 = double)."
        )
        for w in (weight_label, self.slider, self.spin):
            w.setToolTip(tip)
        weight_row.addWidget(weight_label)
        weight_row.addWidget(self.slider, 1)
        weight_row.addWidget(self.spin)
        column.addLayout(weight_row)
        layout.addLayout(column, 1)

        side = QVBoxLayout()
        side.setSpacing(2)
        remove = QToolButton()
        remove.setObjectName("removeReference")
        remove.setText("✕")
        remove.setAutoRaise(True)
        remove.setToolTip("Remove this reference image")
        remove.clicked.connect(lambda: self.remove_requested.emit(self.uid))
        self.remove_button = remove
        self.more_button = QToolButton()
        self.more_button.setObjectName("moreButton")
        self.more_button.setText("More")
        self.more_button.setCheckable(True)
        self.more_button.setAutoRaise(True)
        self.more_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.more_button.setArrowType(Qt.ArrowType.RightArrow)
        self.more_button.setToolTip("When it acts, what the encoder sees, and where in the picture")
        self.more_button.toggled.connect(self.set_more_open)
        side.addWidget(remove, 0, Qt.AlignmentFlag.AlignRight)
        side.addStretch(1)
        side.addWidget(self.more_button)
        layout.addLayout(side)

        self.more = QWidget()
        self.more.setObjectName("referenceMore")
        self._build_more(self.more)
        self.more.hide()
        outer.addWidget(self.more)

        self._set_weight_widgets(item.weight)
        self.slider.valueChanged.connect(lambda v: self._weight_from(v / 100.0))
        self.spin.valueChanged.connect(self._weight_from)
        self.show_item(item, 0)

    # ------------------------------------------------------------------ More
    def _build_more(self, more: QWidget) -> None:
        grid = QGridLayout(more)
        grid.setContentsMargins(0, 2, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        grid.setColumnStretch(1, 1)

        steps_tip = (
            "The part of the denoising steps this picture acts in (0 = the first step, 1 = the last). "
            "Starting late (0.3) keeps the prompt's composition and takes detail from the picture; "
            "ending early (0.6) takes its layout and leaves the finish to the prompt."
        )
        self.start_spin = DoubleSpinBox()
        self.end_spin = DoubleSpinBox()
        for spin in (self.start_spin, self.end_spin):
            spin.setRange(0.0, 1.0)
            spin.setSingleStep(0.05)
            spin.setDecimals(2)
            spin.setToolTip(steps_tip)
        row = QHBoxLayout()
        row.setSpacing(6)
        row.addWidget(self.start_spin)
        row.addWidget(QLabel("to"))
        row.addWidget(self.end_spin)
        row.addWidget(QLabel("of the steps"))
        row.addStretch(1)
        grid.addWidget(_label("Acts", steps_tip), 0, 0)
        grid.addLayout(row, 0, 1)
        self.start_spin.valueChanged.connect(lambda v: self.state.update_reference(self.uid, start=v))
        self.end_spin.valueChanged.connect(lambda v: self.state.update_reference(self.uid, end=v))

        fit_tip = "What part of the picture the image encoder sees (its input is one square)."
        self.fit_box = ComboBox()
        for value, text, tip in FITS:
            self.fit_box.addItem(text, value)
            self.fit_box.setItemData(self.fit_box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.fit_box.setToolTip(fit_tip)
        self.fit_box.currentIndexChanged.connect(self._fit_chosen)
        grid.addWidget(_label("Encoder sees", fit_tip), 1, 0)
        grid.addWidget(self.fit_box, 1, 1)

        self.crop_editor = CropEditor()
        self.crop_editor.setFixedHeight(170)
        self.crop_editor.box_changed.connect(
            lambda left, top, side: self.state.update_reference(self.uid, box=(left, top, side))
        )
        self.crop_editor.hide()
        grid.addWidget(self.crop_editor, 2, 0, 1, 2)

        region_tip = REGION_TIP
        self.region_status = ElidedLabel(mode=Qt.TextElideMode.ElideRight)  # never widens the column
        self.region_status.setObjectName("hint")
        self.paint_button = QPushButton("Paint")
        self.paint_button.setToolTip("Paint this reference's region on the Regions canvas")
        self.paint_button.clicked.connect(lambda: self.paint_region_requested.emit(self.uid))
        self.load_button = QPushButton("Load…")
        self.load_button.setToolTip("Use a mask file as this reference's region (white = here)")
        self.load_button.clicked.connect(lambda: self.load_region_requested.emit(self.uid))
        self.clear_region_button = QPushButton("Clear")
        self.clear_region_button.setToolTip("Remove the region: the reference acts on the whole picture")
        self.clear_region_button.clicked.connect(lambda: self.state.update_reference(self.uid, mask_path=""))
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.paint_button)
        row.addWidget(self.load_button)
        row.addWidget(self.clear_region_button)
        row.addStretch(1)
        grid.addWidget(_label("Region", region_tip), 3, 0)
        grid.addWidget(self.region_status, 3, 1)
        grid.addLayout(row, 4, 1)

        self.save_button = QPushButton("Save to library")
        self.save_button.setToolTip(
            "Keep this picture in the reference library, with its encoder features: using it again "
            "(also after a restart) skips the image encoder"
        )
        self.save_button.clicked.connect(lambda: self.save_requested.emit(self.uid))
        grid.addWidget(self.save_button, 5, 1, Qt.AlignmentFlag.AlignLeft)

    def set_more_open(self, on: bool) -> None:
        if self.more_button.isChecked() != on:
            self.more_button.setChecked(on)
            return
        self.more_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.more.setVisible(on)
        if on and self.fit_box.currentData() == "crop" and not self.crop_editor.has_picture():
            self.picture_wanted.emit(self.uid)

    def is_more_open(self) -> bool:
        return self.more.isVisible()

    def _fit_chosen(self, _index: int) -> None:
        fit = self.fit_box.currentData()
        item = self.state.reference(self.uid)
        if item is None or fit == item.fit:
            return
        changes: dict[str, object] = {"fit": fit}
        if fit == "crop" and item.box is None and self.crop_editor.has_picture():
            changes["box"] = centre_box(self.crop_editor.picture_size())
        self.state.update_reference(self.uid, **changes)

    def show_item(self, item: ReferenceItem, index: int) -> None:
        """Bring the widgets in line with ``item`` (without emitting anything)."""
        self._set_weight_widgets(item.weight)
        self.start_spin.show_value(item.start)
        self.end_spin.show_value(item.end)
        was = self.fit_box.blockSignals(True)
        self.fit_box.setCurrentIndex(max(0, self.fit_box.findData(item.fit)))
        self.fit_box.blockSignals(was)
        crop = item.fit == "crop"
        self.crop_editor.setVisible(crop)
        if crop:
            if self.crop_editor.has_picture():
                if item.box is None:
                    # Crop chosen before the picture had arrived: start from the centre square.
                    self.state.update_reference(self.uid, box=centre_box(self.crop_editor.picture_size()))
                    return
                self.crop_editor.set_box(item.box)
            elif self.more.isVisible():
                self.picture_wanted.emit(self.uid)
        if not item.mask_path:
            region = "Everywhere"
        elif Path(item.mask_path).name.startswith("region-"):
            region = "Painted on the canvas"
        else:
            region = "From " + Path(item.mask_path).name
        self.region_status.set_full_text(region, f"{region}. {REGION_TIP}")
        self.clear_region_button.setEnabled(bool(item.mask_path))
        self.set_index(index)
        tags = []
        if item.start > 0 or item.end < 1:
            tags.append(f"steps {item.start:g}–{item.end:g}")
        if item.fit != "centre":
            tags.append(dict((v, t) for v, t, _ in FITS)[item.fit].lower())
        if item.mask_path:
            tags.append("region")
        self.tags.setText(" · ".join(tags))
        self.tags.setVisible(bool(tags))

    def set_index(self, index: int) -> None:
        colour = region_colour(index)
        self.swatch.setStyleSheet(f"background: {colour}; border-radius: 5px;")

    def set_picture(self, image: QImage) -> None:
        """The picture for the crop editor (a copy; its real size is in its "size" text)."""
        width, height = (int(v) for v in image.text("size").split(","))
        self.crop_editor.set_picture(image, (width, height))
        item = self.state.reference(self.uid)
        if item is not None:
            self.show_item(item, self._index())

    def _index(self) -> int:
        return next((i for i, r in enumerate(self.state.references) if r.uid == self.uid), 0)

    # ------------------------------------------------------------------ weight and thumbnail
    def _set_weight_widgets(self, weight: float) -> None:
        self.slider.show_value(weight * 100)
        self.spin.show_value(weight)

    def _weight_from(self, weight: float) -> None:
        self._set_weight_widgets(weight)
        self.weight_changed.emit(self.uid, float(weight))

    def set_crop(self, image: QImage) -> None:
        """Show what the encoder gets (one square, or the tiles side by side)."""
        self.encoder_image = image
        pixmap = QPixmap.fromImage(image).scaled(
            CARD_THUMB,
            CARD_THUMB,
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        self.thumb.setPixmap(pixmap)

    def has_crop(self) -> bool:
        pixmap = self.thumb.pixmap()
        return pixmap is not None and not pixmap.isNull()


def _label(text: str, tip: str) -> QLabel:
    label = QLabel(text)
    label.setToolTip(tip)
    return label


class NegativeSlot(QFrame):
    """The negative image: a small drop target with its picture, and the noise amount."""

    def __init__(self, panel: ReferencesPanel) -> None:
        super().__init__()
        self.panel = panel
        self.state = panel.state
        self.setObjectName("negativeSlot")
        self.setAcceptDrops(True)
        tip = (
            'The image prompt\'s "what not": a picture whose look the result moves away from (it '
            "takes the place of the blank picture classifier-free guidance compares with). Drop one "
            "here or choose one."
        )
        self.setToolTip(tip)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(6)
        title = QLabel("Negative image")
        title.setToolTip(tip)
        self.thumb = QLabel("none")
        self.thumb.setObjectName("referenceThumb")
        self.thumb.setFixedSize(40, 40)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setToolTip(tip)
        self.choose_button = QPushButton("Choose…")
        self.choose_button.setToolTip("Choose the negative image (or drop a picture here)")
        self.choose_button.clicked.connect(self.open_dialog)
        self.clear_button = QToolButton()
        self.clear_button.setText("✕")
        self.clear_button.setAutoRaise(True)
        self.clear_button.setToolTip("No negative image")
        self.clear_button.clicked.connect(lambda: self.state.set_negative(path=""))
        noise_tip = (
            "Noise (0–1): the negative image — or, without one, each reference itself — faded towards "
            "random noise by this much. 0 = off; 0.3–0.6 often sharpens the image prompt."
        )
        noise_label = QLabel("Noise")
        noise_label.setToolTip(noise_tip)
        self.noise = DoubleSpinBox()
        self.noise.setRange(0.0, 1.0)
        self.noise.setSingleStep(0.05)
        self.noise.setDecimals(2)
        self.noise.setToolTip(noise_tip)
        self.noise.valueChanged.connect(lambda v: self.state.set_negative(noise=v))
        row.addWidget(title)
        row.addWidget(self.thumb)
        row.addWidget(self.choose_button)
        row.addWidget(self.clear_button)
        row.addStretch(1)
        row.addWidget(noise_label)
        row.addWidget(self.noise)
        self.show_state()

    def open_dialog(self) -> None:
        path = dialogs.open_file(self, "reference", "Choose the negative image", IMAGE_FILTER)
        if path:
            self.state.set_negative(path=path)

    def show_state(self) -> None:
        self.noise.show_value(self.state.negative_noise)
        path = self.state.negative_path
        self.clear_button.setEnabled(bool(path))
        if not path:
            self.thumb.setPixmap(QPixmap())
            self.thumb.setText("none")
            return
        self.thumb.setText("…")
        self.panel.loader.load(("negative", path), lambda: _small(path, 40), "opening the negative image")

    def show_thumbnail(self, path: str, image: QImage) -> None:
        if path == self.state.negative_path:
            self.thumb.setPixmap(QPixmap.fromImage(image))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if any(url.isLocalFile() for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        local = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if local and not Path(local[0]).is_dir():
            self.state.set_negative(path=local[0])
            event.acceptProposedAction()


def _small(path: str, side: int) -> QImage:
    picture = load_image(path)
    picture.thumbnail((side, side))
    return pil_to_qimage(picture)


class LibraryList(QListWidget):
    """The saved references; dragging one out carries its file, as a file manager would."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("referenceLibrary")
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setIconSize(QSize(56, 56))
        self.setGridSize(QSize(72, 72))
        self.setFixedHeight(92)
        self.setMovement(QListWidget.Movement.Static)
        self.setDragEnabled(True)
        self.setDragDropMode(QListWidget.DragDropMode.DragOnly)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setToolTip("Saved references: double-click one, or drag it onto the references above")

    def mimeData(self, items: list[QListWidgetItem]) -> QMimeData:  # noqa: N802 - Qt override
        return file_urls_mime(item.data(Qt.ItemDataRole.UserRole) for item in items)

    def mimeTypes(self) -> list[str]:  # noqa: N802 - Qt override
        return ["text/uri-list"]


class ReferencesPanel(Section):
    """Accepts drops on the whole panel. ``message(text)`` reports files that could not be used;
    ``paint_region(uid)`` asks the window to show the Regions canvas for that reference."""

    message = Signal(str)
    paint_region = Signal(int)

    def __init__(
        self,
        state: ViewState,
        loader: ImageLoader,
        paste_dir: Callable[[], Path],
        parent: QWidget | None = None,
        *,
        library: ReferenceStore | None = None,
    ) -> None:
        super().__init__("Reference images", "The pictures the result should look like.", parent)
        self.state = state
        self.loader = loader
        self.paste_dir = paste_dir
        self.store = library
        self.cards: dict[int, ReferenceCard] = {}
        # (path, view, encoder side) → what the encoder sees, so rebuilt cards do not decode again.
        self._crops: dict[tuple[str, str, int], QImage] = {}
        self._pictures: dict[str, QImage] = {}  # path → the crop editor's copy
        self._encoder_sides: dict[str, int] = {}
        self._library_items: dict[str, QListWidgetItem] = {}
        self.setAcceptDrops(True)

        buttons = QHBoxLayout()
        self.add_button = QPushButton("Add…")
        self.add_button.setToolTip("Choose picture files to use as references (or drop them here)")
        self.add_button.clicked.connect(self.open_dialog)
        self.paste_button = QPushButton("Paste")
        self.paste_button.setToolTip("Use the picture on the clipboard as a reference (Ctrl+V)")
        self.paste_button.clicked.connect(self.paste)
        self.clear_button = QPushButton("Remove all")
        self.clear_button.setToolTip("Remove every reference image")
        self.clear_button.clicked.connect(self.state.clear_references)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.paste_button)
        buttons.addStretch(1)
        buttons.addWidget(self.clear_button)
        self.body.addLayout(buttons)

        self.drop_hint = QLabel("Drop pictures here\nor paste one with Ctrl+V")
        self.drop_hint.setObjectName("dropZone")
        self.drop_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.drop_hint.setMinimumHeight(110)
        self.drop_hint.setToolTip("Drag picture files from your file manager or browser onto this box")
        self.body.addWidget(self.drop_hint)

        self.cards_box = QVBoxLayout()
        self.cards_box.setSpacing(6)
        self.body.addLayout(self.cards_box)

        self.negative = NegativeSlot(self)
        self.body.addWidget(self.negative)

        library_row = QHBoxLayout()
        self.library_button = QToolButton()
        self.library_button.setText("Library")
        self.library_button.setCheckable(True)
        self.library_button.setAutoRaise(True)
        self.library_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.library_button.setArrowType(Qt.ArrowType.RightArrow)
        self.library_button.setToolTip(
            "Saved references: their encoder features are kept on disk, so using one costs no "
            "encoder time, also after a restart"
        )
        self.library_button.toggled.connect(self.set_library_open)
        self.library_count = QLabel()
        self.library_count.setObjectName("hint")
        library_row.addWidget(self.library_button)
        library_row.addWidget(self.library_count, 1)
        self.body.addLayout(library_row)
        self.library_list = LibraryList()
        self.library_list.itemDoubleClicked.connect(
            lambda item: self.state.add_reference(item.data(Qt.ItemDataRole.UserRole))
        )
        self.library_list.hide()
        self.body.addWidget(self.library_list)

        state.changed.connect(self._on_state)
        state.reference_changed.connect(self._on_reference_changed)
        loader.loaded.connect(self._on_loaded)
        self._rebuild()
        self.refresh_library()

    # ------------------------------------------------------------------ adding
    def add_files(self, paths: Iterable[str | Path]) -> int:
        added = 0
        for path in paths:
            path = Path(path)
            if path.is_dir():
                self.message.emit(f"'{path.name}' is a folder; drop picture files instead.")
                continue
            self.state.add_reference(path)
            added += 1
        return added

    def add_qimage(self, image: QImage) -> int:
        """A picture with no file (clipboard, browser drag) is saved first, so that the PNGs made
        from it can name it and "reuse these settings" finds it again."""
        folder = self.paste_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.message.emit(f"The pasted picture could not be saved in {folder}: {exc.strerror or exc}.")
            return 0
        path = folder / f"pasted-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}.png"
        # Quality 90 = light compression: fast enough for a big screenshot, still lossless.
        if not image.save(str(path), "PNG", 90):
            self.message.emit(f"The pasted picture could not be saved in {folder}.")
            return 0
        self.state.add_reference(path)
        return 1

    def add_from_mime(self, mime: QMimeData) -> int:
        """What a drop and a paste both do: local files first, else picture data."""
        local = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()]
        if local:
            return self.add_files(local)
        if mime.hasImage():
            image = QImage(mime.imageData())
            if not image.isNull():
                return self.add_qimage(image)
        if mime.urls():
            self.message.emit(
                "Pictures from web addresses cannot be used directly: save the picture to a file first, "
                "then drop the file."
            )
        else:
            self.message.emit("There is no picture to use: copy or drag a picture file or an image.")
        return 0

    def paste(self) -> int:
        return self.add_from_mime(QGuiApplication.clipboard().mimeData())

    def open_dialog(self) -> None:
        files = dialogs.open_files(self, "reference", "Choose reference images", IMAGE_FILTER)
        self.add_files(files)

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        mime = event.mimeData()
        if event.source() is self.library_list:
            event.acceptProposedAction()  # a saved reference dragged onto the panel
            return
        if mime.hasUrls() or mime.hasImage():
            event.acceptProposedAction()
            self.setProperty("dropping", True)
            self._restyle()

    def dragLeaveEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        self.setProperty("dropping", False)
        self._restyle()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        self.setProperty("dropping", False)
        self._restyle()
        if self.add_from_mime(event.mimeData()):
            event.acceptProposedAction()

    def _restyle(self) -> None:
        # The drop zone's look depends on a property of this panel: both need re-polishing.
        for widget in (self, self.drop_hint):
            widget.style().unpolish(widget)
            widget.style().polish(widget)

    # ------------------------------------------------------------------ cards
    def _on_state(self, name: str) -> None:
        if name == "references":
            self._rebuild()
        elif name == "negative":
            self.negative.show_state()
        elif name == "models":
            for item in self.state.references:
                self._request_view(item)

    def _encoder_side(self) -> int:
        path = self.state.models.image_encoder
        if path not in self._encoder_sides:
            self._encoder_sides[path] = encoder_side(path)
        return self._encoder_sides[path]

    def _view_key(self, item: ReferenceItem) -> tuple[str, str, int]:
        from ipa_studio.core.references import view_text

        return (item.path, view_text(item.view), self._encoder_side())

    def _request_view(self, item: ReferenceItem) -> None:
        """Show what the encoder sees of ``item``: from the cache, else computed on the loader."""
        card = self.cards.get(item.uid)
        key = self._view_key(item)
        if card is not None and key in self._crops:
            card.set_crop(self._crops[key])
            return
        view, side, path = item.view, key[2], item.path
        self.loader.load(
            ("reference", item.uid, key),
            lambda: make_encoder_view(path, view, side),
            "opening the reference image",
        )

    def _request_picture(self, uid: int) -> None:
        item = self.state.reference(uid)
        card = self.cards.get(uid)
        if item is None or card is None:
            return
        if item.path in self._pictures:
            card.set_picture(self._pictures[item.path])
            return
        path = item.path
        self.loader.load(("reference-picture", uid, path), lambda: make_editor_picture(path), "opening it")

    def _rebuild(self) -> None:
        wanted = {r.uid: r for r in self.state.references}
        for uid in list(self.cards):
            if uid not in wanted:
                card = self.cards.pop(uid)
                self.cards_box.removeWidget(card)
                card.deleteLater()
        for index, item in enumerate(self.state.references):
            card = self.cards.get(item.uid)
            if card is None:
                card = ReferenceCard(item, self.state)
                card.remove_requested.connect(self.state.remove_reference)
                card.weight_changed.connect(self.state.set_reference_weight)
                card.paint_region_requested.connect(self.paint_region)
                card.load_region_requested.connect(self.load_region_dialog)
                card.save_requested.connect(self.save_to_library)
                card.picture_wanted.connect(self._request_picture)
                self.cards[item.uid] = card
                self._request_view(item)
            card.show_item(item, index)
            self.cards_box.insertWidget(index, card)
        empty = not self.state.references
        self.drop_hint.setText(
            "Drop pictures here\nor paste one with Ctrl+V" if empty else "Drop more pictures here"
        )
        self.drop_hint.setMinimumHeight(110 if empty else 44)
        self.clear_button.setEnabled(not empty)

    def _on_reference_changed(self, uid: int) -> None:
        item = self.state.reference(uid)
        card = self.cards.get(uid)
        if item is None or card is None:
            return
        card.show_item(item, self.state.references.index(item))
        self._request_view(item)

    def _on_loaded(self, key: object, image: QImage, error: str) -> None:
        if not isinstance(key, tuple) or not key:
            return
        kind = key[0]
        if kind == "negative":
            if error:
                self.state.set_negative(path="")
                self.message.emit(error)
            else:
                self.negative.show_thumbnail(key[1], image)
            return
        if kind == "library":
            self._on_saved(key, image, error)
            return
        if kind == "library-icon":
            item = self._library_items.get(key[1])
            if item is not None and not error:
                item.setIcon(QPixmap.fromImage(image))
            return
        if kind == "reference-picture":
            _, uid, path = key
            if error:
                self.message.emit(error)
                return
            self._pictures[path] = image
            while len(self._pictures) > CACHE_ENTRIES:
                self._pictures.pop(next(iter(self._pictures)))
            card = self.cards.get(uid)
            if card is not None:
                card.set_picture(image)
            return
        if kind != "reference":
            return
        _, uid, view_key = key
        card = self.cards.get(uid)
        if error:
            # Not an image, unreadable, too large: say so and take it out before it fails a job.
            self.state.remove_reference(uid)
            self.message.emit(error)
            return
        self._crops[view_key] = image
        while len(self._crops) > CACHE_ENTRIES:  # every crop square tried is one entry
            self._crops.pop(next(iter(self._crops)))
        item = self.state.reference(uid)
        if card is not None and item is not None and self._view_key(item) == view_key:
            card.set_crop(image)  # (an answer for a view since changed again is only cached)

    # ------------------------------------------------------------------ regions
    def load_region_dialog(self, uid: int) -> None:
        title = "Open a region mask (white = this reference acts here)"
        path = dialogs.open_file(self, "mask", title, MASK_FILTER)
        if path:
            self.state.update_reference(uid, mask_path=path)

    # ------------------------------------------------------------------ library
    def set_library_open(self, on: bool) -> None:
        if self.library_button.isChecked() != on:
            self.library_button.setChecked(on)
            return
        self.library_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.library_list.setVisible(on)
        if on:
            self.refresh_library()

    def refresh_library(self) -> None:
        """List the saved references (a folder listing; the icons are made on the loader thread)."""
        entries = self.store.entries() if self.store is not None else []
        self.library_count.setText(
            f"{len(entries)} saved" if entries else "Save a reference here from its card (More)"
        )
        self.library_list.clear()
        self._library_items = {}
        for entry in entries:
            item = QListWidgetItem(entry.name[:10])
            item.setData(Qt.ItemDataRole.UserRole, str(entry.path))
            item.setToolTip(f"{entry.name} · double-click or drag it onto the references")
            self.library_list.addItem(item)
            self._library_items[entry.content] = item
            if self.library_button.isChecked():
                path = str(entry.path)
                self.loader.load(("library-icon", entry.content), lambda p=path: _small(p, 56), "opening it")

    def save_to_library(self, uid: int) -> None:
        """Copy the reference into the library (on the loader thread: it decodes and hashes it)."""
        item = self.state.reference(uid)
        if item is None or self.store is None:
            return
        store, path = self.store, item.path

        def save() -> QImage:
            entry = store.add(path)
            return _small(str(entry.path), 56)

        self.loader.load(("library", uid, path), save, "saving the reference in the library")

    def _on_saved(self, key: tuple, image: QImage, error: str) -> None:
        if error:
            self.message.emit(error)
            return
        self.refresh_library()
        self.library_count.setText(
            self.library_count.text() + f" · {Path(key[2]).name} saved: it skips the encoder from now on"
        )

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return super().sizeHint().expandedTo(QSize(340, 0))


def file_urls_mime(paths: Iterable[str | Path]) -> QMimeData:
    """The mime data a file manager drops (also used by the tests and "use as reference")."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(Path(p).resolve())) for p in paths])
    return mime
