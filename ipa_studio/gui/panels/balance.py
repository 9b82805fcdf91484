"""λ: how much the result follows the reference images versus the text prompt."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSlider, QWidget

from ipa_studio.gui.state import LIMITS, PRESETS, ViewState
from ipa_studio.gui.widgets.fields import DoubleSpinBox, Slider
from ipa_studio.gui.widgets.section import Section

PRESET_LABELS = {
    "image": (
        "Image only",
        "λ 1.0 and no prompt: variations of the reference images (the prompt is "
        "cleared; Ctrl+Z in the prompt brings it back)",
    ),
    "balanced": ("Balanced", "λ 0.6: the references and the prompt both count"),
    "text": ("Text-led", "λ 0.3: the prompt leads, the references add style and colour"),
}


class BalancePanel(Section):
    def __init__(self, state: ViewState, parent: QWidget | None = None) -> None:
        super().__init__("Image ↔ text balance (λ)", "", parent)
        self.state = state
        tip = "λ: 0 follows only the text prompt, 1 follows the reference images. 0.6 is a good start."

        row = QHBoxLayout()
        text_label = QLabel("Text")
        image_label = QLabel("Image")
        self.slider = Slider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setPageStep(10)
        self.slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.slider.setTickInterval(10)
        self.spin = DoubleSpinBox()
        self.spin.setRange(*LIMITS["scale"])
        self.spin.setSingleStep(0.05)
        self.spin.setDecimals(2)
        for w in (text_label, image_label, self.slider, self.spin):
            w.setToolTip(tip)
        row.addWidget(text_label)
        row.addWidget(self.slider, 1)
        row.addWidget(image_label)
        row.addWidget(self.spin)
        self.body.addLayout(row)

        presets = QHBoxLayout()
        self.preset_buttons: dict[str, QPushButton] = {}
        for name in PRESETS:
            label, preset_tip = PRESET_LABELS[name]
            button = QPushButton(label)
            button.setCheckable(True)
            button.setToolTip(preset_tip)
            button.clicked.connect(lambda _=False, n=name: self.state.apply_preset(n))
            presets.addWidget(button)
            self.preset_buttons[name] = button
        self.body.addLayout(presets)

        self.blocks_note = QLabel()
        self.blocks_note.setObjectName("hint")
        self.blocks_note.setWordWrap(True)
        self.blocks_note.hide()
        self.body.addWidget(self.blocks_note)

        self.slider.valueChanged.connect(lambda v: self.state.set("scale", v / 100.0))
        self.spin.valueChanged.connect(lambda v: self.state.set("scale", round(v, 2)))
        state.changed.connect(self._on_state)
        self._show()

    def _on_state(self, name: str) -> None:
        if name == "scale":
            self._show()

    def _show(self) -> None:
        scale = self.state.scale
        self.slider.show_value(scale * 100)
        self.spin.show_value(scale)
        for name, button in self.preset_buttons.items():
            button.setChecked(self.state.scale_blocks is None and abs(PRESETS[name][0] - scale) < 1e-6)
        blocks = self.state.scale_blocks
        if blocks is None:
            self.blocks_note.hide()
        else:
            parts = ", ".join(f"{k} {v:g}" for k, v in blocks.items())
            self.blocks_note.setText(
                f"λ per block from the reused image: {parts}. Moving the slider replaces it."
            )
            self.blocks_note.show()
