"""Generation settings: steps, guidance, seed, size, sampler, number of images, second pass."""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QToolButton,
    QWidget,
)

from ipa_studio.gui.state import LIMITS, UPSCALER_LABELS, ViewState
from ipa_studio.gui.widgets.fields import ComboBox, DoubleSpinBox, SpinBox
from ipa_studio.gui.widgets.icons import dice_icon
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
    "lcm": ("LCM", "For an LCM-LoRA: 4–8 steps, guidance 1–2 (blurry without one)"),
    "tcd": ("TCD", "For a TCD or Hyper-SD LoRA: 4–8 steps, guidance 1–2"),
}


PRECISION_LABELS: dict[str, tuple[str, str]] = {
    "auto": (
        "Auto",
        "fp16 on an NVIDIA GPU, bf16 on CPUs that compute it natively (AVX512-BF16 / AMX), else fp32",
    ),
    "fp32": ("fp32", "Full precision: the reference results, the slowest on a CPU"),
    "bf16": ("bf16", "About half the time of fp32 on CPUs with AVX512-BF16 / AMX; differs only by rounding"),
    "fp16": ("fp16", "For GPUs; on a CPU it is slow"),
}


class SettingsPanel(Section):
    precision_chosen = Signal(str)
    """The number format the engine should use ("auto", "fp32", "bf16", "fp16"): an app setting,
    not part of a picture's settings."""

    def __init__(self, state: ViewState, precision: str = "auto", parent: QWidget | None = None) -> None:
        super().__init__("Generation settings", "", parent)
        self.state = state
        form = QFormLayout()
        form.setLabelAlignment(form.labelAlignment())
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(8)
        self.body.addLayout(form)

        self.steps = SpinBox()
        self.steps.setRange(*_ints("steps"))
        self.steps.setToolTip(
            "Denoising steps: more is slower and usually a little cleaner. 30 is a good start."
        )
        self._row(form, "Steps", self.steps)

        self.guidance = DoubleSpinBox()
        self.guidance.setRange(*LIMITS["guidance"])
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(1)
        self.guidance.setToolTip(
            "Guidance (CFG): how strictly to follow the prompt and references. 7.5 is usual; higher gives "
            "stronger but harsher pictures, 1 turns guidance off."
        )
        self._row(form, "Guidance", self.guidance)

        seed_row = QHBoxLayout()
        self.seed = DoubleSpinBox()  # a double: an int spin box stops at 2**31
        self.seed.setDecimals(0)
        self.seed.setRange(*LIMITS["seed"])
        self.seed.setSingleStep(1)
        self.seed.setToolTip(
            "The random seed: the same seed with the same settings makes the same picture again."
        )
        self.randomize = QToolButton()
        self.randomize.setIcon(dice_icon(self.palette().buttonText().color()))
        self.randomize.setIconSize(QSize(16, 16))
        self.randomize.setAccessibleName("Random seed")
        self.randomize.setToolTip("Pick a new random seed for the next generation")
        self.lock = QCheckBox("Keep")
        self.lock.setToolTip(
            "On: keep this seed for the next generations (to try other settings on the same picture).\n"
            "Off: a new seed is picked for each generation; a seed you type, roll or reuse is used once."
        )
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.randomize)
        seed_row.addWidget(self.lock)
        self._row(form, "Seed", seed_row, self.seed.toolTip())

        self.size_preset = ComboBox()
        for label, w, h in SIZE_PRESETS:
            self.size_preset.addItem(label, _size_key(w, h))
        self.size_preset.addItem(CUSTOM_SIZE, "")
        self.size_preset.setToolTip(
            "The size of the picture in pixels. SD1.5 models are made for 512; much larger sizes tend "
            "to repeat things."
        )
        self._row(form, "Size", self.size_preset)
        wh = QHBoxLayout()
        self.width_box = SpinBox()
        self.height_box = SpinBox()
        for spin, what in ((self.width_box, "Width"), (self.height_box, "Height")):
            spin.setRange(*_ints(what.lower()))
            spin.setSingleStep(64)
            spin.setSuffix(" px")
            spin.setToolTip(f"{what} in pixels (a multiple of 8)")
        times = QLabel("×")
        wh.addWidget(self.width_box, 1)
        wh.addWidget(times)
        wh.addWidget(self.height_box, 1)
        self._row(form, "", wh)

        self.scheduler = ComboBox()
        for name, (label, tip) in SCHEDULER_LABELS.items():
            self.scheduler.addItem(label, name)
            self.scheduler.setItemData(self.scheduler.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.scheduler.setToolTip("The sampler (scheduler) that removes the noise step by step")
        self._row(form, "Sampler", self.scheduler)

        self.num_images = SpinBox()
        self.num_images.setRange(*_ints("num_images"))
        self.num_images.setToolTip("How many pictures to make at once, each from a different starting noise")
        self._row(form, "Images", self.num_images)

        self.precision = ComboBox()
        self.precision.setObjectName("precisionCombo")
        for name, (label, tip) in PRECISION_LABELS.items():
            self.precision.addItem(label, name)
            self.precision.setItemData(self.precision.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.precision.setCurrentIndex(max(0, self.precision.findData(precision)))
        self.precision.setToolTip(
            "The number format the models compute in. Auto picks the fastest one that is safe here; "
            "the status bar says which one is in use."
        )
        self._row(form, "Precision", self.precision)
        self.precision.activated.connect(lambda _: self.precision_chosen.emit(self.precision.currentData()))
        self._build_hires(form)

        self._show_all()
        self.steps.valueChanged.connect(lambda v: state.set("steps", v))
        self.guidance.valueChanged.connect(lambda v: state.set("guidance", round(v, 2)))
        self.seed.valueChanged.connect(lambda v: state.choose_seed(int(v)))
        self.randomize.clicked.connect(state.randomize_seed)
        self.lock.toggled.connect(lambda on: state.set("seed_locked", on))
        self.size_preset.activated.connect(self._preset_chosen)
        self.width_box.valueChanged.connect(lambda v: self._size_typed("width", v))
        self.height_box.valueChanged.connect(lambda v: self._size_typed("height", v))
        self.scheduler.currentIndexChanged.connect(
            lambda _: state.set("scheduler", self.scheduler.currentData())
        )
        self.num_images.valueChanged.connect(lambda v: state.set("num_images", v))
        state.changed.connect(self._on_state)

    def _build_hires(self, form: QFormLayout) -> None:
        """The second pass ("hires fix"): upscale the picture, then repaint it at the larger size."""
        self.hires_on = QCheckBox("Second pass (hires fix)")
        self.hires_on.setToolTip(
            "Make the picture, upscale it and repaint it at the larger size with the same prompt, "
            "references and seed, in one job: sharper detail than generating large at once."
        )
        form.addRow(self.hires_on)
        self.hires_scale = DoubleSpinBox()
        self.hires_scale.setRange(*LIMITS["hires_scale"])
        self.hires_scale.setSingleStep(0.25)
        self.hires_scale.setDecimals(2)
        self.hires_scale.setPrefix("× ")
        self.hires_scale.setToolTip("How much larger the second pass makes the picture (1.5 is a good start)")
        self.hires_size = QLabel()
        self.hires_size.setObjectName("hint")
        scale_row = QHBoxLayout()
        scale_row.addWidget(self.hires_scale, 1)
        scale_row.addWidget(self.hires_size)
        self.hires_strength = DoubleSpinBox()
        self.hires_strength.setRange(*LIMITS["hires_strength"])
        self.hires_strength.setSingleStep(0.05)
        self.hires_strength.setDecimals(2)
        self.hires_strength.setToolTip(
            "How much the second pass repaints: low keeps the first picture, high invents new detail "
            "(0.4–0.6 is usual)"
        )
        self.hires_steps = SpinBox()
        self.hires_steps.setRange(*_ints("hires_steps"))
        self.hires_steps.setSpecialValueText("Same as Steps")
        self.hires_steps.setToolTip(
            "Steps of the second pass (of which it runs its strength's share); the lowest value uses "
            "the Steps above"
        )
        self.hires_upscaler = ComboBox()
        for name, label in UPSCALER_LABELS.items():
            self.hires_upscaler.addItem(label, name)
        self.hires_upscaler.setToolTip(
            "How the picture is enlarged before it is repainted. Lanczos is built in; upscaler models "
            "(ESRGAN and the like) are not supported yet."
        )
        self._hires_rows = []
        for label, field in (
            ("Upscale", scale_row),
            ("Strength", self.hires_strength),
            ("Steps", self.hires_steps),
            ("Upscaler", self.hires_upscaler),
        ):
            tip = self.hires_scale.toolTip() if field is scale_row else field.toolTip()
            self._row(form, label, field, tip)
            self._hires_rows.append(form.rowCount() - 1)
        self._hires_form = form
        self.hires_on.toggled.connect(lambda on: self.state.set("hires_on", on))
        self.hires_scale.valueChanged.connect(lambda v: self.state.set("hires_scale", v))
        self.hires_strength.valueChanged.connect(lambda v: self.state.set("hires_strength", v))
        self.hires_steps.valueChanged.connect(lambda v: self.state.set("hires_steps", v))
        self.hires_upscaler.currentIndexChanged.connect(
            lambda _: self.state.set("hires_upscaler", self.hires_upscaler.currentData())
        )

    def _show_hires(self) -> None:
        s = self.state
        widgets = (
            self.hires_on,
            self.hires_scale,
            self.hires_strength,
            self.hires_steps,
            self.hires_upscaler,
        )
        for w in widgets:
            w.blockSignals(True)
        self.hires_on.setChecked(s.hires_on)
        self.hires_scale.show_value(s.hires_scale)
        self.hires_strength.show_value(s.hires_strength)
        self.hires_steps.show_value(s.hires_steps)
        self.hires_upscaler.setCurrentIndex(max(0, self.hires_upscaler.findData(s.hires_upscaler)))
        for w in widgets:
            w.blockSignals(False)
        # The same rounding as the engine's (core.hires.upscaled_size), without importing it.
        width, height = (max(64, round(side * s.hires_scale / 8) * 8) for side in (s.width, s.height))
        self.hires_size.setText(f"→ {width} × {height}")
        for row in self._hires_rows:
            self._hires_form.setRowVisible(row, s.hires_on)

    @staticmethod
    def _row(form: QFormLayout, label: str, field: object, tip: str = "") -> None:
        lab = QLabel(label)
        lab.setObjectName("fieldLabel")
        lab.setToolTip(tip or getattr(field, "toolTip", lambda: "")())
        form.addRow(lab, field)  # type: ignore[arg-type]

    def _preset_chosen(self, index: int) -> None:
        key = self.size_preset.itemData(index)
        if key:
            w, h = (int(v) for v in key.split("x"))
            self.state.set("width", w)
            self.state.set("height", h)
        else:
            self._show_all()  # "Custom size" is a label, not a size: the boxes say what is used

    def _size_typed(self, name: str, value: int) -> None:
        # Sizes are multiples of 8 (the latent grid): a typed 515 becomes 512, and the box shows it
        # even when the state already held 512 and so says nothing.
        self.state.set(name, _multiple_of_8(value))
        self._show_all()

    def _on_state(self, name: str) -> None:
        if name in ("steps", "guidance", "seed", "seed_locked", "width", "height", "scheduler", "num_images"):
            self._show_all()
        if name in ("hires", "width", "height"):
            self._show_hires()

    def _show_all(self) -> None:
        s = self.state
        widgets = (
            self.steps,
            self.guidance,
            self.seed,
            self.lock,
            self.width_box,
            self.height_box,
            self.scheduler,
            self.num_images,
            self.size_preset,
        )
        for w in widgets:
            w.blockSignals(True)
        self.steps.show_value(s.steps)
        self.guidance.show_value(s.guidance)
        self.seed.show_value(s.seed)
        self.lock.setChecked(s.seed_locked)
        self.width_box.show_value(s.width)
        self.height_box.show_value(s.height)
        self.scheduler.setCurrentIndex(max(0, self.scheduler.findData(s.scheduler)))
        self.num_images.show_value(s.num_images)
        index = self.size_preset.findData(_size_key(s.width, s.height))
        self.size_preset.setCurrentIndex(index if index >= 0 else self.size_preset.count() - 1)
        for w in widgets:
            w.blockSignals(False)
        self._show_hires()


def _multiple_of_8(value: int) -> int:
    low, high = _ints("width")
    return min(max(low, round(value / 8) * 8), high)


def _size_key(width: int, height: int) -> str:
    # Text, not a tuple: a combo box compares item data as variants, and two Python tuples are
    # never equal there, which showed "Custom size" at 512 × 512.
    return f"{width}x{height}"


def _ints(name: str) -> tuple[int, int]:
    low, high = LIMITS[name]
    return int(low), int(high)
