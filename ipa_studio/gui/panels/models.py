"""The model picker at the top of the Create tab: base model, adapter variant, "Add model…".

It lists what the model library holds (scanned on the library thread), including models IPA Studio
cannot run, greyed out with the reason, so people see why their SDXL checkpoint is not offered
rather than wondering where it went. Choosing a model only changes the view state's model paths;
the references, prompt and λ stay, the worker loads the new base model and the engine moves the
adapter onto its UNet.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QStandardItemModel
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ipa_studio.gui import dialogs
from ipa_studio.gui.library import LibrarySnapshot, LibraryWorker, path_key
from ipa_studio.gui.panels.loras import LoraList
from ipa_studio.gui.state import ViewState
from ipa_studio.gui.widgets.fields import ComboBox
from ipa_studio.gui.widgets.section import Section

# variant → (label, what it is good for). The checkpoint says global / plus / full; "light" and
# "plus-face" share those layouts and differ only in training, which the official names tell.
VARIANTS: dict[str, tuple[str, str]] = {
    "global": ("Global", "the reference's overall look, style and colours (4 image tokens)"),
    "light": ("Light", "a gentler image prompt that leaves more room for the text prompt"),
    "plus": ("Plus", "finer detail and composition from the reference (16 image tokens)"),
    "plus-face": ("Plus face", "keeps a face; give a cropped face as the reference"),
    "full-face": ("Full face", "the closest face likeness; give a cropped face as the reference"),
}

KIND_NAMES = {
    "base": "base model",
    "adapter": "IP-Adapter",
    "image_encoder": "image encoder",
    "controlnet": "ControlNet",
    "lora": "LoRA",
    "vae": "VAE",
    "embedding": "embedding",
    "unknown": "unknown file",
    "invalid": "unreadable file",
}

_NO_ADAPTER = "No adapter (text prompt only)"
# combobox-popup 0: the list drops down under the box (rather than over it, centred on the current
# item), so the greyed models and their neighbours read as one list.
_STYLE = """
QLabel[warning="true"] { color: #e8a33d; }
QLabel#pickerStatus { color: #9fbfff; }
QLabel#pickerStatus[tone="bad"] { color: #ff8a80; }
QLabel#verdictOk { color: #4caf50; }
QLabel#verdictBad { color: #ff8a80; }
QComboBox { combobox-popup: 0; }
QComboBox QAbstractItemView { background: #2b2b2f; border: 1px solid #55555c; padding: 2px; }
QComboBox QAbstractItemView::item { min-height: 24px; padding: 0 6px; }
QToolButton#addModel { padding: 3px 10px; }
QToolButton#addModel::menu-indicator { image: none; width: 0; }
QToolButton#addLora { padding: 2px 8px; }
QToolButton#addLora::menu-indicator { image: none; width: 0; }
QFrame#loraRow { background: #26262a; border: 1px solid #3a3a40; border-radius: 4px; }
QFrame#fastStrip { background: #243b2a; border: 1px solid #3f7a4c; border-radius: 4px; }
QFrame#fastStrip QLabel { color: #e4f5e7; }
ElidedLabel[warning="true"] { color: #e8a33d; }
"""
_PATH_ROLE = Qt.ItemDataRole.UserRole


def size_text(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def adapter_variant(entry: Any) -> str:
    """ "global", "light", "plus", "plus-face" or "full-face" for an adapter entry or detection."""
    variant = entry.details.get("variant")
    name = Path(entry.path).name.lower() + " " + getattr(entry, "name", "").lower()
    if variant == "full":
        return "full-face"
    if variant == "plus":
        return "plus-face" if "face" in name else "plus"
    return "light" if "light" in name else "global"


INPAINTING_TIP = (
    "An inpainting model: made to repaint the painted part of a start picture (Inpaint). "
    "With New picture or Img2img it repaints the whole picture."
)


def is_inpainting(entry: Any) -> bool:
    """A base model whose UNet also reads a mask and a masked picture (9 input channels)."""
    return entry.details.get("in_channels") == 9


def encoder_need(entry: Any) -> str:
    """ "the ViT-H/14 image encoder" — what an adapter reads its references with."""
    encoder = entry.details.get("encoder")
    if encoder:
        return f"the {encoder} image encoder"
    width = entry.details.get("encoder_width")
    return f"a CLIP image encoder with {width}-wide features" if width else "an image encoder"


# --------------------------------------------------------------------------------------------------
# The "add this model?" dialog
# --------------------------------------------------------------------------------------------------


class AddModelDialog(QDialog):
    """What a file or folder is, before it goes into the library; ``accepted`` adds it."""

    def __init__(self, detection: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.detection = detection
        path = Path(detection.path)
        self.setWindowTitle("Add a model")
        self.setStyleSheet(_STYLE)
        self.setMinimumWidth(520)
        layout = QVBoxLayout(self)
        heading = QLabel(path.name)
        heading.setObjectName("sectionTitle")
        layout.addWidget(heading)

        form = QFormLayout()
        form.setHorizontalSpacing(14)
        self.name = QLineEdit(path.stem if path.is_file() else path.name)
        self.name.setToolTip("The name the model has in the library and in the model picker")
        form.addRow("Name", self.name)
        kind = KIND_NAMES.get(detection.kind, detection.kind)
        self.what = QLabel(f"{detection.architecture} · {kind}")
        form.addRow("What it is", self.what)
        form.addRow("Format", QLabel(detection.format))
        form.addRow("Size", QLabel(size_text(detection.size_bytes)))
        if detection.kind == "adapter" and "variant" in detection.details:
            label, about = VARIANTS[adapter_variant(detection)]
            form.addRow("Variant", _wrapped(f"{label}: {about}"))
            need = encoder_need(detection)
            form.addRow("Needs", _wrapped(need[0].upper() + need[1:]))
        if detection.usable:
            verdict = "✔ IPA Studio can use it."
        else:
            verdict = f"✖ IPA Studio cannot use it: {detection.reason}."
        self.verdict = _wrapped(verdict)
        self.verdict.setObjectName("verdictOk" if detection.usable else "verdictBad")
        form.addRow("Verdict", self.verdict)
        layout.addLayout(form)

        self.convert = QCheckBox("Convert to .safetensors")
        self.convert.setToolTip(
            "Write the weights once as a .safetensors copy in the models folder. It loads faster and "
            "can never run code; the original file is left alone."
        )
        pickle = path.is_file() and path.suffix.lower() in (".ckpt", ".bin", ".pt", ".pth")
        self.convert.setVisible(pickle and detection.kind not in ("invalid", "unknown"))
        layout.addWidget(self.convert)

        self.addable = detection.kind not in ("invalid", "unknown")
        if not self.addable:
            where = "It is not a model IPA Studio knows, so it is not added."
        elif detection.usable:
            where = "The file stays where it is; the library only remembers it."
        else:
            where = "It can still be added: the picker then lists it, greyed out, with the reason."
        self.where = _wrapped(where)
        self.where.setObjectName("hint")
        layout.addWidget(self.where)
        self.convert.toggled.connect(
            lambda on: self.where.setText(
                "A .safetensors copy is written into the models folder; the original file is left alone."
                if on
                else where
            )
        )

        self.buttons = QDialogButtonBox()
        self.add_button = self.buttons.addButton("Add to library", QDialogButtonBox.ButtonRole.AcceptRole)
        self.add_button.setEnabled(self.addable)
        self.add_button.setDefault(self.addable)
        self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def summary(self) -> str:
        """Everything the dialog says, as one text (for tests and screen readers)."""
        return f"{self.what.text()} · {self.detection.format} · {self.verdict.text()}"


def _wrapped(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


# --------------------------------------------------------------------------------------------------
# The picker
# --------------------------------------------------------------------------------------------------


class ModelPicker(Section):
    """Base model and adapter combos fed by the library; writes model paths into the view state."""

    message = Signal(str, str)  # text, "error" | "note": the window shows it in the banner

    def __init__(self, state: ViewState, library: LibraryWorker, parent: QWidget | None = None) -> None:
        super().__init__("Model", "", parent)
        self.setStyleSheet(_STYLE)
        self.state = state
        self.library = library
        self.snapshot = LibrarySnapshot(library.root)
        self.scanned = False
        self.dialog: AddModelDialog | None = None
        self._inspecting = ""
        self._adding = ""
        self._updating = False
        self._shown: dict[int, list[tuple[str, str, bool, str]]] = {}
        # How the view state spelled each model's path: the engine keeps the previous base model
        # by its path, so switching back must hand it the same text, not a resolved variant.
        self._spelling: dict[str, str] = {}

        grid = QGridLayout()
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(6)
        self.base = ComboBox()
        self.base.setObjectName("baseCombo")
        self.base.setToolTip(
            "The Stable Diffusion 1.5 model that paints: the original or a community fine-tune"
        )
        self.adapter = ComboBox()
        self.adapter.setObjectName("adapterCombo")
        self.adapter.setToolTip("The IP-Adapter variant that turns the reference images into a prompt")
        for combo in (self.base, self.adapter):
            # Long file names must not widen the control column.
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(14)
        self.base.setPlaceholderText("No base model yet")
        self.adapter.setPlaceholderText("No adapter yet")

        self.add_button = QToolButton()
        self.add_button.setObjectName("addModel")
        self.add_button.setText("Add model…")
        self.add_button.setToolTip(
            "Add a model file or folder you have to the library; you see what it is before it is added"
        )
        self.add_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.add_button)
        menu.addAction("A model file (.safetensors, .ckpt, .bin)…", lambda: self.choose_and_add(False))
        menu.addAction("A model folder (diffusers model, image encoder)…", lambda: self.choose_and_add(True))
        self.add_button.setMenu(menu)

        base_label, adapter_label = QLabel("Base"), QLabel("Adapter")
        for label in (base_label, adapter_label):
            label.setObjectName("fieldLabel")
        grid.addWidget(base_label, 0, 0)
        grid.addWidget(self.base, 0, 1)
        grid.addWidget(self.add_button, 0, 2)
        grid.addWidget(adapter_label, 1, 0)
        grid.addWidget(self.adapter, 1, 1, 1, 2)
        grid.setColumnStretch(1, 1)
        self.body.addLayout(grid)

        self.about = QLabel()
        self.about.setObjectName("hint")
        self.about.setWordWrap(True)
        self.body.addWidget(self.about)
        self.status = QLabel()
        self.status.setObjectName("pickerStatus")
        self.status.setWordWrap(True)
        self.status.hide()
        self.body.addWidget(self.status)
        self.loras = LoraList(state, lambda: self.snapshot.of_kind("lora"), library.root)
        self.body.addWidget(self.loras)

        self.base.currentIndexChanged.connect(self._on_base_chosen)
        self.adapter.currentIndexChanged.connect(self._on_adapter_chosen)
        state.changed.connect(self._on_state_changed)
        library.scanned.connect(self.set_snapshot)
        library.inspected.connect(self._on_inspected)
        library.progress.connect(self._on_progress)
        library.added.connect(self._on_added)
        self._show()
        library.scan(self._paths())

    # ------------------------------------------------------------------ state ↔ combos
    def _paths(self) -> list[str]:
        m = self.state.models
        paths = [m.base, m.adapter, m.image_encoder]
        for path in paths:
            if path:
                self._spelling[path_key(path)] = path
        return paths

    def _on_state_changed(self, name: str) -> None:
        if name == "models":
            self._show()
            self.library.scan(self._paths())  # a path chosen on the Models tab joins the library

    def set_snapshot(self, snapshot: LibrarySnapshot) -> None:
        self.snapshot = snapshot
        self.scanned = True
        # Embeddings are used by name in the prompts: the state offers the library's usable ones.
        files = dict(self.state.embedding_files)
        files.update({Path(e.path).stem: str(e.path) for e in snapshot.of_kind("embedding") if e.usable})
        self.state.set_embedding_files(files)
        self._fill_encoder()
        self._show()

    def _show(self) -> None:
        self._updating = True
        try:
            self._fill(self.base, "base", self.state.models.base)
            self._fill(self.adapter, "adapter", self.state.models.adapter)
        finally:
            self._updating = False
        self._describe()

    def _fill(self, combo: QComboBox, kind: str, current: str) -> None:
        items: list[tuple[str, str, bool, str]] = []  # text, path, usable, tooltip
        for entry in self.snapshot.of_kind(kind):
            text = entry.name
            if not entry.usable:
                text += f" · {entry.architecture}"
                tip = f"Cannot be used: {entry.reason}"
            else:
                tip = f"{entry.architecture} · {size_text(entry.size_bytes)}\n{entry.path}"
                if kind == "base" and is_inpainting(entry):
                    text += " · Inpainting"
                    tip = f"{INPAINTING_TIP}\n{tip}"
                if kind == "adapter":
                    label, about = VARIANTS[adapter_variant(entry)]
                    text += f" · {label}"
                    tip = f"{label}: {about}\n{tip}"
            items.append((text, str(entry.path), entry.usable, tip))
        found = self.snapshot.find(current) if current else None
        if current and found is None:
            # Chosen on the Models tab and not scanned yet (or deleted since): show it, not nothing.
            note = "being added…" if Path(current).exists() else "not found"
            items.append((f"{Path(current).name} ({note})", current, True, current))
        if kind == "adapter":
            items.append(
                (_NO_ADAPTER, "", True, "Generate from the text prompt alone; references need an adapter")
            )
        # Rebuilt only when the list changed, so a rescan does not close an open list under the mouse.
        if self._shown.get(id(combo)) != items:
            self._shown[id(combo)] = items
            combo.clear()
            model = combo.model()
            assert isinstance(model, QStandardItemModel)
            for row, (text, path, usable, tip) in enumerate(items):
                combo.addItem(text, path)
                item = model.item(row)
                item.setToolTip(tip)
                item.setEnabled(usable)  # greyed, and the reason is one hover away
        target = str(found.path) if found is not None else current
        combo.setCurrentIndex(combo.findData(target) if current or kind == "adapter" else -1)

    def _on_base_chosen(self, index: int) -> None:
        if self._updating or index < 0:
            return
        path = self.base.itemData(index)
        if path and path != self.state.models.base:
            self.choose_base(path)

    def _on_adapter_chosen(self, index: int) -> None:
        if self._updating or index < 0:
            return
        path = self.adapter.itemData(index)
        if path != self.state.models.adapter:
            self.choose_adapter(path or "")

    def choose_base(self, path: str) -> None:
        """Switch the base model; everything else in the view state stays as it is."""
        self.state.set_models(replace(self.state.models, base=self._spelled(path)))

    def choose_adapter(self, path: str) -> None:
        """Switch the adapter and give it the image encoder it needs, when the library has one."""
        models = replace(self.state.models, adapter=self._spelled(path) if path else "")
        entry = self.snapshot.find(path) if path else None
        encoder = self.snapshot.encoders.get(entry.name) if entry is not None else None
        if encoder is not None and not self._fits(models.image_encoder, encoder):
            models = replace(models, image_encoder=self._spelled(encoder.path))
        self.state.set_models(models)

    def _spelled(self, path: str | Path) -> str:
        return self._spelling.get(path_key(path), str(path))

    def _fits(self, current: str, pick: Any) -> bool:
        """The chosen encoder is as good as the library's pick (same widths): keep people's choice."""
        entry = self.snapshot.find(current)
        if entry is None or not entry.usable:
            return False
        keys = ("hidden_size", "projection_dim")
        return all(entry.details.get(k) == pick.details.get(k) for k in keys)

    def _fill_encoder(self) -> None:
        """An adapter without an encoder gets the library's, once the library knows one."""
        m = self.state.models
        entry = self.snapshot.find(m.adapter)
        if entry is None or m.image_encoder:
            return
        encoder = self.snapshot.encoders.get(entry.name)
        if encoder is not None:
            self.state.set_models(replace(m, image_encoder=str(encoder.path)))

    def _describe(self) -> None:
        """The line under the combos: what the adapter does and whether its encoder is there."""
        m = self.state.models
        entry = self.snapshot.find(m.adapter) if m.adapter else None
        warning = False
        if self.snapshot.error:
            self._say(self.snapshot.error, "bad")
        if not m.adapter:
            text = "No adapter: pictures follow the text prompt; reference images are not used."
        elif entry is None:
            warning = not Path(m.adapter).exists()
            text = f"No adapter file at {m.adapter}." if warning else "Looking at the adapter…"
        elif not entry.usable:
            text, warning = f"This adapter cannot be used: {entry.reason}.", True
        else:
            label, about = VARIANTS[adapter_variant(entry)]
            need = encoder_need(entry)
            pick = self.snapshot.encoders.get(entry.name)
            chosen = self.snapshot.find(m.image_encoder)
            if pick is None:
                warning = True
                have = (
                    f"⚠ Needs {need}, which is not in the library yet: download it on the Models tab, "
                    "or add its folder with Add model…"
                )
            elif chosen is not None and self._fits(m.image_encoder, pick):
                have = f"Needs {need}: using {chosen.name}."
            else:
                warning = True
                have = f"⚠ Needs {need}: choose the adapter again to use {pick.name}."
            text = f"{label}: {about}. {have}"
        base = self.snapshot.find(m.base) if m.base else None
        if base is not None and base.usable and is_inpainting(base):
            text = f"Base: an inpainting model, made for Inpaint (New picture repaints all of it). {text}"
        self.about.setText(text)
        self.about.setProperty("warning", warning)
        self.about.style().unpolish(self.about)
        self.about.style().polish(self.about)

    def encoder_missing(self) -> bool:
        """The chosen adapter needs an image encoder that the library does not have."""
        entry = self.snapshot.find(self.state.models.adapter)
        return entry is not None and entry.usable and entry.name not in self.snapshot.encoders

    # ------------------------------------------------------------------ loading status
    def set_loading(self, loading: bool, error: str = "") -> None:
        """The window says when the worker (re)loads the chosen models."""
        if loading:
            name = Path(self.state.models.base).name
            self._say(f"Loading {name}…", "")
        elif error:
            self._say("The models could not be loaded; see the message above.", "bad")
        elif not self.busy():
            self.status.hide()

    def _say(self, text: str, tone: str) -> None:
        self.status.setText(text)
        self.status.setProperty("tone", tone)
        self.status.style().unpolish(self.status)
        self.status.style().polish(self.status)
        self.status.show()

    # ------------------------------------------------------------------ adding
    def choose_and_add(self, folder: bool) -> None:
        start = self.library.root
        if folder:
            path = dialogs.open_folder(self, "model folder", "Add a model folder", start)
        else:
            path = dialogs.open_file(
                self,
                "model file",
                "Add a model file",
                "Model files (*.safetensors *.ckpt *.bin *.pt *.pth);;All files (*)",
                start,
            )
        if path:
            self.add_path(path)

    def add_path(self, path: str) -> None:
        """Look at ``path`` on the library thread; a dialog then shows what it is before adding it."""
        self._inspecting = str(path)
        self._say(f"Looking at {Path(path).name}…", "")
        self.library.inspect(str(path))

    def _on_inspected(self, path: str, detection: Any, error: str) -> None:
        if path != self._inspecting:
            return
        self._inspecting = ""
        self.status.hide()
        if detection is None:
            self.message.emit(error, "error")
            return
        self.dialog = AddModelDialog(detection, self)
        self.dialog.accepted.connect(lambda d=self.dialog: self._confirm(d))
        self.dialog.open()  # window-modal, and the event loop keeps running: the engine's signals too

    def _confirm(self, dialog: AddModelDialog) -> None:
        path = str(dialog.detection.path)
        self._adding = path
        self._say(f"Adding {Path(path).name}…", "")
        self.add_button.setEnabled(False)
        self.library.add(path, name=dialog.name.text().strip() or None, convert=dialog.convert.isChecked())

    def _on_progress(self, path: str, done: float, total: float) -> None:
        if path == self._adding and total > 0:
            self._say(f"Adding {Path(path).name}: checking its contents… {100 * done / total:.0f}%", "")

    def _on_added(self, path: str, entry: Any, error: str) -> None:
        if path != self._adding:
            return
        self._adding = ""
        self.add_button.setEnabled(True)
        self.status.hide()
        if entry is None:
            self.message.emit(error, "error")
            return
        note = f"Added {entry.name} to the library ({entry.architecture})."
        if not entry.usable:
            note = f"Added {entry.name} to the library; it cannot be used: {entry.reason}."
        elif entry.kind == "base":
            self.choose_base(str(entry.path))
            note += " It is now the base model."
        elif entry.kind == "adapter":
            self.choose_adapter(str(entry.path))
            note += " It is now the adapter."
            if self.encoder_missing():
                note += f" It needs {encoder_need(entry)}: add that too, or download it on the Models tab."
        elif entry.kind == "image_encoder" and not self.state.models.image_encoder:
            self.state.set_models(replace(self.state.models, image_encoder=str(entry.path)))
        elif entry.kind == "lora":
            self.loras.add(str(entry.path))
            note += " It is now in the LoRA list."
        self.message.emit(note, "note")

    def busy(self) -> bool:
        """Looking at or adding a model right now."""
        return bool(self._inspecting or self._adding)
