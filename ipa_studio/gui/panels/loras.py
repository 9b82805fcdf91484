"""The LoRA list of the model box: add from the library or a file, strengths, on/off, the Fast preset.

Each row shows what the LoRA was found to be (read from its header on a background thread, never on
the GUI thread) and its two strengths: a slider with a typed box for the UNet part, and a typed box
for the text-encoder part (it follows the first until it is given a value of its own, A1111's rule).
When a few-step LoRA (LCM, TCD, Hyper-SD, Lightning) is added, a strip above the list offers its
"Fast" preset — sampler, steps and guidance — with one click; nothing changes without that click.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.core.fewstep import article
from ipa_studio.gui import dialogs
from ipa_studio.gui.state import LIMITS, LoraItem, ViewState
from ipa_studio.gui.widgets.elided import ElidedLabel
from ipa_studio.gui.widgets.fields import DoubleSpinBox, Slider

SLIDER_STEPS = 100
"""Slider positions per 1.0 of strength (0.01 a step, what the typed box shows)."""


def describe_file(path: str) -> tuple[str, str, Any]:
    """(kind text, problem, Fast preset or None) for a LoRA file; reads headers only (safetensors),
    so it is quick, but it still runs off the GUI thread."""
    from ipa_studio.core.errors import IPAStudioError
    from ipa_studio.core.fewstep import detect_fewstep

    try:
        preset = detect_fewstep(path)
    except (IPAStudioError, OSError) as exc:
        return "unreadable", str(exc), None
    try:
        from ipa_studio.core.lora import describe_lora
    except ImportError:  # an install without the LoRA reader: the engine will say what it thinks
        return (f"{preset.kind} few-step LoRA" if preset else "LoRA"), "", preset
    try:
        info = describe_lora(path)
    except (IPAStudioError, OSError) as exc:
        return "unreadable", str(exc), None
    if preset is not None:
        kind = f"{preset.kind} few-step LoRA" + (f" · {info.base}" if info.base else "")
    else:
        kind = info.summary().split(" (")[0]
    problem = "" if info.usable else (info.reason or "it cannot be used") + "."
    return kind, problem[0].upper() + problem[1:] if problem else "", preset


class _Describer(QObject):
    """Runs :func:`describe_file` on a daemon thread; the answer arrives as a queued signal."""

    described = Signal(int, str, str, object)  # uid, kind, problem, preset

    def describe(self, uid: int, path: str) -> None:
        def work() -> None:
            try:
                kind, problem, preset = describe_file(path)
            except Exception as exc:  # a reader bug must not take the window down
                kind, problem, preset = "unreadable", f"It could not be read ({exc}).", None
            self.described.emit(uid, kind, problem, preset)

        threading.Thread(target=work, name="ipa-studio-lora-describe", daemon=True).start()


class LoraRow(QFrame):
    """One LoRA: on/off, name and kind, remove; strength slider + box; text strength box."""

    def __init__(self, state: ViewState, item: LoraItem, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("loraRow")
        self.state = state
        self.uid = item.uid
        grid = QGridLayout(self)
        grid.setContentsMargins(6, 4, 4, 4)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(2)

        self.enabled = QCheckBox()
        self.enabled.setToolTip("Use this LoRA (off: it stays in the list but is not applied)")
        self.enabled.setChecked(item.enabled)
        self.name = ElidedLabel(item.name)
        self.name.setObjectName("loraName")
        self.kind = ElidedLabel("")
        self.kind.setObjectName("hint")
        self.remove = QToolButton()
        self.remove.setText("✕")
        self.remove.setAutoRaise(True)
        self.remove.setToolTip(f"Remove {item.name} from the list")
        grid.addWidget(self.enabled, 0, 0)
        grid.addWidget(self.name, 0, 1, 1, 3)
        grid.addWidget(self.remove, 0, 4)
        grid.addWidget(self.kind, 1, 1, 1, 4)

        low, high = LIMITS["lora_strength"]
        self.slider = Slider()
        self.slider.setObjectName("loraStrengthSlider")
        self.slider.setRange(round(low * SLIDER_STEPS), round(high * SLIDER_STEPS))
        self.slider.setPageStep(10)
        self.slider.setToolTip(
            "How strongly the LoRA changes the picture (1 = as trained; below 0 inverts it)"
        )
        self.strength = DoubleSpinBox()
        self.strength.setObjectName("loraStrength")
        self.strength.setRange(low, high)
        self.strength.setSingleStep(0.05)
        self.strength.setDecimals(2)
        self.strength.setToolTip(self.slider.toolTip())
        self.text_strength = DoubleSpinBox()
        self.text_strength.setObjectName("loraTextStrength")
        self.text_strength.setRange(low, high)
        self.text_strength.setSingleStep(0.05)
        self.text_strength.setDecimals(2)
        self.text_strength.setToolTip(
            "Its strength on the text encoder (how it reads the prompt). It follows the strength "
            "until you give it a value of its own."
        )
        strength_label, text_label = QLabel("Strength"), QLabel("Text")
        for label in (strength_label, text_label):
            label.setObjectName("fieldLabel")
        grid.addWidget(strength_label, 2, 1)
        grid.addWidget(self.slider, 2, 2)
        grid.addWidget(self.strength, 2, 3, 1, 2)
        grid.addWidget(text_label, 3, 1)
        grid.addWidget(self.text_strength, 3, 3, 1, 2)
        grid.setColumnStretch(2, 1)

        self.show_item(item)
        self.enabled.toggled.connect(lambda on: state.update_lora(self.uid, enabled=on))
        self.slider.valueChanged.connect(lambda v: self._set_strength(v / SLIDER_STEPS))
        self.strength.valueChanged.connect(self._set_strength)
        self.text_strength.valueChanged.connect(lambda v: state.update_lora(self.uid, text_strength=v))
        self.remove.clicked.connect(lambda: state.remove_lora(self.uid))

    def _set_strength(self, value: float) -> None:
        self.state.update_lora(self.uid, strength=round(value, 2))

    def show_item(self, item: LoraItem) -> None:
        """Show ``item``'s values without sending them back."""
        self.slider.show_value(item.strength * SLIDER_STEPS)
        self.strength.show_value(item.strength)
        self.text_strength.show_value(item.strength if item.text_strength is None else item.text_strength)
        for w in (self.slider, self.strength, self.text_strength):
            w.setEnabled(item.enabled)
        was = self.enabled.blockSignals(True)
        self.enabled.setChecked(item.enabled)
        self.enabled.blockSignals(was)
        if item.problem:
            self.kind.set_full_text(f"⚠ {item.problem}")
            self.kind.setProperty("warning", True)
        else:
            self.kind.set_full_text(item.kind or "Looking at it…")
            self.kind.setProperty("warning", False)
        self.kind.style().unpolish(self.kind)
        self.kind.style().polish(self.kind)


class FastStrip(QFrame):
    """ "LCM few-step LoRA: use its Fast preset?" with the button that sets it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("fastStrip")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 6, 4, 6)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.use = QPushButton("Use Fast preset")
        self.use.setObjectName("useFast")
        self.use.setToolTip("Set the sampler, steps and guidance this LoRA was made for")
        self.close = QToolButton()
        self.close.setText("✕")
        self.close.setAutoRaise(True)
        self.close.setToolTip("Keep the current settings")
        layout.addWidget(self.label, 1)
        layout.addWidget(self.use, 0, Qt.AlignmentFlag.AlignVCenter)
        layout.addWidget(self.close, 0, Qt.AlignmentFlag.AlignTop)
        self.preset: Any = None
        self.close.clicked.connect(self.hide)
        self.hide()

    def offer(self, name: str, preset: Any) -> None:
        self.preset = preset
        maybe = "" if preset.certain else " (probably, from its layout)"
        self.label.setText(
            f"<b>{name}</b> is {article(preset.kind)} {preset.kind} few-step LoRA{maybe}: "
            f"{preset.scheduler.upper()} sampler, {preset.steps} steps, guidance {preset.guidance:g}."
        )
        self.setToolTip(
            "A few-step LoRA makes a picture in a few steps only with the sampler and guidance it was "
            "made for; with other settings (30 steps, guidance 7.5) its pictures come out over-cooked."
        )
        self.show()


class LoraList(QWidget):
    """The list, its "Add LoRA…" button and the Fast preset strip; reads and writes the view state."""

    def __init__(
        self, state: ViewState, library_loras: Any, library_root: Path, parent: QWidget | None = None
    ):
        """``library_loras()``: the library's LoRA entries (for the Add menu)."""
        super().__init__(parent)
        self.state = state
        self.library_loras = library_loras
        self.library_root = library_root
        self.rows: dict[int, LoraRow] = {}
        self.presets: dict[int, Any] = {}
        self._describer = _Describer(self)
        self._describer.described.connect(self._on_described)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(4)
        head = QHBoxLayout()
        title = QLabel("LoRAs")
        title.setObjectName("fieldLabel")
        self.count = QLabel("")
        self.count.setObjectName("hint")
        self.add_button = QToolButton()
        self.add_button.setObjectName("addLora")
        self.add_button.setText("Add LoRA…")
        self.add_button.setToolTip("Add a LoRA from the library or from a file; several can be used at once")
        self.add_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.menu = QMenu(self.add_button)
        self.menu.aboutToShow.connect(self._fill_menu)
        self.add_button.setMenu(self.menu)
        head.addWidget(title)
        head.addWidget(self.count, 1)
        head.addWidget(self.add_button)
        outer.addLayout(head)
        self.fast = FastStrip()
        self.fast.use.clicked.connect(self.use_fast_preset)
        outer.addWidget(self.fast)
        self.list = QVBoxLayout()
        self.list.setSpacing(4)
        outer.addLayout(self.list)

        state.changed.connect(self._on_state_changed)
        state.lora_changed.connect(self._on_lora_changed)
        self._rebuild()

    # ------------------------------------------------------------------ adding
    def _fill_menu(self) -> None:
        self.menu.clear()
        listed = {item.path for item in self.state.loras}
        entries = [e for e in self.library_loras() if str(e.path) not in listed]
        for entry in entries:
            action = self.menu.addAction(entry.name, lambda p=str(entry.path): self.add(p))
            if not entry.usable:
                action.setEnabled(False)
                action.setToolTip(f"Cannot be used: {entry.reason}")
        if not entries:
            self.menu.addAction("No LoRAs in the library yet").setEnabled(False)
        self.menu.addSeparator()
        self.menu.addAction("A LoRA file…", self.choose_file)

    def choose_file(self) -> None:
        path = dialogs.open_file(
            self,
            "lora file",
            "Add a LoRA",
            "LoRA files (*.safetensors *.pt *.ckpt *.bin);;All files (*)",
            self.library_root,
        )
        if path:
            self.add(path)

    def add(self, path: str) -> LoraItem:
        """Add the LoRA at ``path`` at strength 1; its kind is read in the background."""
        item = self.state.add_lora(path)
        self._describer.describe(item.uid, item.path)
        return item

    def _on_described(self, uid: int, kind: str, problem: str, preset: Any) -> None:
        item = self.state.lora(uid)
        if item is None:
            return  # removed meanwhile
        self.presets[uid] = preset
        self.state.update_lora(uid, kind=kind, problem=problem)
        if preset is not None and not problem and not self._matches(preset):
            self.fast.offer(item.name, preset)

    def _matches(self, preset: Any) -> bool:
        s = self.state
        return (s.scheduler, s.steps, s.guidance) == (preset.scheduler, preset.steps, preset.guidance)

    def use_fast_preset(self) -> None:
        preset = self.fast.preset
        if preset is not None:
            self.state.apply_fast_preset(preset.scheduler, preset.steps, preset.guidance)
        self.fast.hide()

    # ------------------------------------------------------------------ state → rows
    def _on_state_changed(self, name: str) -> None:
        if name == "loras":
            self._rebuild()

    def _on_lora_changed(self, uid: int) -> None:
        item = self.state.lora(uid)
        row = self.rows.get(uid)
        if item is not None and row is not None:
            row.show_item(item)
        self._update_count()

    def _update_count(self) -> None:
        on = sum(1 for item in self.state.loras if item.enabled)
        self.count.setText(f"{on} on" if self.state.loras else "none")

    def _rebuild(self) -> None:
        items = {item.uid: item for item in self.state.loras}
        for uid in [u for u in self.rows if u not in items]:
            row = self.rows.pop(uid)
            self.list.removeWidget(row)
            row.deleteLater()
            self.presets.pop(uid, None)
        for index, item in enumerate(self.state.loras):
            row = self.rows.get(item.uid)
            if row is None:
                row = LoraRow(self.state, item)
                self.rows[item.uid] = row
                if not item.kind and not item.problem:
                    self._describer.describe(item.uid, item.path)  # restored by Reuse
            self.list.insertWidget(index, row)
            row.show_item(item)
        if self.fast.isVisible() and not any(p is self.fast.preset for p in self.presets.values()):
            self.fast.hide()  # its LoRA was removed
        self._update_count()
