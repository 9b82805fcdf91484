"""The Regions page: paint where each reference acts, every region tinted in its reference's colour.

It reuses the inpainting canvas (``MaskCanvas``, ``MaskLayer``, ``MaskOverlayItem``): one mask layer
per reference, one overlay per layer in the colour of the reference's card, and the canvas paints
into the layer of the reference chosen above it. Under the regions lies the start picture in
Img2img and Inpaint (the regions are in its pixels there), otherwise a neutral sheet of the size
being generated.

Like a panel it talks only to the view state: when a stroke or command ends, the layer is saved as
a PNG named after its content (``region-<hash>.png``, so unchanged regions write nothing) and the
reference's ``mask_path`` names it; an empty layer clears it. A ``mask_path`` set elsewhere (Load…
on a card, Reuse settings) is loaded into that reference's layer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QImage, QShowEvent
from PySide6.QtWidgets import QLabel, QToolButton, QVBoxLayout, QWidget

from ipa_studio.core.errors import IPAStudioError
from ipa_studio.core.images import load_image, load_mask
from ipa_studio.gui.canvas.mask import MaskLayer, write_png_atomic
from ipa_studio.gui.canvas.view import MaskCanvas, MaskOverlayItem
from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.panels.references import region_colour
from ipa_studio.gui.qimage import pil_to_qimage
from ipa_studio.gui.state import ViewState
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.fields import ComboBox, Slider, SpinBox
from ipa_studio.gui.widgets.flow import FlowLayout

REGION_OPACITY = 0.5
PLACEHOLDER = "Add reference images first; then paint here where each of them should act."
HINT = (
    "Paint where the chosen reference acts (white = here); unpainted references act everywhere. "
    "[ ] size · X brush/eraser · right button erases · wheel zooms"
)


def _sheet(width: int, height: int) -> QImage:
    """A neutral background of the picture's size: a soft checker, so the tints read clearly."""
    cell = max(8, min(width, height) // 16)
    # Broadcast rows against columns: one byte per pixel, never a full coordinate grid.
    checker = ((np.arange(height)[:, None] // cell + np.arange(width)[None, :] // cell) % 2).astype(bool)
    grey = np.where(checker, np.uint8(74), np.uint8(62))
    return pil_to_qimage(Image.fromarray(grey, "L").convert("RGB"))


def _open_background(path: str, size: tuple[int, int]) -> QImage:
    """The start picture (loader thread) at the size its regions are painted at."""
    picture = load_image(path, what="init image")
    if picture.size != size:
        picture = picture.resize(size, Image.Resampling.LANCZOS)
    return pil_to_qimage(picture)


def _open_region(path: str) -> QImage:
    mask = load_mask(path, what="the region mask")
    return QImage(mask.tobytes(), mask.width, mask.height, mask.width, QImage.Format.Format_Grayscale8).copy()


def _pixels(image: QImage) -> np.ndarray:
    gray = image.convertToFormat(QImage.Format.Format_Grayscale8)
    view = np.frombuffer(gray.constBits(), np.uint8).reshape(gray.height(), gray.bytesPerLine())
    return view[:, : gray.width()].copy()


def save_region(layer: MaskLayer, folder: Path) -> Path:
    """The layer as ``region-<hash>.png`` in ``folder`` (an existing equal file is reused)."""
    digest = hashlib.sha256(f"{layer.width}x{layer.height}\0".encode())
    digest.update(layer.pixels().tobytes())
    path = folder / f"region-{digest.hexdigest()[:16]}.png"
    if path.is_file():
        return path
    try:
        return write_png_atomic(layer.to_pil(), path)
    except OSError as exc:
        raise IPAStudioError(f"The region could not be saved in {folder}: {exc.strerror or exc}.") from exc


class RegionEditor(QWidget):
    """``message(text, kind)`` reports problems ("error") and notes ("note")."""

    message = Signal(str, str)

    def __init__(
        self,
        state: ViewState,
        loader: ImageLoader,
        masks_dir: Callable[[], Path],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("regionEditor")
        self.setStyleSheet(
            "QToolButton:checked { background: #34507a; border: 1px solid #3d8bfd; color: white; }"
        )
        self.state = state
        self.loader = loader
        self.masks_dir = masks_dir
        self.layers: dict[int, MaskLayer] = {}
        self.overlays: dict[int, MaskOverlayItem] = {}
        self._committed: dict[int, tuple[str, int]] = {}  # uid → (mask_path, layer revision) saved or loaded
        self._loading: dict[int, str] = {}  # uid → the mask file on its way from the loader
        self._size = (0, 0)
        self._background_key: tuple = ()
        self._background_shown: tuple = ()
        self._token = 0
        self.selected: int | None = None
        self._spare = MaskLayer(parent=self)  # painted when there is no reference (nothing is saved)
        self.canvas = MaskCanvas(self._spare, PLACEHOLDER)
        self.canvas.overlay.hide()  # the regions have overlays of their own
        self.canvas.tools = self

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(self._tool_row())
        layout.addWidget(self.canvas, 1)
        self.info = ElidedLabel(mode=Qt.TextElideMode.ElideRight)
        self.info.setObjectName("caption")
        self.info.set_full_text(HINT, HINT)
        layout.addWidget(self.info)

        self.canvas.brush_changed.connect(self._show_brush)
        state.changed.connect(self._on_state)
        state.reference_changed.connect(self._on_reference_changed)
        loader.loaded.connect(self._on_loaded)
        self._show_brush()
        self._sync_references()

    # ------------------------------------------------------------------ tool bar
    def _button(self, row: object, text: str, tip: str, slot: Callable[[], object]) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # the canvas keeps the keyboard
        button.clicked.connect(slot)
        row.addWidget(button)  # type: ignore[attr-defined]
        return button

    def _tool_row(self) -> FlowLayout:
        row = FlowLayout()
        label = QLabel("Region of")
        self.reference_box = ComboBox()
        self.reference_box.setMinimumWidth(150)
        self.reference_box.setToolTip("The reference whose region the brush paints")
        self.reference_box.currentIndexChanged.connect(self._chosen)
        row.addWidget(label)
        row.addWidget(self.reference_box)
        row.addSpacing(10)
        self.brush_button = self._button(
            row, "Brush", "Paint the region (B)", lambda: self.canvas.set_eraser(False)
        )
        self.eraser_button = self._button(
            row,
            "Eraser",
            "Take area out of the region (E; the right button erases)",
            lambda: self.canvas.set_eraser(True),
        )
        for b in (self.brush_button, self.eraser_button):
            b.setCheckable(True)
        size_tip = "Brush size in pixels of the picture ([ smaller, ] larger)"
        size_label = QLabel("Size")
        size_label.setToolTip(size_tip)
        self.size_slider = Slider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(1, 512)
        self.size_slider.setFixedWidth(90)
        self.size_spin = SpinBox()
        self.size_spin.setRange(1, 1024)
        self.size_spin.setSuffix(" px")
        for w in (self.size_slider, self.size_spin):
            w.setToolTip(size_tip)
            w.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        self.size_slider.valueChanged.connect(self.canvas.set_brush_size)
        self.size_spin.valueChanged.connect(self.canvas.set_brush_size)
        row.addWidget(size_label)
        row.addWidget(self.size_slider)
        row.addWidget(self.size_spin)
        row.addSpacing(10)
        self.undo_button = self._button(
            row, "Undo", "Undo the last stroke (Ctrl+Z)", lambda: self._layer_do("undo")
        )
        self.fill_button = self._button(
            row, "Fill", "The reference acts on the whole picture", lambda: self._layer_do("fill")
        )
        self.clear_button = self._button(
            row, "Clear", "Remove this region: the reference acts everywhere", lambda: self._layer_do("clear")
        )
        self.invert_button = self._button(
            row, "Invert", "Swap the painted and unpainted areas", lambda: self._layer_do("invert")
        )
        return row

    def _show_brush(self) -> None:
        brush = self.canvas.brush
        self.size_slider.show_value(brush.size)
        self.size_spin.show_value(brush.size)
        self.brush_button.setChecked(not brush.eraser)
        self.eraser_button.setChecked(brush.eraser)

    def _layer_do(self, what: str) -> None:
        layer = self.layers.get(self.selected) if self.selected is not None else None
        if layer is not None and self.canvas.has_image():
            getattr(layer, what)()

    # ------------------------------------------------------------------ references
    def select(self, uid: int) -> None:
        """Paint the region of reference ``uid`` from now on."""
        index = self.reference_box.findData(uid)
        if index >= 0:
            self.reference_box.setCurrentIndex(index)
            self._chosen(index)

    def _chosen(self, index: int) -> None:
        uid = self.reference_box.itemData(index)
        self.selected = uid if uid in self.layers else None
        layer = self.layers.get(uid) if uid is not None else None
        self.canvas.layer = layer if layer is not None else self._spare
        for other, overlay in self.overlays.items():
            # The region being painted lies on top, the others under it.
            overlay.setZValue(1.5 if other == uid else 1.0)

    def _sync_references(self) -> None:
        """Layers and overlays for exactly the references there are, in their colours."""
        references = self.state.references
        wanted = {r.uid for r in references}
        for uid in list(self.layers):
            if uid not in wanted:
                self.canvas.scene().removeItem(self.overlays.pop(uid))
                self.layers.pop(uid).deleteLater()
                self._committed.pop(uid, None)
                self._loading.pop(uid, None)
        for index, ref in enumerate(references):
            if ref.uid not in self.layers:
                layer = MaskLayer(*self._size, parent=self)
                layer.history_changed.connect(lambda uid=ref.uid: self._commit(uid))
                self.layers[ref.uid] = layer
                self._committed[ref.uid] = ("", layer.revision)
                if ref.mask_path:
                    self._load(ref.uid, ref.mask_path)
            colour = QColor(region_colour(index))
            old = self.overlays.pop(ref.uid, None)
            if old is not None:
                self.canvas.scene().removeItem(old)
            overlay = MaskOverlayItem(self.layers[ref.uid], colour, REGION_OPACITY)
            overlay.setZValue(1.0)
            self.canvas.scene().addItem(overlay)
            self.overlays[ref.uid] = overlay
        was = self.reference_box.blockSignals(True)
        current = self.reference_box.currentData()
        self.reference_box.clear()
        for index, ref in enumerate(references):
            self.reference_box.addItem(f"{index + 1}. {Path(ref.path).name}", ref.uid)
            self.reference_box.setItemData(
                index, QColor(region_colour(index)), Qt.ItemDataRole.DecorationRole
            )
        found = self.reference_box.findData(current)
        self.reference_box.setCurrentIndex(found if found >= 0 else (0 if references else -1))
        self.reference_box.blockSignals(was)
        self._chosen(self.reference_box.currentIndex())
        self._update_background()

    def _on_reference_changed(self, uid: int) -> None:
        ref = self.state.reference(uid)
        if ref is None or uid not in self.layers:
            return
        if ref.mask_path == self._committed.get(uid, ("", 0))[0] and uid not in self._loading:
            return
        if not ref.mask_path:
            self._loading.pop(uid, None)
            layer = self.layers[uid]
            if not layer.is_empty():
                layer.clear()  # "Clear" on the card: one undo step here
            self._committed[uid] = ("", layer.revision)
        else:
            self._load(uid, ref.mask_path)

    def _load(self, uid: int, path: str) -> None:
        self._token += 1
        self._loading[uid] = path
        self.loader.load(
            ("region", uid, path, self._token), lambda: _open_region(path), "opening the region mask"
        )

    # ------------------------------------------------------------------ size and background
    def region_size(self) -> tuple[int, int]:
        """The size regions are painted at: the start picture's in Img2img / Inpaint, else the
        size being generated (what the engine scales them from)."""
        if self.state.mode != "txt2img" and self.state.init_path:
            from ipa_studio.gui.canvas.files import image_size

            size = image_size(self.state.init_path)
            if size is not None:
                return size
        return (self.state.width, self.state.height)

    def _update_background(self) -> None:
        """Regions follow the picture's size at once; what lies under them is drawn only while the
        page is shown (a start picture is decoded on the loader thread, then)."""
        size = self.region_size()
        init = self.state.init_path if self.state.mode != "txt2img" else ""
        key = (size, init, bool(self.state.references))
        if key == self._background_key:
            return
        self._background_key = key
        if size != self._size:
            self._resize_layers(size)
        self._background_shown = ()
        if self.isVisible():
            self._show_background()

    def _show_background(self) -> None:
        key = self._background_key
        if not key or key == self._background_shown:
            return
        self._background_shown = key
        size, init, any_reference = key
        if not any_reference:
            self.canvas.set_image(None)
            return
        if init:
            self._token += 1
            self.loader.load(
                ("region-background", self._token, key),
                lambda: _open_background(init, size),
                "opening the start picture",
            )
        self.canvas.set_image(_sheet(*size))  # at once; the start picture replaces it when it arrives

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._show_background()

    def _resize_layers(self, size: tuple[int, int]) -> None:
        """Regions follow a new picture size (scaled), so what was left stays left."""
        old, self._size = self._size, size
        for uid, layer in self.layers.items():
            pixels = layer.array() if old != (0, 0) and not layer.is_empty() else None
            layer.blockSignals(True)
            layer.reset(*size)
            layer.blockSignals(False)
            if pixels is not None:
                scaled = Image.fromarray(pixels, "L").resize(size, Image.Resampling.BILINEAR)
                layer.set_pixels(np.asarray(scaled, np.uint8))  # saves the scaled region (history_changed)
            overlay = self.overlays.get(uid)
            if overlay is not None:
                overlay.refresh(layer.rect())

    def _on_state(self, name: str) -> None:
        if name == "references":
            self._sync_references()
        elif name in ("width", "height", "mode", "init_path"):
            self._update_background()

    # ------------------------------------------------------------------ loading and saving
    def _on_loaded(self, key: object, image: QImage, error: str) -> None:
        if not (isinstance(key, tuple) and key and key[0] in ("region", "region-background")):
            return
        if key[0] == "region-background":
            if key[2] == self._background_key and not error:
                self.canvas.set_image(image)
            return
        _, uid, path, _token = key
        if self._loading.get(uid) != path or uid not in self.layers:
            return  # superseded, or the reference was removed
        del self._loading[uid]
        if error:
            self.message.emit(error, "error")
            return
        layer = self.layers[uid]
        pixels = _pixels(image)
        if pixels.shape != (layer.height, layer.width):
            pixels = np.asarray(Image.fromarray(pixels, "L").resize(layer.size(), Image.Resampling.BILINEAR))
        self._committed[uid] = (path, layer.revision + 1)  # this load is not a new region to save
        layer.set_pixels(pixels)
        self._committed[uid] = (path, layer.revision)

    def _commit(self, uid: int) -> None:
        """A stroke or command ended on a layer: its reference names the saved region (or none)."""
        layer = self.layers.get(uid)
        if layer is None or layer.painting:
            return
        path, revision = self._committed.get(uid, ("", -1))
        if layer.revision == revision:
            return  # what the state already names (a load, or a size change that saved it)
        if layer.is_empty():
            new = ""
        else:
            try:
                new = str(save_region(layer, self.masks_dir()))
            except IPAStudioError as exc:
                self.message.emit(str(exc), "error")
                return
        self._committed[uid] = (new, layer.revision)
        self.state.update_reference(uid, mask_path=new)
