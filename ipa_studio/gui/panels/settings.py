"""Generation settings: steps, guidance, seed, size, sampler, number of images."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QWidget,
)

from ipa_studio.gui.state import SEED_LIMIT, ViewState
from ipa_studio.gui.widgets.section import Section

SIZE_PRESETS: tuple[tuple[str, int, int], ...] = (
    ("Square 512 × 512", 512, 512),
    ("Portrait 512 × 768", 512, 768),
    ("Landscape 768 × 512", 768, 512),
    ("Portrait 512 × 640", 512, 640),
    ("Landscape 640 × 512", 640, 512),
    ("Wide 912 × 512", 912, 512),
)
CUSTOM_SIZE = "Custom size"

SCHEDULER_LABELS: dict[str, tuple[str, str]] = {
    "ddim": ("DDIM", "The paper's sampler: steady, good at 30–50 steps"),
    "dpm++": ("DPM++ 2M", "Sharp results in fewer steps (20–30)"),
    "euler-a": ("Euler a", "Softer and more varied; changes a lot with the number of steps"),
}


class SettingsPanel(Section):
    def __init__(self, state: ViewState, parent: QWidget | None = None) -> None:
        super().__init__("Generation settings", "", parent)
        self.state = state
        form = QFormLayout()
        form.setLabelAlignment(form.labelAlignment())
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(8)
        self.body.addLayout(form)

        self.steps = QSpinBox()
        self.steps.setRange(1, 150)
        self.steps.setToolTip(
            "Denoising steps: more is slower and usually a little cleaner. 30 is a good start."
        )
        self._row(form, "Steps", self.steps)

        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 30.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.guidance.setToolTip(
            "Guidance (CFG): how strictly to follow the prompt and references. 7.5 is usual; higher gives "
            "stronger but harsher pictures, 1 turns guidance off."
        )
        self._row(form, "Guidance", self.guidance)

        seed_row = QHBoxLayout()
        self.seed = QDoubleSpinBox()
        self.seed.setDecimals(0)
        self.seed.setRange(0, SEED_LIMIT)
        self.seed.setSingleStep(1)
        self.seed.setToolTip(
            "The random seed: the same seed with the same settings makes the same picture again."
        )
        self.randomize = QToolButton()
        self.randomize.setText("🎲")
        self.randomize.setToolTip("Pick a new random seed now")
        self.lock = QCheckBox("Keep")
        self.lock.setToolTip(
            "On: keep this seed for the next generations (to try other settings on the same picture).\n"
            "Off: a new seed is picked for each generation."
        )
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.randomize)
        seed_row.addWidget(self.lock)
        self._row(form, "Seed", seed_row, self.seed.toolTip())

        self.size_preset = QComboBox()
        for label, w, h in SIZE_PRESETS:
            self.size_preset.addItem(label, (w, h))
        self.size_preset.addItem(CUSTOM_SIZE, None)
        self.size_preset.setToolTip(
            "The size of the picture in pixels. SD1.5 models are made for 512; much larger sizes tend "
            "to repeat things."
        )
        self._row(form, "Size", self.size_preset)
        wh = QHBoxLayout()
        self.width = QSpinBox()
        self.height = QSpinBox()
        for spin, what in ((self.width, "Width"), (self.height, "Height")):
            spin.setRange(64, 2048)
            spin.setSingleStep(64)
            spin.setSuffix(" px")
            spin.setToolTip(f"{what} in pixels (a multiple of 8)")
        times = QLabel("×")
        wh.addWidget(self.width, 1)
        wh.addWidget(times)
        wh.addWidget(self.height, 1)
        self._row(form, "", wh)

        self.scheduler = QComboBox()
        for name, (label, tip) in SCHEDULER_LABELS.items():
            self.scheduler.addItem(label, name)
            self.scheduler.setItemData(self.scheduler.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.scheduler.setToolTip("The sampler (scheduler) that removes the noise step by step")
        self._row(form, "Sampler", self.scheduler)

        self.num_images = QSpinBox()
        self.num_images.setRange(1, 8)
        self.num_images.setToolTip("How many pictures to make at once, each from a different starting noise")
        self._row(form, "Images", self.num_images)

        self._show_all()
        self.steps.valueChanged.connect(lambda v: state.set("steps", v))
        self.guidance.valueChanged.connect(lambda v: state.set("guidance", round(v, 2)))
        self.seed.valueChanged.connect(lambda v: state.set("seed", int(v)))
        self.randomize.clicked.connect(state.randomize_seed)
        self.lock.toggled.connect(lambda on: state.set("seed_locked", on))
        self.size_preset.activated.connect(self._preset_chosen)
        self.width.editingFinished.connect(lambda: state.set("width", _multiple_of_8(self.width.value())))
        self.height.editingFinished.connect(lambda: state.set("height", _multiple_of_8(self.height.value())))
        self.width.valueChanged.connect(self._size_typed)
        self.height.valueChanged.connect(self._size_typed)
        self.scheduler.currentIndexChanged.connect(
            lambda _: state.set("scheduler", self.scheduler.currentData())
        )
        self.num_images.valueChanged.connect(lambda v: state.set("num_images", v))
        state.changed.connect(self._on_state)

    @staticmethod
    def _row(form: QFormLayout, label: str, field: object, tip: str = "") -> None:
        lab = QLabel(label)
        lab.setObjectName("fieldLabel")
        lab.setToolTip(tip or getattr(field, "toolTip", lambda: "")())
        form.addRow(lab, field)  # type: ignore[arg-type]

    def _preset_chosen(self, index: int) -> None:
        size = self.size_preset.itemData(index)
        if size is not None:
            self.state.set("width", size[0])
            self.state.set("height", size[1])

    def _size_typed(self) -> None:
        # Arrow clicks change the value without editingFinished; only multiples of 8 go to the state.
        w, h = self.width.value(), self.height.value()
        if w % 8 == 0:
            self.state.set("width", w)
        if h % 8 == 0:
            self.state.set("height", h)

    def _on_state(self, name: str) -> None:
        if name in ("steps", "guidance", "seed", "seed_locked", "width", "height", "scheduler", "num_images"):
            self._show_all()

    def _show_all(self) -> None:
        s = self.state
        widgets = (
            self.steps,
            self.guidance,
            self.seed,
            self.lock,
            self.width,
            self.height,
            self.scheduler,
            self.num_images,
            self.size_preset,
        )
        for w in widgets:
            w.blockSignals(True)
        self.steps.setValue(s.steps)
        self.guidance.setValue(s.guidance)
        self.seed.setValue(s.seed)
        self.lock.setChecked(s.seed_locked)
        self.width.setValue(s.width)
        self.height.setValue(s.height)
        self.scheduler.setCurrentIndex(max(0, self.scheduler.findData(s.scheduler)))
        self.num_images.setValue(s.num_images)
        index = self.size_preset.findData((s.width, s.height))
        self.size_preset.setCurrentIndex(index if index >= 0 else self.size_preset.count() - 1)
        for w in widgets:
            w.blockSignals(False)


def _multiple_of_8(value: int) -> int:
    return max(64, round(value / 8) * 8)
