"""Reference images: drop, paste or open pictures; a weight each; the square the model will see."""

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
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.images import encoder_crop, load_image
from ipa_studio.gui import dialogs
from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.qimage import pil_to_qimage
from ipa_studio.gui.state import LIMITS, ReferenceItem, ViewState
from ipa_studio.gui.widgets.fields import DoubleSpinBox, Slider
from ipa_studio.gui.widgets.section import Section

CARD_THUMB = 96
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)"
CROP_TIP = (
    "This square is what the model sees of the picture: it is scaled so its short side is 224 "
    "pixels and the centre is cut out. Anything outside the square has no effect. To use another "
    "part, crop the picture in an image editor first."
)


def make_encoder_crop(path: str) -> QImage:
    """The 224×224 encoder input of ``path`` as a QImage (runs on the loader thread)."""
    return pil_to_qimage(encoder_crop(load_image(path)))


class ReferenceCard(QFrame):
    remove_requested = Signal(int)
    weight_changed = Signal(int, float)

    def __init__(self, item: ReferenceItem, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.uid = item.uid
        self.path = item.path
        self.setObjectName("referenceCard")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(10)

        self.thumb = QLabel("Loading…")
        self.thumb.setObjectName("referenceThumb")
        self.thumb.setFixedSize(CARD_THUMB, CARD_THUMB)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setToolTip(CROP_TIP)
        layout.addWidget(self.thumb)

        column = QVBoxLayout()
        column.setSpacing(4)
        name = QLabel(Path(item.path).name)
        name.setObjectName("referenceName")
        name.setToolTip(item.path)
        name.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        seen = QLabel("← the part the model sees")
        seen.setObjectName("hint")
        seen.setToolTip(CROP_TIP)
        column.addWidget(name)
        column.addWidget(seen)
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

        remove = QToolButton()
        remove.setObjectName("removeReference")
        remove.setText("✕")
        remove.setAutoRaise(True)
        remove.setToolTip("Remove this reference image")
        remove.clicked.connect(lambda: self.remove_requested.emit(self.uid))
        layout.addWidget(remove, 0, Qt.AlignmentFlag.AlignTop)
        self.remove_button = remove

        self._set_weight_widgets(item.weight)
        self.slider.valueChanged.connect(lambda v: self._weight_from(v / 100.0))
        self.spin.valueChanged.connect(self._weight_from)

    def _set_weight_widgets(self, weight: float) -> None:
        self.slider.show_value(weight * 100)
        self.spin.show_value(weight)

    def _weight_from(self, weight: float) -> None:
        self._set_weight_widgets(weight)
        self.weight_changed.emit(self.uid, float(weight))

    def set_crop(self, image: QImage) -> None:
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


class ReferencesPanel(Section):
    """Accepts drops on the whole panel. ``message(text)`` reports files that could not be used."""

    message = Signal(str)

    def __init__(
        self,
        state: ViewState,
        loader: ImageLoader,
        paste_dir: Callable[[], Path],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Reference images", "The pictures the result should look like.", parent)
        self.state = state
        self.loader = loader
        self.paste_dir = paste_dir
        self.cards: dict[int, ReferenceCard] = {}
        self._crops: dict[str, QImage] = {}  # path → crop, so rebuilt cards do not decode again
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

        state.changed.connect(self._on_state)
        loader.loaded.connect(self._on_loaded)
        self._rebuild()

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
                card = ReferenceCard(item)
                card.remove_requested.connect(self.state.remove_reference)
                card.weight_changed.connect(self.state.set_reference_weight)
                self.cards[item.uid] = card
                if item.path in self._crops:
                    card.set_crop(self._crops[item.path])
                else:
                    self.loader.load(
                        ("reference", item.uid, item.path),
                        lambda p=item.path: make_encoder_crop(p),
                        "opening the reference image",
                    )
            self.cards_box.insertWidget(index, card)
        empty = not self.state.references
        self.drop_hint.setText(
            "Drop pictures here\nor paste one with Ctrl+V" if empty else "Drop more pictures here"
        )
        self.drop_hint.setMinimumHeight(110 if empty else 44)
        self.clear_button.setEnabled(not empty)

    def _on_loaded(self, key: object, image: QImage, error: str) -> None:
        if not (isinstance(key, tuple) and key[0] == "reference"):
            return
        _, uid, path = key
        card = self.cards.get(uid)
        if error:
            # Not an image, unreadable, too large: say so and take it out before it fails a job.
            self.state.remove_reference(uid)
            self.message.emit(error)
            return
        self._crops[path] = image
        if card is not None:
            card.set_crop(image)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return super().sizeHint().expandedTo(QSize(340, 0))


def file_urls_mime(paths: Iterable[str | Path]) -> QMimeData:
    """The mime data a file manager drops (also used by the tests and "use as reference")."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(Path(p).resolve())) for p in paths])
    return mime
