"""Start from a picture: the mode (new picture, img2img, inpaint), the start picture and its strength,
and the inpainting options. The mask itself is painted on the Canvas, to the right."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QWidget,
)

from ipa_studio.core.errors import IPAStudioError
from ipa_studio.gui import dialogs
from ipa_studio.gui.canvas.files import IMAGE_FILTER, image_size, picture_from_mime
from ipa_studio.gui.state import LIMITS, ViewState
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.fields import DoubleSpinBox, Slider, SpinBox
from ipa_studio.gui.widgets.section import Section

MODE_LABELS: dict[str, tuple[str, str]] = {
    "txt2img": ("New picture", "Make a new picture from the reference images and the prompt"),
    "img2img": (
        "Img2img",
        "Start from a picture and change it; Strength says how much (the result keeps its size)",
    ),
    "inpaint": (
        "Inpaint",
        "Repaint only the part you paint on the Canvas; every other pixel stays exactly as it was",
    ),
}
_SHOWN = ("mode", "init_path", "strength", "only_masked", "mask_padding", "mask_blur", "width", "height")
STRENGTH_TIP = (
    "How much to change the start picture: low values keep it close (0.3 retouches), high values "
    "repaint freely (1.0 keeps only the rough layout in inpainting, nothing of it in img2img)."
)


class InitImagePanel(Section):
    """``message(text)`` reports a picture that could not be used."""

    message = Signal(str)
    show_canvas = Signal()  # "take me to the canvas": the window shows it

    def __init__(
        self, state: ViewState, paste_dir: Callable[[], Path], parent: QWidget | None = None
    ) -> None:
        super().__init__("Start from", "", parent)
        self.state = state
        self.paste_dir = paste_dir
        self._size_of: tuple[str, tuple[int, int] | None] = ("", None)

        modes = QHBoxLayout()
        modes.setSpacing(4)
        self.mode_group = QButtonGroup(self)
        self.mode_group.setExclusive(True)
        self.mode_buttons: dict[str, QPushButton] = {}
        for mode, (label, tip) in MODE_LABELS.items():
            button = QPushButton(label)
            button.setCheckable(True)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, m=mode: self._choose_mode(m))
            self.mode_group.addButton(button)
            modes.addWidget(button)
            self.mode_buttons[mode] = button
        self.body.addLayout(modes)

        self.details = QWidget()
        form = QFormLayout(self.details)
        form.setContentsMargins(0, 4, 0, 0)
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(8)
        self.body.addWidget(self.details)

        picture_row = QHBoxLayout()
        picture_row.setSpacing(4)
        self.picture_label = ElidedLabel()  # a long file name is shortened, not allowed to widen the column
        self.picture_label.setObjectName("referenceName")
        picture_row.addWidget(self.picture_label, 1)
        self.open_button = self._tool(
            picture_row, "Open…", "Choose the picture to start from", self.open_dialog
        )
        self.paste_button = self._tool(
            picture_row, "Paste", "Start from the picture on the clipboard", self.paste
        )
        self.canvas_button = self._tool(
            picture_row,
            "Canvas",
            "Show the start picture on the Canvas, to paint the mask",
            self.show_canvas.emit,
        )
        picture_label = QLabel("Picture")
        picture_label.setToolTip("The picture img2img and inpainting start from")
        form.addRow(picture_label, picture_row)

        strength_row = QHBoxLayout()
        low, high = LIMITS["strength"]
        self.strength_slider = Slider(Qt.Orientation.Horizontal)
        self.strength_slider.setRange(round(low * 100), round(high * 100))
        self.strength_slider.setPageStep(10)
        self.strength_spin = DoubleSpinBox()
        self.strength_spin.setRange(low, high)
        self.strength_spin.setSingleStep(0.05)
        self.strength_spin.setDecimals(2)
        strength_row.addWidget(self.strength_slider, 1)
        strength_row.addWidget(self.strength_spin)
        strength_label = QLabel("Strength")
        for w in (strength_label, self.strength_slider, self.strength_spin):
            w.setToolTip(STRENGTH_TIP)
        form.addRow(strength_label, strength_row)

        self.only_masked = QCheckBox("Repaint the masked area only, at full resolution")
        self.only_masked.setToolTip(
            "Cut out the painted area plus some padding, generate it at the full size from the settings "
            "below, and paste it back: small areas (a face, a hand) get much more detail."
        )
        form.addRow(self.only_masked)
        options = QHBoxLayout()
        self.padding = SpinBox()
        self.padding.setRange(*(int(v) for v in LIMITS["mask_padding"]))
        self.padding.setSuffix(" px")
        self.padding.setToolTip(
            "With 'masked area only': how much of the surroundings to include, so the new part fits in"
        )
        self.blur = SpinBox()
        self.blur.setRange(*(int(v) for v in LIMITS["mask_blur"]))
        self.blur.setSuffix(" px")
        self.blur.setToolTip(
            "How softly the repainted part blends into the picture at the edge of the mask. The blend "
            "stays inside the mask: pixels outside it are never changed."
        )
        padding_label, blur_label = QLabel("Padding"), QLabel("Edge blend")
        padding_label.setToolTip(self.padding.toolTip())
        blur_label.setToolTip(self.blur.toolTip())
        options.addWidget(padding_label)
        options.addWidget(self.padding)
        options.addSpacing(12)
        options.addWidget(blur_label)
        options.addWidget(self.blur)
        options.addStretch(1)
        self.mask_options_label = QLabel("Mask")
        self.mask_options_label.setToolTip("How the painted mask is used")
        form.addRow(self.mask_options_label, options)
        self._inpaint_rows = [self.only_masked, self.padding, self.blur, padding_label, blur_label]

        self.hint = QLabel()
        self.hint.setObjectName("hint")
        self.hint.setWordWrap(True)
        form.addRow(self.hint)

        self.strength_slider.valueChanged.connect(lambda v: self.state.set("strength", v / 100.0))
        self.strength_spin.valueChanged.connect(lambda v: self.state.set("strength", round(v, 2)))
        self.only_masked.toggled.connect(lambda on: self.state.set("only_masked", on))
        self.padding.valueChanged.connect(lambda v: self.state.set("mask_padding", v))
        self.blur.valueChanged.connect(lambda v: self.state.set("mask_blur", v))
        state.changed.connect(self._on_state)
        self._show()

    def _tool(self, row: QHBoxLayout, text: str, tip: str, slot: Callable[[], object]) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        button.clicked.connect(slot)
        row.addWidget(button)
        return button

    # ------------------------------------------------------------------ actions
    def _choose_mode(self, mode: str) -> None:
        self.state.set("mode", mode)
        if mode != "txt2img":
            self.show_canvas.emit()

    def open_dialog(self) -> None:
        path = dialogs.open_file(self, "start picture", "Choose the picture to start from", IMAGE_FILTER)
        if path:
            self.state.set("init_path", path)

    def paste(self) -> bool:
        try:
            path = picture_from_mime(QGuiApplication.clipboard().mimeData(), self.paste_dir())
        except IPAStudioError as exc:
            self.message.emit(str(exc))
            return False
        self.state.set("init_path", path)
        return True

    # ------------------------------------------------------------------ showing the state
    def _on_state(self, name: str) -> None:
        if name in (
            "mode",
            "init_path",
            "strength",
            "only_masked",
            "mask_padding",
            "mask_blur",
            "width",
            "height",
        ):
            self._show()

    def _show(self) -> None:
        s = self.state
        widgets = (self.strength_slider, self.strength_spin, self.only_masked, self.padding, self.blur)
        for w in widgets:
            w.blockSignals(True)
        for mode, button in self.mode_buttons.items():
            button.setChecked(mode == s.mode)
            # One Tab stop for the three, on the mode in use (the arrow keys move between them),
            # as for any group of choices; Qt would otherwise stop on the first one only.
            button.setFocusPolicy(Qt.FocusPolicy.StrongFocus if mode == s.mode else Qt.FocusPolicy.ClickFocus)
        self.strength_slider.show_value(s.strength * 100)
        self.strength_spin.show_value(s.strength)
        self.only_masked.setChecked(s.only_masked)
        self.padding.show_value(s.mask_padding)
        self.blur.show_value(s.mask_blur)
        for w in widgets:
            w.blockSignals(False)

        self.details.setVisible(s.mode != "txt2img")
        inpaint = s.mode == "inpaint"
        for w in self._inpaint_rows:
            w.setVisible(inpaint)
        self.mask_options_label.setVisible(inpaint)
        self.padding.setEnabled(s.only_masked)

        if self._size_of[0] != s.init_path:  # a header read, but not on every strength tick
            self._size_of = (s.init_path, image_size(s.init_path) if s.init_path else None)
        size = self._size_of[1]
        if not s.init_path:
            self.picture_label.set_full_text("None yet: open, paste\nor drop one on the Canvas", "")
        else:
            dims = f"\n{size[0]} × {size[1]} pixels" if size else ""
            self.picture_label.set_full_text(f"{Path(s.init_path).name}{dims}", s.init_path)
        if inpaint and s.only_masked:
            self.hint.setText(
                f"Paint the part to repaint on the Canvas. It is generated at {s.width} × {s.height} "
                "(the size in the settings) and pasted back into the picture."
            )
        elif inpaint:
            self.hint.setText(
                "Paint the part to repaint on the Canvas ([ ] brush size, X eraser). The result keeps "
                "the picture's size; outside the mask nothing changes."
            )
        else:
            self.hint.setText(
                "The result keeps the start picture's size; the size in the settings is not used."
            )
