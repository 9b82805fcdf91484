"""λ: how much the result follows the reference images versus the text prompt, and where.

The slider sets λ; the block map below it sets which blocks of the UNet carry the references and
how strongly (a weight per layer that the slider scales). Named presets (Style, Composition …) come
from ``core.presets``; people's own are saved in the same file the command line uses.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QSlider, QWidget

from ipa_studio.core.errors import IPAStudioError
from ipa_studio.core.presets import (
    BlockPreset,
    compact_weights,
    delete_preset,
    load_presets,
    rename_preset,
    save_preset,
)
from ipa_studio.gui.state import LIMITS, PRESETS, ViewState
from ipa_studio.gui.widgets.block_map import BlockMap
from ipa_studio.gui.widgets.fields import ComboBox, DoubleSpinBox, Slider
from ipa_studio.gui.widgets.section import Section

CUSTOM = "Custom"

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
    message = Signal(str)  # a problem, for the window's banner

    def __init__(
        self, state: ViewState, presets_path: Path | None = None, parent: QWidget | None = None
    ) -> None:
        super().__init__("Image ↔ text balance (λ)", "", parent)
        self.state = state
        self.presets_path = presets_path
        state.presets_path = presets_path
        self.presets: list[BlockPreset] = load_presets(presets_path)
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

        self._build_blocks()

        self.slider.valueChanged.connect(lambda v: self.state.set("scale", v / 100.0))
        self.spin.valueChanged.connect(lambda v: self.state.set("scale", round(v, 2)))
        state.changed.connect(self._on_state)
        self._show()
        self._show_blocks()

    # ------------------------------------------------------------------ the block map
    def _build_blocks(self) -> None:
        row = QHBoxLayout()
        label = QLabel("Blocks")
        label.setObjectName("fieldLabel")
        self.preset_box = ComboBox()
        self.preset_box.setToolTip(
            "Which blocks of the model follow the references. Style: colours and texture, the prompt "
            "keeps the layout. Composition: the layout, the prompt keeps the style. Everything: the "
            "paper's IP-Adapter."
        )
        label.setToolTip(self.preset_box.toolTip())
        row.addWidget(label)
        row.addWidget(self.preset_box, 1)
        self.body.addLayout(row)

        self.block_map = BlockMap()
        self.block_map.setToolTip("")  # each bar has its own tooltip
        self.body.addWidget(self.block_map)

        edit = QHBoxLayout()
        self.selection_label = QLabel()
        self.selection_label.setObjectName("fieldLabel")
        self.weight = DoubleSpinBox()
        self.weight.setRange(*LIMITS["block_weight"])
        self.weight.setSingleStep(0.05)
        self.weight.setDecimals(2)
        self.weight.setPrefix("× ")
        self.weight.setToolTip(
            "The weight of the selected layers: 1 gives them the slider's λ, 0 switches the reference "
            "off there, up to 2 doubles it."
        )
        self.effective = QLabel()
        self.effective.setObjectName("hint")
        edit.addWidget(self.selection_label, 1)
        edit.addWidget(self.weight)
        edit.addWidget(self.effective)
        self.body.addLayout(edit)

        self.preset_note = QLabel()
        self.preset_note.setObjectName("hint")
        self.preset_note.setWordWrap(True)
        self.body.addWidget(self.preset_note)

        mine = QHBoxLayout()
        self.preset_name = QLineEdit()
        self.preset_name.setPlaceholderText("Name for your preset")
        self.preset_name.setToolTip("Type a name, then Save keeps this block map as a preset of yours")
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Save the block map as a preset of yours under the name typed")
        self.rename_button = QPushButton("Rename")
        self.rename_button.setToolTip("Give the chosen preset of yours the name typed")
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the chosen preset of yours (built-in presets stay)")
        mine.addWidget(self.preset_name, 1)
        for b in (self.save_button, self.rename_button, self.delete_button):
            mine.addWidget(b)
        self.body.addLayout(mine)

        self._fill_presets()
        self.preset_box.activated.connect(self._preset_chosen)
        self.block_map.edited.connect(self._map_edited)
        self.block_map.selection_changed.connect(lambda _names: self._show_blocks())
        self.weight.valueChanged.connect(
            lambda v: self._map_edited(list(self.block_map.selected), round(v, 4))
        )
        # A typed value that equals the one shown emits no valueChanged; on a mixed selection it
        # still means "all of them at this weight".
        self._weight_typed = False
        self.weight.lineEdit().textEdited.connect(lambda _t: setattr(self, "_weight_typed", True))
        self.weight.editingFinished.connect(self._weight_committed)
        self.save_button.clicked.connect(self.save_current)
        self.preset_name.returnPressed.connect(self.save_current)
        self.rename_button.clicked.connect(self.rename_current)
        self.delete_button.clicked.connect(self.delete_current)

    def _fill_presets(self) -> None:
        box = self.preset_box
        box.blockSignals(True)
        box.clear()
        for preset in self.presets:
            box.addItem(preset.name if preset.builtin else f"{preset.name} (yours)", preset.name)
            tip = preset.description or "A preset of yours"
            box.setItemData(box.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        box.blockSignals(False)

    def _preset(self, name: str) -> BlockPreset | None:
        return next((p for p in self.presets if p.name == name), None)

    def _preset_chosen(self, index: int) -> None:
        preset = self._preset(self.preset_box.itemData(index) or "")
        if preset is not None:
            self.state.choose_block_preset(preset)

    def _weight_committed(self) -> None:
        if self._weight_typed:
            self._weight_typed = False
            self._map_edited(list(self.block_map.selected), round(self.weight.value(), 4))

    def _map_edited(self, names: list[str], weight: float) -> None:
        self.state.set_layer_weights(names, weight, self.presets)

    def show_preset(self, name: str) -> None:
        """Choose the preset ``name`` as a person does with the list (for the window and scripts)."""
        preset = self._preset(name)
        if preset is None:
            raise KeyError(name)
        self.state.choose_block_preset(preset)

    def save_current(self) -> None:
        name = self.preset_name.text().strip()
        if not name:
            self.message.emit("Type a name for the preset first, then press Save.")
            return
        weights = compact_weights(self.state.layer_values())
        try:
            saved = save_preset(BlockPreset(name, weights), self.presets_path)
        except IPAStudioError as exc:
            self.message.emit(str(exc))
            return
        self._reload(saved.name, f"Saved as '{saved.name}'.")

    def rename_current(self) -> None:
        old = self.state.block_preset
        preset = self._preset(old)
        if preset is None or preset.builtin:
            self.message.emit("Choose a preset of yours in the list to rename it (built-in ones stay).")
            return
        try:
            renamed = rename_preset(old, self.preset_name.text(), self.presets_path)
        except IPAStudioError as exc:
            self.message.emit(str(exc))
            return
        self._reload(renamed.name, f"'{old}' is now called '{renamed.name}'.")

    def delete_current(self) -> None:
        name = self.state.block_preset
        preset = self._preset(name)
        if preset is None or preset.builtin:
            self.message.emit("Choose a preset of yours in the list to delete it (built-in ones stay).")
            return
        try:
            delete_preset(name, self.presets_path)
        except IPAStudioError as exc:
            self.message.emit(str(exc))
            return
        # The map stays as it was (now a custom one), so nothing on screen is lost with the name.
        self.presets = load_presets(self.presets_path)
        self._fill_presets()
        self.state.set_layer_weights([], 0.0, self.presets)  # keeps the values, drops the name
        self._show_blocks(f"'{name}' was deleted; the map stays as it was.")

    def _reload(self, chosen: str, note: str) -> None:
        self.presets = load_presets(self.presets_path)
        self._fill_presets()
        preset = self._preset(chosen)
        if preset is not None:
            self.state.choose_block_preset(preset)
        self.preset_name.clear()
        self._show_blocks(note)

    def _show_blocks(self, note: str = "") -> None:
        s = self.state
        values = s.layer_values()
        self.block_map.set_values(values, s.scale)
        box = self.preset_box
        box.blockSignals(True)
        custom = box.findData(CUSTOM)
        # A name no preset has any more (deleted elsewhere, or remembered from last time) is custom.
        if s.block_preset and box.findData(s.block_preset) >= 0:
            if custom >= 0:
                box.removeItem(custom)
            box.setCurrentIndex(max(0, box.findData(s.block_preset)))
        else:
            if custom < 0:
                box.addItem("Custom (edited)", CUSTOM)
                box.setItemData(box.count() - 1, "The map as you edited it", Qt.ItemDataRole.ToolTipRole)
            box.setCurrentIndex(box.findData(CUSTOM))
        box.blockSignals(False)
        chosen = [i for i, layer in enumerate(self.block_map.layers) if layer.name in self.block_map.selected]
        shared = {values[i] for i in chosen}
        self.selection_label.setText(self.block_map.selection_title())
        # A mixed selection shows its strongest layer; a value typed then goes to all of them.
        self.weight.show_value(max(values[i] for i in chosen) if chosen else 1.0)
        self.effective.setText(
            f"λ {values[chosen[0]] * s.scale:.2f}" if len(shared) == 1 else "mixed: sets all"
        )
        preset = self._preset(s.block_preset)
        mine = preset is not None and not preset.builtin
        self.rename_button.setEnabled(mine)
        self.delete_button.setEnabled(mine)
        if note:
            self.preset_note.setText(note)
        elif preset is not None:
            self.preset_note.setText(preset.description or "A preset of yours.")
        else:
            self.preset_note.setText("Your own map: save it under a name to use it again.")

    def _on_state(self, name: str) -> None:
        if name == "scale":
            self._show()
            self._show_blocks()
        elif name == "blocks":
            self._show()
            self._show_blocks()

    def _show(self) -> None:
        scale = self.state.scale
        self.slider.show_value(scale * 100)
        self.spin.show_value(scale)
        for name, button in self.preset_buttons.items():
            button.setChecked(abs(PRESETS[name][0] - scale) < 1e-6)
