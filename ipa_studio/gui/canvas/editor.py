"""The Canvas page: the start picture with the mask, its tool bar, and the link to the view state.

Like a panel, the editor talks only to the view state: it shows ``state.init_path`` (decoded on the
loader thread, with the same EXIF and colour handling the engine uses, so the mask lines up with
what the engine sees), writes a new ``init_path`` when a picture is opened, pasted or dropped, and
when Generate is pressed :meth:`commit_mask` saves the painted mask and sets ``state.mask_path``.
A ``mask_path`` set by someone else ("reuse settings") is loaded into the canvas.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication, QImage
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLayout,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.compose import fit_mask
from ipa_studio.core.errors import IPAStudioError
from ipa_studio.core.images import load_image, load_mask
from ipa_studio.gui import dialogs
from ipa_studio.gui.canvas.files import (
    IMAGE_FILTER,
    MASK_FILTER,
    picture_from_mime,
    save_mask_for_request,
)
from ipa_studio.gui.canvas.mask import MAX_BRUSH, MIN_BRUSH, MaskLayer
from ipa_studio.gui.canvas.view import MaskCanvas
from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.qimage import pil_to_qimage
from ipa_studio.gui.state import ViewState
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.fields import Slider, SpinBox
from ipa_studio.gui.widgets.flow import FlowLayout

PLACEHOLDER = (
    "Open, paste or drop a picture here to start from it,\n"
    "or send a result here with “Send to canvas”.\n\n"
    "Then paint the part to repaint. White in the mask is repainted, the rest is kept."
)
KEYS_HINT = "[ ] size · X brush/eraser · right button erases · middle button or Space drags · wheel zooms"


def _open_init(path: str) -> QImage:
    """Decode the start picture (loader thread) exactly as the engine will: upright, RGB."""
    return pil_to_qimage(load_image(path, what="init image"))


def _open_mask(path: str) -> QImage:
    """Decode a mask file (loader thread): white = repaint; an alpha channel counts if it varies."""
    mask = load_mask(path)
    return QImage(mask.tobytes(), mask.width, mask.height, mask.width, QImage.Format.Format_Grayscale8).copy()


def _qimage_pixels(image: QImage) -> np.ndarray:
    gray = image.convertToFormat(QImage.Format.Format_Grayscale8)
    stride = gray.bytesPerLine()
    view = np.frombuffer(gray.constBits(), np.uint8).reshape(gray.height(), stride)
    return view[:, : gray.width()].copy()


class CanvasEditor(QWidget):
    """``message(text, kind)`` reports problems ("error") and things worth knowing ("note");
    ``image_shown(path)`` fires once a start picture is on the canvas."""

    message = Signal(str, str)
    image_shown = Signal(str)

    def __init__(
        self,
        state: ViewState,
        loader: ImageLoader,
        paste_dir: Callable[[], Path],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("canvasEditor")
        # The active tool must read at a glance; the app's style marks checked push buttons only.
        self.setStyleSheet(
            "QToolButton:checked { background: #34507a; border: 1px solid #3d8bfd; color: white; }"
        )
        self.state = state
        self.loader = loader
        self.paste_dir = paste_dir
        self.layer = MaskLayer(parent=self)
        self.canvas = MaskCanvas(self.layer, PLACEHOLDER)
        self.canvas.tools = self
        # Drops land on the editor (not the view's scene), so any part of the page takes a picture.
        self.canvas.setAcceptDrops(False)
        self.canvas.viewport().setAcceptDrops(False)
        self.setAcceptDrops(True)

        self._shown = ""  # the init path whose picture is on the canvas
        self._token = 0  # numbers each load, so two loads of one path never share a key
        self._loading_image: str | None = None
        self._loading_mask: str | None = None
        self._mask_from_state = False
        self._committed = ""  # the mask file the state names, as this editor saved or loaded it
        self._committed_revision = -1

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(self._tool_row())
        layout.addLayout(self._command_row())
        frame = QFrame()
        frame.setObjectName("canvasFrame")
        frame_layout = QVBoxLayout(frame)
        frame_layout.setContentsMargins(0, 0, 0, 0)
        frame_layout.addWidget(self.canvas)
        layout.addWidget(frame, 1)
        self.info = ElidedLabel(
            mode=Qt.TextElideMode.ElideRight
        )  # a long file name must not widen the window
        self.info.setObjectName("caption")
        layout.addWidget(self.info)

        self.canvas.brush_changed.connect(self._show_brush)
        self.canvas.paste_requested.connect(self.paste)
        self.canvas.zoom_changed.connect(lambda _z: self._show_info())
        self.layer.history_changed.connect(self._show_history)
        self.layer.changed.connect(self._on_mask_changed)
        state.changed.connect(self._on_state)
        loader.loaded.connect(self._on_loaded)
        self._show_brush()
        self._show_history()
        self._show_mode()
        self._show_info()
        if state.init_path:
            self._show_init(state.init_path)

    # ------------------------------------------------------------------ tool bar
    def _button(self, row: QLayout, text: str, tip: str, slot: Callable[[], object]) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        # Keyboard focus stays on the canvas, so its keys keep working after a click here.
        button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        button.clicked.connect(slot)
        row.addWidget(button)
        return button

    def _tool_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(4)
        self.brush_button = self._button(
            row,
            "Brush",
            "Paint the area to repaint (B; X swaps with the eraser)",
            lambda: self.canvas.set_eraser(False),
        )
        self.eraser_button = self._button(
            row,
            "Eraser",
            "Take area out of the mask, so it is kept (E; X swaps; the right mouse button always erases)",
            lambda: self.canvas.set_eraser(True),
        )
        for b in (self.brush_button, self.eraser_button):
            b.setCheckable(True)
        row.addSpacing(10)

        size_tip = "Brush size in pixels of the picture ([ smaller, ] larger)"
        size_label = QLabel("Size")
        size_label.setToolTip(size_tip)
        self.size_slider = Slider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(int(MIN_BRUSH), 512)
        self.size_slider.setMinimumWidth(90)
        self.size_spin = SpinBox()
        self.size_spin.setRange(int(MIN_BRUSH), int(MAX_BRUSH))
        self.size_spin.setSuffix(" px")
        hard_tip = "Hardness: 100 % gives a crisp edge, lower values a soft, feathered edge"
        hard_label = QLabel("Hardness")
        hard_label.setToolTip(hard_tip)
        self.hardness_slider = Slider(Qt.Orientation.Horizontal)
        self.hardness_slider.setRange(0, 100)
        self.hardness_slider.setMinimumWidth(70)
        self.hardness_spin = SpinBox()
        self.hardness_spin.setRange(0, 100)
        self.hardness_spin.setSuffix(" %")
        for w in (self.size_slider, self.size_spin):
            w.setToolTip(size_tip)
            w.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        for w in (self.hardness_slider, self.hardness_spin):
            w.setToolTip(hard_tip)
            w.setFocusPolicy(Qt.FocusPolicy.ClickFocus)
        row.addWidget(size_label)
        row.addWidget(self.size_slider, 2)
        row.addWidget(self.size_spin)
        row.addSpacing(8)
        row.addWidget(hard_label)
        row.addWidget(self.hardness_slider, 1)
        row.addWidget(self.hardness_spin)
        self.size_slider.valueChanged.connect(self.canvas.set_brush_size)
        self.size_spin.valueChanged.connect(self.canvas.set_brush_size)
        self.hardness_slider.valueChanged.connect(lambda v: self.canvas.set_hardness(v / 100.0))
        self.hardness_spin.valueChanged.connect(lambda v: self.canvas.set_hardness(v / 100.0))
        return row

    def _command_row(self) -> FlowLayout:
        row = FlowLayout()  # wraps when the picture area is narrow, so it never widens the window
        b = self._button
        b(row, "Open…", "Choose the picture to start from (or drop one on the canvas)", self.open_dialog)
        b(row, "Paste", "Start from the picture on the clipboard", self.paste)
        row.addSpacing(10)
        self.undo_button = b(row, "Undo", "Undo the last stroke or command (Ctrl+Z)", self.layer.undo)
        self.redo_button = b(row, "Redo", "Redo what was undone (Ctrl+Shift+Z or Ctrl+Y)", self.layer.redo)
        row.addSpacing(10)
        self.invert_button = b(
            row,
            "Invert",
            "Swap the painted and unpainted areas: repaint everything except what you painted",
            self.layer.invert,
        )
        self.clear_button = b(row, "Clear", "Remove the whole mask: nothing is repainted", self.layer.clear)
        self.fill_button = b(row, "Fill", "Mask the whole picture: everything is repainted", self.layer.fill)
        row.addSpacing(10)
        b(
            row,
            "Load mask…",
            "Open a mask image: white = repaint, black = keep (strokes on a transparent layer work too)",
            self.load_mask_dialog,
        )
        b(row, "Save mask…", "Save the mask as a black-and-white PNG", self.save_mask_dialog)
        row.addSpacing(10)
        self._button(row, "Fit", "Show the whole picture (F)", self.canvas.fit)
        self._button(row, "1:1", "Show the picture at its real size (1)", self.canvas.actual_size)
        self._button(row, "−", "Zoom out (mouse wheel)", lambda: self.canvas.zoom_by(0.8))
        self._button(row, "+", "Zoom in (mouse wheel)", lambda: self.canvas.zoom_by(1.25))
        self._needs_image = [self.invert_button, self.clear_button, self.fill_button]
        return row

    def _show_brush(self) -> None:
        brush = self.canvas.brush
        self.size_slider.show_value(brush.size)
        self.size_spin.show_value(brush.size)
        self.hardness_slider.show_value(brush.hardness * 100)
        self.hardness_spin.show_value(brush.hardness * 100)
        self.brush_button.setChecked(not brush.eraser)
        self.eraser_button.setChecked(brush.eraser)
        self._show_info()

    def _show_history(self) -> None:
        self.undo_button.setEnabled(self.layer.can_undo())
        self.redo_button.setEnabled(self.layer.can_redo())

    def _show_info(self) -> None:
        if not self.canvas.has_image():
            self.info.setText(KEYS_HINT)
            return
        tool = "Eraser" if self.canvas.brush.eraser else "Brush"
        # A long file name is shortened in its middle, so the size, zoom and brush stay in sight;
        # the key hint at the end is what goes first when the line is short of room.
        name = self.info.fontMetrics().elidedText(Path(self._shown).name, Qt.TextElideMode.ElideMiddle, 260)
        self.info.set_full_text(
            f"{name} · {self.layer.width} × {self.layer.height} · "
            f"{self.canvas.zoom() * 100:.0f} % · {tool} {self.canvas.brush.size:.0f} px   —   {KEYS_HINT}",
            self._shown,
        )

    def _show_mode(self) -> None:
        # The overlay shows what the next job uses: in Img2img the mask is ignored, so it is hidden.
        self.canvas.overlay.setVisible(self.state.mode != "img2img")
        for b in self._needs_image:
            b.setEnabled(self.canvas.has_image())

    def _on_mask_changed(self, _rect: object) -> None:
        if self.layer.painting and self.state.mode != "inpaint":
            self.state.set("mode", "inpaint")  # painting a mask means "repaint this"
        if self.is_loading() and not self.layer.painting:
            return  # a picture or mask the state names is on its way; it decides what is shown
        if self._committed and self.layer.revision != self._committed_revision:
            # The canvas no longer shows the file the state names: forget it, so that a request
            # never names a stale mask and a later "reuse" of that same file loads it again.
            if self.state.mask_path == self._committed:
                self.state.set("mask_path", "")
            self._committed, self._committed_revision = "", -1

    # ------------------------------------------------------------------ start picture
    def open_dialog(self) -> None:
        path = dialogs.open_file(self, "start picture", "Choose the picture to start from", IMAGE_FILTER)
        if path:
            self.set_init(path)

    def paste(self) -> bool:
        return self.add_from_mime(QGuiApplication.clipboard().mimeData())

    def add_from_mime(self, mime: QMimeData) -> bool:
        try:
            path = picture_from_mime(mime, self.paste_dir())
        except IPAStudioError as exc:
            self.message.emit(str(exc), "error")
            return False
        self.set_init(path)
        return True

    def set_init(self, path: str | Path) -> None:
        """Start from ``path``; from a plain text-to-image mode this switches to Img2img."""
        self.state.set("init_path", str(path))
        if self.state.mode == "txt2img":
            self.state.set("mode", "img2img")

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        if self.add_from_mime(event.mimeData()):
            event.acceptProposedAction()

    # ------------------------------------------------------------------ mask files
    def load_mask_dialog(self) -> None:
        if not self.canvas.has_image():
            self.message.emit("Open the picture to start from first; then load its mask.", "error")
            return
        path = dialogs.open_file(self, "mask", "Open a mask", MASK_FILTER, Path(self._shown).parent)
        if path:
            self.load_mask(path)

    def load_mask(self, path: str | Path, *, from_state: bool = False) -> None:
        """Load a mask file into the canvas (one undo step); a mask of another size is scaled."""
        self._token += 1
        self._loading_mask = str(path)
        self._mask_from_state = from_state
        self._request(("canvas-mask", self._token, str(path)), _open_mask, "opening the mask")

    def save_mask_dialog(self) -> None:
        if not self.canvas.has_image():
            self.message.emit("There is no mask to save yet: open a picture and paint on it.", "error")
            return
        picture = Path(self._shown)
        name = picture.stem + "-mask.png"
        path = dialogs.save_file(self, "mask", "Save the mask", name, "PNG mask (*.png)", picture.parent)
        if path:
            self.save_mask(path)

    def save_mask(self, path: str | Path) -> bool:
        try:
            self.layer.save_png(path)
        except OSError as exc:
            self.message.emit(f"The mask could not be saved to {path}: {exc.strerror or exc}.", "error")
            return False
        return True

    # ------------------------------------------------------------------ the request's mask
    def is_loading(self) -> bool:
        return self._loading_image is not None or self._loading_mask is not None

    def commit_mask(self) -> None:
        """Save the painted mask for the next job and name it in ``state.mask_path`` ("" if empty).

        Raises ``IPAStudioError`` when it cannot be saved. While a picture or mask is still loading
        the state already names what will be shown, so it is left as it is.
        """
        if self.is_loading() or not self.canvas.has_image() or self._shown != self.state.init_path:
            return
        if self.layer.revision == self._committed_revision and self.state.mask_path == self._committed:
            return
        path = "" if self.layer.is_empty() else str(save_mask_for_request(self.layer, self.paste_dir()))
        self._committed, self._committed_revision = path, self.layer.revision
        self.state.set("mask_path", path)

    # ------------------------------------------------------------------ state and loading
    def _on_state(self, name: str) -> None:
        if name == "init_path":
            self._show_init(self.state.init_path)
        elif name == "mask_path":
            path = self.state.mask_path
            if path and path != self._committed:
                self.load_mask(path, from_state=True)
        elif name == "mode":
            self._show_mode()

    def _show_init(self, path: str) -> None:
        if path == self._shown and self._loading_image is None:
            return
        self._token += 1
        if not path:
            self._loading_image = None
            self._shown = ""
            self.canvas.set_image(None)
            self.layer.reset(1, 1)
            self._after_image()
            return
        self._loading_image = path
        self._request(("canvas-image", self._token, path), _open_init, "opening the start picture")

    def _request(self, key: tuple[str, int, str], open_: Callable[[str], QImage], doing: str) -> None:
        self.loader.load(key, lambda: open_(key[2]), doing)

    def _on_loaded(self, key: object, image: QImage, error: str) -> None:
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] in ("canvas-image", "canvas-mask")):
            return
        kind, _token, path = key
        if kind == "canvas-image":
            if path != self._loading_image:
                return  # superseded by a newer picture
            self._loading_image = None
            if error:
                self.message.emit(error, "error")
                if self.state.init_path == path:
                    self.state.set("init_path", "")
                return
            if (image.width(), image.height()) != self.layer.size() or not self._shown:
                self.layer.reset(image.width(), image.height())
            # Same size: the mask stays, so a result sent back here can be refined with the same mask.
            self._shown = path
            self.canvas.set_image(image)
            self._after_image()
            self.image_shown.emit(path)
        else:
            if path != self._loading_mask:
                return
            if self._loading_image is not None:
                # The picture it belongs to is still on its way: ask again once it is (same order).
                self._token += 1
                self._request(("canvas-mask", self._token, path), _open_mask, "opening the mask")
                return
            self._loading_mask = None
            self._apply_mask(path, image, error)

    def _apply_mask(self, path: str, image: QImage, error: str) -> None:
        if error or not self.canvas.has_image():
            self.message.emit(error or "Open the picture to start from first; then load its mask.", "error")
            return
        pixels = _qimage_pixels(image)
        if pixels.shape != (self.layer.height, self.layer.width):
            try:
                fitted, notice = fit_mask(Image.fromarray(pixels, "L"), self.layer.size())
            except IPAStudioError as exc:
                self.message.emit(str(exc), "error")
                return
            pixels = np.asarray(fitted, np.uint8)
            if notice:
                self.message.emit(notice, "note")
        self.layer.set_pixels(pixels)
        if self._mask_from_state:
            self._committed, self._committed_revision = path, self.layer.revision

    def _after_image(self) -> None:
        self._show_mode()
        self._show_info()
