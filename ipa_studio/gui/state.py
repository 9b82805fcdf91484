"""The view state: what the panels show, in one place, and the only maker of requests.

Panels write into the state and listen to ``changed``; they never talk to each other or to the
worker. :meth:`ViewState.next_request` turns the state into one immutable ``GenerationRequest`` per
job (the only thing the worker ever sees), and :meth:`ViewState.apply_request` does the reverse for
"reuse these settings". Keeping both directions here is what makes that round trip testable.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from ipa_studio.core.errors import RequestError
from ipa_studio.core.presets import (
    SD15_LAYERS,
    BlockPreset,
    check_weights,
    compact_weights,
    layer_weights,
    load_presets,
    match_preset,
)
from ipa_studio.core.request import (
    ENCODER_FITS,
    SCHEDULERS,
    ControlSpec,
    EncoderView,
    GenerationRequest,
    HiresSpec,
    InitImage,
    LoraSpec,
    MaskSpec,
    ModelSpec,
    NegativeImage,
    Reference,
)
from ipa_studio.core.settings import LastValues, ModelPaths, ReferenceValue

MAX_SEED = 2**32 - 1
"""Seeds drawn by the app stay below 2**32 (what the command line draws too); larger ones from
elsewhere are still accepted up to 2**53, the largest whole number a spin box holds exactly."""
SEED_LIMIT = 2**53 - 1

LIMITS: dict[str, tuple[float, float]] = {
    # The window's own ranges: the widgets are built with them and values from the settings file
    # or a reused picture are brought inside them, so a box never holds what it cannot show.
    "scale": (0.0, 1.0),
    "steps": (1, 150),
    "guidance": (0.0, 30.0),
    "seed": (0, SEED_LIMIT),
    "width": (64, 2048),
    "height": (64, 2048),
    "num_images": (1, 8),
    "strength": (0.01, 1.0),
    "mask_padding": (0, 512),
    "mask_blur": (0, 64),
    "weight": (0.0, 2.0),
    "control_scale": (0.0, 2.0),
    "control_resolution": (64, 2048),
    "block_weight": (0.0, 2.0),
    "hires_scale": (1.05, 4.0),
    "hires_strength": (0.01, 1.0),
    "hires_steps": (0, 150),
    "lora_strength": (-2.0, 2.0),
}
SETTING_NAMES = {
    "scale": "λ",
    "steps": "steps",
    "guidance": "guidance",
    "seed": "seed",
    "width": "width",
    "height": "height",
    "num_images": "number of pictures",
    "hires_scale": "second pass upscale",
    "hires_strength": "second pass strength",
    "hires_steps": "second pass steps",
}

PRESETS: dict[str, tuple[float, bool]] = {
    # name: (λ, clear the prompt). Image-only is the paper's recipe: λ = 1 with an empty prompt.
    "image": (1.0, True),
    "balanced": (0.6, False),
    "text": (0.3, False),
}


@dataclass(frozen=True)
class ReferenceItem:
    """One reference card: the picture, its weight and its image-prompt controls.

    ``start`` / ``end``: the part of the steps it acts in (fractions). ``fit`` / ``box``: what the
    encoder sees (``box`` = left, top, side of the crop square, in the picture's pixels, kept while
    another fit is chosen so going back to "crop" finds it again). ``mask_path``: its region ("" =
    everywhere).
    """

    uid: int
    path: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    fit: str = "centre"
    box: tuple[int, int, int] | None = None
    mask_path: str = ""

    @property
    def view(self) -> EncoderView:
        """What the engine is told the encoder sees; "crop" before a square exists is the centre."""
        if self.fit == "crop":
            return EncoderView("crop", self.box) if self.box is not None else EncoderView()
        return EncoderView(self.fit)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ControlItem:
    """One ControlNet of the control panel: a photo, how it becomes a map, and the ControlNet.

    ``map_path`` is the map a request uses: empty while it is being made, or when making it failed
    (``map_problem`` says why). Changing the photo or how it is preprocessed empties it.
    """

    uid: int
    photo: str = ""
    preprocessor: str = "openpose"
    resolution: int = 512
    hands: bool = False
    face: bool = False
    model: str = ""
    """The ControlNet (a diffusers folder)."""
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    """The part of the denoising steps the ControlNet guides, as fractions (diffusers' rule)."""
    enabled: bool = True
    map_path: str = ""
    map_problem: str = ""
    model_kind: str = "unknown"
    model_problem: str = ""
    """Why the ControlNet cannot be used with the base model (from ``detect_controlnet``)."""

    @property
    def map_key(self) -> tuple[str, str, int, bool, bool]:
        """What the map depends on; nothing else (strength, steps, on/off) makes a new one."""
        return (self.photo, self.preprocessor, self.resolution, self.hands, self.face)


@dataclass(frozen=True)
class LoraItem:
    """One LoRA of the LoRA list: its file, strengths, on/off, and what it was found to be.

    ``text_strength`` None: the same as ``strength`` (A1111's rule). ``kind``: a short description
    for the list ("LCM few-step", "kohya LoRA for SD1.x"); ``problem``: why it cannot be used.
    """

    uid: int
    path: str
    strength: float = 1.0
    text_strength: float | None = None
    enabled: bool = True
    kind: str = ""
    problem: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).stem


_uids = itertools.count(1)

# Plain-value fields, each with the name of the signal argument that announces its change.
_FIELDS = (
    "prompt",
    "negative_prompt",
    "scale",
    "steps",
    "guidance",
    "seed",
    "seed_locked",
    "width",
    "height",
    "scheduler",
    "num_images",
)
# Img2img / inpainting: the mode, the start picture and its strength, the mask file and its options.
# ``mask_path`` names a PNG the canvas saved (or one reused from a picture's settings).
_INIT_FIELDS = ("mode", "init_path", "strength", "mask_path", "only_masked", "mask_padding", "mask_blur")
MODES = ("txt2img", "img2img", "inpaint")
# The second pass (hires fix): on/off and the fields of ``HiresSpec``. Each announces "hires".
_HIRES_FIELDS = ("hires_on", "hires_scale", "hires_strength", "hires_steps", "hires_upscaler")
UPSCALER_LABELS = {"lanczos": "Lanczos"}
"""The upscalers the window offers (``core.hires.UPSCALERS`` has no others built in)."""
EVERYTHING = "Everything"
"""The preset of the paper's adapter (every layer at λ): a plain λ in the request."""


class ViewState(QObject):
    """Everything a generation is made from. ``changed(name)`` fires once per real change."""

    changed = Signal(str)
    # A LoRA's strength or on/off changed (adding or removing one is changed("loras")): the row that
    # changed it already shows it, so the list is not rebuilt under a dragged slider.
    lora_changed = Signal(int)
    # A control's values changed (not added or removed: that is changed("controls")). Its own signal,
    # so one card updates and the others are not rebuilt while a slider is dragged.
    control_changed = Signal(int)
    # One reference's controls changed (window, view, region), not the list: changed("references").
    reference_changed = Signal(int)

    def __init__(self, last: LastValues | None = None, models: ModelPaths | None = None) -> None:
        super().__init__()
        last = last or LastValues()
        self.repairs: list[str] = []
        """What was wrong with the remembered values and what was done instead, for people."""
        self.prompt = last.prompt
        self.negative_prompt = last.negative_prompt
        self.scale: float = self._repaired("scale", last.scale)
        # The block map: a weight per UNet block or layer (a preset's shape), which the λ slider
        # scales. None = every layer at λ (the paper's adapter). ``block_preset`` names the preset
        # it came from, "" once it was edited into a map no preset has.
        self.block_weights, self.block_preset = self._restore_blocks(last.block_map, last.block_preset)
        self.hires_on = last.hires_on
        self.hires_scale = self._repaired("hires_scale", last.hires_scale)
        self.hires_strength = self._repaired("hires_strength", last.hires_strength)
        self.hires_steps = int(self._repaired("hires_steps", last.hires_steps))
        self.hires_upscaler = last.hires_upscaler if last.hires_upscaler in UPSCALER_LABELS else "lanczos"
        self.steps = int(self._repaired("steps", last.steps))
        self.guidance = self._repaired("guidance", last.guidance)
        self.seed = int(self._repaired("seed", last.seed))
        self.seed_locked = last.seed_locked
        # A seed typed or reused is used by the next generation even when it is not kept.
        self._seed_once = False
        self.width = _multiple_of_8(self._repaired("width", last.width))
        self.height = _multiple_of_8(self._repaired("height", last.height))
        self.scheduler = last.scheduler if last.scheduler in SCHEDULERS else "ddim"
        self.num_images = int(self._repaired("num_images", last.num_images))
        self.mode = "txt2img"
        self.init_path = ""
        self.strength = 0.75
        self.mask_path = ""
        self.only_masked = False
        self.mask_padding = 32
        self.mask_blur = 4
        self.references: list[ReferenceItem] = []
        # Negative image prompt: a picture for the unconditional branch and / or a noise amount.
        self.negative_path = ""
        self.negative_noise = 0.0
        self.controls: list[ControlItem] = []
        self.loras: list[LoraItem] = []
        # Textual inversions the library knows, by the name prompts use (the file's stem): a request
        # carries those whose name the prompt or the negative prompt holds.
        self.embedding_files: dict[str, str] = {}
        self.models = replace(models) if models is not None else ModelPaths()
        self.presets_path: Path | None = None
        """Where user presets are kept (None: ``core.presets``'s default file)."""
        self._restore_references(last.references)

    def _repaired(self, name: str, value: float) -> float:
        """``value`` brought inside the window's range for ``name``; a note says what changed."""
        low, high = LIMITS[name]
        fixed = _clamp(value, low, high)
        if fixed != value:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            if len(shown) > 24:
                shown = shown[:21] + "…"
            self.repairs.append(f"{SETTING_NAMES[name]} {shown} → {fixed:g}")
        return fixed

    def _restore_blocks(self, text: str, preset: str) -> tuple[dict[str, float] | None, str]:
        if not text:
            return None, EVERYTHING
        try:
            weights = check_weights(_parse_block_map(text), "The remembered block map")
        except (RequestError, ValueError) as exc:
            self.repairs.append(f"the block map ({exc}) → every layer")
            return None, EVERYTHING
        return weights, preset

    def _restore_references(self, saved: list[ReferenceValue]) -> None:
        lost = 0
        for ref in saved:
            if ref.path and Path(ref.path).is_file():
                weight = _clamp(ref.weight, *LIMITS["weight"])
                self.references.append(_remembered(next(_uids), ref, weight))
            else:
                lost += 1
        if lost:
            self.repairs.append(
                f"{lost} reference image{'s' if lost > 1 else ''} from last time could not be found any "
                "more and " + ("were" if lost > 1 else "was") + " left out"
            )

    def repairs_text(self) -> str:
        """One sentence for the window's notice, or "" when the remembered values were all fine."""
        if not self.repairs:
            return ""
        return "Some remembered settings could not be used as they were: " + "; ".join(self.repairs) + "."

    # ------------------------------------------------------------------ plain values
    def set(self, name: str, value: object) -> None:
        if name not in _FIELDS and name not in _INIT_FIELDS and name not in _HIRES_FIELDS:
            raise AttributeError(f"ViewState has no setting {name!r}")
        if name in _INIT_FIELDS:
            value = _init_value(name, value)
        if name in _HIRES_FIELDS:
            value = _hires_value(name, value)
        if name in LIMITS:
            value = _clamp(value, *LIMITS[name])  # type: ignore[arg-type]
            if name in ("steps", "seed", "width", "height", "num_images", "hires_steps"):
                value = int(value)
        if name == "scale":
            value = float(value)  # type: ignore[arg-type]
        if getattr(self, name) == value:
            return
        setattr(self, name, value)
        self.changed.emit("hires" if name in _HIRES_FIELDS else name)

    # ------------------------------------------------------------------ block map
    def layer_values(self) -> list[float]:
        """The block map's weight of each of the 16 cross-attention layers (``SD15_LAYERS`` order)."""
        return layer_weights(1.0 if self.block_weights is None else self.block_weights)

    def choose_block_preset(self, preset: BlockPreset) -> None:
        """Show ``preset`` on the block map; the λ slider keeps its value and scales it."""
        weights = None if _is_everything(preset.weights) else dict(preset.weights)
        self._set_blocks(weights, preset.name)

    def set_layer_weights(self, names: list[str], weight: float, presets: list[BlockPreset]) -> None:
        """Give the layers ``names`` the weight ``weight`` (an edit on the block map). The map keeps
        the name of a preset it then equals exactly, and otherwise is "Custom"."""
        weight = round(_clamp(float(weight), *LIMITS["block_weight"]), 4)
        values = self.layer_values()
        for i, layer in enumerate(SD15_LAYERS):
            if layer.name in names:
                values[i] = weight
        same = next((p for p in presets if layer_weights(p.weights) == values), None)
        if same is not None:
            self.choose_block_preset(same)
            return
        self._set_blocks(compact_weights(values), "")

    def _set_blocks(self, weights: dict[str, float] | None, preset: str) -> None:
        if (weights, preset) == (self.block_weights, self.block_preset):
            return
        self.block_weights, self.block_preset = weights, preset
        self.changed.emit("blocks")

    def request_scale(self) -> float | dict[str, float]:
        """λ for the request: the slider's value, or the block map times it."""
        if self.block_weights is None:
            return self.scale
        return {k: v * self.scale for k, v in self.block_weights.items()}

    def apply_preset(self, name: str) -> None:
        scale, clear_prompt = PRESETS[name]
        self.set("scale", scale)
        if clear_prompt:
            self.set("prompt", "")

    def choose_seed(self, seed: int) -> None:
        """A seed picked by the person (typed, the dice, a reused picture): the next generation uses
        it, kept or not; later ones draw new seeds unless the seed is kept."""
        self.set("seed", int(seed))
        self._seed_once = True

    def randomize_seed(self) -> int:
        """A new random seed for the next generation (the dice button)."""
        self.choose_seed(random.randint(0, MAX_SEED))
        return self.seed

    @property
    def seed_for_next(self) -> bool:
        """The next generation uses the seed shown (kept, or picked once), rather than a new one."""
        return self.seed_locked or self._seed_once

    # ------------------------------------------------------------------ references
    def add_reference(self, path: str | Path, weight: float = 1.0) -> ReferenceItem:
        item = ReferenceItem(next(_uids), str(path), float(weight))
        self.references.append(item)
        self.changed.emit("references")
        return item

    def remove_reference(self, uid: int) -> None:
        self.references = [r for r in self.references if r.uid != uid]
        self.changed.emit("references")

    def set_reference_weight(self, uid: int, weight: float) -> None:
        # No "references" signal: the card that changed the weight already shows it, and rebuilding
        # every card while a slider is being dragged would steal the mouse from it.
        self.references = [replace(r, weight=float(weight)) if r.uid == uid else r for r in self.references]

    def clear_references(self) -> None:
        self.references = []
        self.changed.emit("references")

    def reference(self, uid: int) -> ReferenceItem | None:
        return next((r for r in self.references if r.uid == uid), None)

    def update_reference(self, uid: int, **changes: object) -> ReferenceItem | None:
        """Change a reference's image-prompt controls (``start``, ``end``, ``fit``, ``box``,
        ``mask_path``); values are checked and brought into range. Emits ``reference_changed``."""
        old = self.reference(uid)
        if old is None:
            return None  # removed meanwhile (a file dialog was open, a mask was being saved)
        values = {name: _reference_value(name, value) for name, value in changes.items()}
        new = replace(old, **values)  # type: ignore[arg-type]
        if new.start > new.end:
            # The field just typed wins; the other follows, so the window never holds start > end.
            if "start" in changes:
                new = replace(new, end=new.start)
            else:
                new = replace(new, start=new.end)
        if new != old:
            self.references = [new if r.uid == uid else r for r in self.references]
            self.reference_changed.emit(uid)
        return new

    def set_negative(self, path: str | Path | None = None, noise: float | None = None) -> None:
        """The negative image (``""`` removes it) and / or its noise amount (0–1)."""
        changed = False
        if path is not None and str(path) != self.negative_path:
            self.negative_path = str(path)
            changed = True
        if noise is not None:
            value = round(_clamp(float(noise), 0.0, 1.0), 4)
            if value != self.negative_noise:
                self.negative_noise = value
                changed = True
        if changed:
            self.changed.emit("negative")

    def _negative_spec(self) -> NegativeImage | None:
        if not self.negative_path and self.negative_noise <= 0:
            return None
        return NegativeImage(self.negative_path or None, self.negative_noise)

    # ------------------------------------------------------------------ controls
    def add_control(self, **values: object) -> ControlItem:
        item = ControlItem(next(_uids), **values)  # type: ignore[arg-type]
        self.controls.append(item)
        self.changed.emit("controls")
        return item

    def remove_control(self, uid: int) -> None:
        self.controls = [c for c in self.controls if c.uid != uid]
        self.changed.emit("controls")

    def control(self, uid: int) -> ControlItem | None:
        return next((c for c in self.controls if c.uid == uid), None)

    def update_control(self, uid: int, **changes: object) -> ControlItem | None:
        """Change some values of one control; a new photo or preprocessing empties its map."""
        old = self.control(uid)
        if old is None:
            return None  # removed while its map was being made
        new = replace(old, **changes)  # type: ignore[arg-type]
        if new.map_key != old.map_key and "map_path" not in changes:
            new = replace(new, map_path="", map_problem="")
        if new != old:
            self.controls = [new if c.uid == uid else c for c in self.controls]
            self.control_changed.emit(uid)
        return new

    def _control_specs(self) -> tuple[ControlSpec, ...]:
        specs = []
        for n, c in enumerate(self.controls, start=1):
            if not c.enabled:
                continue
            name = f"Control {n}" if len(self.controls) > 1 else "The control"
            if not c.photo:
                raise RequestError(f"{name} has no photo yet: drop one on it, or switch it off.")
            if not c.model:
                raise RequestError(f"{name} needs a ControlNet: choose one, or switch the control off.")
            if c.model_problem:
                raise RequestError(f"{name}: its ControlNet cannot be used. {c.model_problem}")
            if not c.map_path:
                if c.map_problem:
                    raise RequestError(f"{name} has no map: {c.map_problem}")
                raise RequestError(
                    f"The map of {name.lower()} is still being made; generate again in a moment."
                )
            if not 0.0 <= c.start < c.end <= 1.0:
                raise RequestError(f"{name}: its guidance must start before it ends.")
            specs.append(ControlSpec(c.map_path, c.model, c.scale, c.start, c.end))
        return tuple(specs)

    # ------------------------------------------------------------------ LoRAs
    def add_lora(self, path: str | Path, strength: float = 1.0, **values: object) -> LoraItem:
        item = LoraItem(next(_uids), str(path), _clamp(float(strength), *LIMITS["lora_strength"]), **values)  # type: ignore[arg-type]
        self.loras.append(item)
        self.changed.emit("loras")
        return item

    def remove_lora(self, uid: int) -> None:
        self.loras = [x for x in self.loras if x.uid != uid]
        self.changed.emit("loras")

    def lora(self, uid: int) -> LoraItem | None:
        return next((x for x in self.loras if x.uid == uid), None)

    def update_lora(self, uid: int, **changes: object) -> LoraItem | None:
        old = self.lora(uid)
        if old is None:
            return None
        for key in ("strength", "text_strength"):
            if changes.get(key) is not None:
                changes[key] = _clamp(float(changes[key]), *LIMITS["lora_strength"])  # type: ignore[arg-type]
        new = replace(old, **changes)  # type: ignore[arg-type]
        if new != old:
            self.loras = [new if x.uid == uid else x for x in self.loras]
            self.lora_changed.emit(uid)
        return new

    def apply_fast_preset(self, scheduler: str, steps: int, guidance: float) -> None:
        """The Fast preset of a few-step LoRA: its sampler, steps and guidance (nothing else)."""
        self.set("scheduler", scheduler)
        self.set("steps", steps)
        self.set("guidance", guidance)

    def set_embedding_files(self, files: Mapping[str, str]) -> None:
        if dict(files) != self.embedding_files:
            self.embedding_files = dict(files)
            self.changed.emit("embeddings")

    def used_embeddings(self) -> tuple[str, ...]:
        """The files of the known embeddings whose names stand in the prompt or negative prompt."""
        words = set(_WORD.findall(self.prompt)) | set(_WORD.findall(self.negative_prompt))
        return tuple(path for name, path in sorted(self.embedding_files.items()) if name in words)

    def _lora_specs(self) -> tuple[LoraSpec, ...]:
        specs = []
        for item in self.loras:
            if item.enabled and item.problem:
                raise RequestError(
                    f"The LoRA {item.name} cannot be used: {item.problem} Remove it or switch it off."
                )
            specs.append(LoraSpec(item.path, item.strength, item.text_strength, item.enabled))
        return tuple(specs)

    # ------------------------------------------------------------------ models
    def set_models(self, models: ModelPaths) -> None:
        if models != self.models:
            self.models = replace(models)
            self.changed.emit("models")

    # ------------------------------------------------------------------ state → request
    def next_request(self) -> GenerationRequest:
        """The request for the next job; draws a fresh seed first unless the seed is locked."""
        request = self.build_request()  # check first: a refused job should not use up a seed
        if not self.seed_for_next:
            self.set("seed", random.randint(0, MAX_SEED))
            request = request.replace(seed=self.seed)
        self._seed_once = False
        return request

    def build_request(self) -> GenerationRequest:
        """The request the panels describe now, or :class:`RequestError` saying what is missing."""
        m = self.models
        if not m.base:
            raise RequestError("Choose a base model first: open the Models tab and pick or download one.")
        has_adapter = bool(m.adapter and m.image_encoder)
        if self.references and not has_adapter:
            missing = "the IP-Adapter file" if not m.adapter else "the image encoder folder"
            raise RequestError(
                f"Reference images need {missing}. Open the Models tab to pick or download it, "
                "or remove the reference images to generate from the prompt alone."
            )
        if not self.references and not self.prompt.strip():
            raise RequestError("Add a reference image or type a prompt, then generate.")
        init, mask = self._init_specs()
        return GenerationRequest(
            models=ModelSpec(m.base, m.adapter or None, m.image_encoder or None)
            if has_adapter
            else ModelSpec(m.base),
            references=self._reference_specs(),
            controls=self._control_specs(),
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            scale=self.request_scale(),
            steps=self.steps,
            guidance=self.guidance,
            seed=self.seed,
            width=self.width,
            height=self.height,
            scheduler=self.scheduler,  # type: ignore[arg-type]
            num_images=self.num_images,
            init=init,
            mask=mask,
            negative_image=self._negative_spec() if self.references else None,
            hires=HiresSpec(self.hires_scale, self.hires_strength, self.hires_steps, self.hires_upscaler)
            if self.hires_on
            else None,
            loras=self._lora_specs(),
            embeddings=self.used_embeddings(),
        )

    def _reference_specs(self) -> tuple[Reference, ...]:
        specs = []
        for n, r in enumerate(self.references, start=1):
            if r.start >= r.end:
                name = f"Reference image {n}" if len(self.references) > 1 else "The reference image"
                raise RequestError(
                    f"{name} acts from {r.start:g} to {r.end:g} of the steps: its start must come "
                    "before its end (open More on its card)."
                )
            specs.append(Reference(r.path, r.weight, r.start, r.end, r.mask_path or None, r.view))
        return tuple(specs)

    def _init_specs(self) -> tuple[InitImage | None, MaskSpec | None]:
        if self.mode == "txt2img":
            return None, None
        if not self.init_path:
            raise RequestError(
                f"{'Inpainting' if self.mode == 'inpaint' else 'Img2img'} starts from a picture: open, "
                "paste or drop one on the Canvas, or send a result there."
            )
        init = InitImage(self.init_path, self.strength)
        if self.mode == "img2img":
            return init, None
        if not self.mask_path:
            raise RequestError(
                "Paint the part to repaint on the Canvas first (it shows in colour), or switch to Img2img."
            )
        return init, MaskSpec(self.mask_path, self.only_masked, self.mask_padding, self.mask_blur)

    # ------------------------------------------------------------------ request → state
    def apply_request(self, request: GenerationRequest) -> list[str]:
        """Put a past request's settings into the panels. Returns notes on what could not be restored.

        The next Generate uses the picture's seed, so it makes the same picture again; whether later
        generations keep that seed stays the person's choice ("Keep"), as it was.
        """
        notes: list[str] = []
        notes.extend(self._apply_init(request))
        changed = []
        for name in _FIELDS:
            if name in ("scale", "seed_locked", "seed"):
                continue
            value = getattr(request, name)
            if name == "scheduler" and value not in SCHEDULERS:
                continue
            if name in LIMITS and _clamp(value, *LIMITS[name]) != value:
                changed.append(f"{SETTING_NAMES[name]} {value} → {_clamp(value, *LIMITS[name]):g}")
            self.set(name, value)
        if _clamp(request.seed, *LIMITS["seed"]) != request.seed:
            changed.append(f"seed {request.seed} → {_clamp(request.seed, *LIMITS['seed']):g}")
        self.choose_seed(int(_clamp(request.seed, *LIMITS["seed"])))
        if changed:
            notes.append(
                "Some of its settings are outside what the window offers and were brought within range: "
                + "; ".join(changed)
                + "."
            )
        notes.extend(self.apply_scale(request.scale))
        hires = request.hires
        if hires is not None:
            self.set("hires_scale", hires.scale)
            self.set("hires_strength", hires.strength)
            self.set("hires_steps", hires.steps)
            if hires.upscaler in UPSCALER_LABELS:
                self.set("hires_upscaler", hires.upscaler)
            else:
                notes.append(
                    f"Its second pass used the upscaler '{hires.upscaler}', which is not available here; "
                    "Lanczos is used instead."
                )
                self.set("hires_upscaler", "lanczos")
        self.set("hires_on", hires is not None)

        notes.extend(self._apply_references(request))

        notes.extend(self._apply_controls(request.controls))
        notes.extend(self._apply_loras(request))

        models = request.models
        wanted = ModelPaths(str(models.base), str(models.adapter or ""), str(models.image_encoder or ""))
        present = [p for p in (wanted.base, wanted.adapter, wanted.image_encoder) if p]
        if all(Path(p).exists() for p in present):
            # An image made without an adapter keeps the current one: it is needed for references.
            if not wanted.adapter:
                wanted = replace(wanted, adapter=self.models.adapter, image_encoder=self.models.image_encoder)
            self.set_models(wanted)
        elif wanted != self.models:
            notes.append(
                "The models this image was made with are not on this computer; kept the current ones."
            )
        return notes

    def _apply_references(self, request: GenerationRequest) -> list[str]:
        """The references with their weights, windows, views and regions, and the negative image."""
        notes: list[str] = []
        self.references = []
        lost = lost_masks = 0
        for ref in request.references:
            if not (isinstance(ref.image, (str, Path)) and Path(ref.image).is_file()):
                lost += 1
                continue
            mask = str(ref.mask) if isinstance(ref.mask, (str, Path)) else ""
            if ref.mask is not None and not (mask and Path(mask).is_file()):
                lost_masks += 1
                mask = ""
            view = ref.view
            self.references.append(
                ReferenceItem(
                    next(_uids),
                    str(ref.image),
                    float(ref.weight),
                    float(_clamp(ref.start, 0.0, 1.0)),
                    float(_clamp(ref.end, 0.0, 1.0)),
                    view.fit if view.fit in ENCODER_FITS else "centre",
                    tuple(int(v) for v in view.box) if view.box is not None else None,  # type: ignore[arg-type]
                    mask,
                )
            )
        self.changed.emit("references")
        if lost:
            notes.append(
                f"{lost} reference image{'s' if lost > 1 else ''} could not be found any more "
                f"({'they were' if lost > 1 else 'it was'} moved, deleted or only pasted) and "
                f"{'were' if lost > 1 else 'was'} left out."
            )
        if lost_masks:
            notes.append(
                f"The region mask of {lost_masks} reference image{'s' if lost_masks > 1 else ''} could not "
                f"be found any more; {'they act' if lost_masks > 1 else 'it acts'} on the whole picture "
                "until a region is painted again."
            )
        negative = request.negative_image
        path = ""
        if negative is not None and negative.image is not None:
            if isinstance(negative.image, (str, Path)) and Path(negative.image).is_file():
                path = str(negative.image)
            else:
                notes.append("Its negative image could not be found any more and was left out.")
        self.negative_path = path
        self.negative_noise = round(_clamp(float(negative.noise), 0.0, 1.0), 4) if negative else 0.0
        self.changed.emit("negative")
        return notes

    def apply_scale(self, scale: float | Mapping[str, float]) -> list[str]:
        """The slider and the block map for a request's λ: a preset at a strength where one gives
        exactly these layer values (``match_preset``), otherwise the map itself at λ 1."""
        if not isinstance(scale, Mapping):
            self.set("scale", float(scale))
            self._set_blocks(None, EVERYTHING)
            return []
        weights = {str(k): float(v) for k, v in scale.items()}
        found = match_preset(weights, load_presets(self.presets_path))
        if found is not None and found[1] <= LIMITS["scale"][1]:
            preset, strength = found
            self.set("scale", strength)
            self.choose_block_preset(preset)
            return []
        values = layer_weights(weights)
        if max(values) > LIMITS["block_weight"][1]:
            weights = compact_weights([min(v, LIMITS["block_weight"][1]) for v in values])
            note = [f"Its λ per block went above {LIMITS['block_weight'][1]:g} and was brought to it."]
        else:
            note = []
        self.set("scale", 1.0)
        self._set_blocks(weights, "")
        return note

    def _apply_init(self, request: GenerationRequest) -> list[str]:
        """Restore the start picture, strength and mask; the mode follows the request.

        Set in this order (picture, then mask) so the canvas opens the picture before its mask.
        """
        init, mask = request.init, request.mask
        if init is None:
            self.set("mode", "txt2img")
            return []
        path = str(init.image) if isinstance(init.image, (str, Path)) else ""
        if not path or not Path(path).is_file():
            self.set("mode", "txt2img")
            return [
                f"The picture this {request.mode} started from could not be found any more (moved, "
                "deleted or only pasted); its other settings were restored."
            ]
        self.set("init_path", path)
        self.set("strength", init.strength)
        if mask is None:
            self.set("mode", "img2img")
            return []
        self.set("only_masked", mask.only_masked)
        self.set("mask_padding", mask.padding)
        self.set("mask_blur", mask.blur)
        mask_path = str(mask.image) if isinstance(mask.image, (str, Path)) else ""
        if not mask_path or not Path(mask_path).is_file():
            self.set("mode", "img2img")
            return ["Its mask could not be found any more: paint it again on the Canvas to inpaint."]
        self.set("mask_path", mask_path)
        self.set("mode", "inpaint")
        return []

    def _apply_controls(self, controls: tuple[ControlSpec, ...]) -> list[str]:
        # A request holds maps, not the photos they were made from: each comes back as a map used
        # as it is, which makes exactly the same picture.
        self.controls = []
        lost = 0
        for spec in controls:
            if isinstance(spec.image, (str, Path)) and Path(spec.image).is_file():
                path = str(spec.image)
                self.controls.append(
                    ControlItem(
                        next(_uids),
                        photo=path,
                        preprocessor="none",
                        model=str(spec.model),
                        scale=float(spec.scale),
                        start=float(spec.start),
                        end=float(spec.end),
                        map_path=path,
                    )
                )
            else:
                lost += 1
        self.changed.emit("controls")
        if not lost:
            return []
        return [
            f"{lost} control map{'s' if lost > 1 else ''} could not be found any more and "
            f"{'were' if lost > 1 else 'was'} left out."
        ]

    def _apply_loras(self, request: GenerationRequest) -> list[str]:
        """The picture's LoRAs (strengths, on/off) and embeddings, where their files are here."""
        kept = {item.path: item for item in self.loras}
        self.loras = []
        missing = []
        for spec in request.loras:
            path = str(spec.path)
            if not Path(path).is_file():
                missing.append(Path(path).stem)
                continue
            old = kept.get(path)
            self.loras.append(
                LoraItem(
                    next(_uids),
                    path,
                    float(spec.strength),
                    None if spec.text_strength is None else float(spec.text_strength),
                    bool(spec.enabled),
                    kind=old.kind if old else "",
                    problem=old.problem if old else "",
                )
            )
        self.changed.emit("loras")
        files = dict(self.embedding_files)
        lost_embeddings = []
        for item in request.embeddings:
            path = Path(item)
            if path.is_file():
                files.setdefault(path.stem, str(path))
            else:
                lost_embeddings.append(path.stem)
        self.set_embedding_files(files)
        notes = []
        if missing:
            notes.append(
                f"The LoRA{'s' if len(missing) > 1 else ''} {', '.join(missing)} could not be found on this "
                f"computer and {'were' if len(missing) > 1 else 'was'} left out; the picture will differ."
            )
        if lost_embeddings:
            notes.append(
                f"The embedding{'s' if len(lost_embeddings) > 1 else ''} {', '.join(lost_embeddings)} could "
                "not be found on this computer; the prompt names them, but they will not act."
            )
        return notes

    # ------------------------------------------------------------------ persistence
    def last_values(self) -> LastValues:
        return LastValues(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            scale=self.scale,
            steps=self.steps,
            guidance=self.guidance,
            seed=self.seed,
            seed_locked=self.seed_locked,
            width=self.width,
            height=self.height,
            scheduler=self.scheduler,
            num_images=self.num_images,
            references=[
                ReferenceValue(
                    r.path,
                    r.weight,
                    r.start,
                    r.end,
                    r.fit,
                    ",".join(str(v) for v in r.box) if r.box is not None else "",
                    r.mask_path,
                )
                for r in self.references
            ],
            block_map=",".join(f"{k}={v!r}" for k, v in (self.block_weights or {}).items()),
            block_preset=self.block_preset if self.block_weights is not None else "",
            hires_on=self.hires_on,
            hires_scale=self.hires_scale,
            hires_strength=self.hires_strength,
            hires_steps=self.hires_steps,
            hires_upscaler=self.hires_upscaler,
        )


def _remembered(uid: int, ref: ReferenceValue, weight: float) -> ReferenceItem:
    """A reference from the settings file; a control it cannot use goes back to its default (the
    file is edited by hand at times, and a mask may have been deleted since)."""
    start, end = _clamp(ref.start, 0.0, 1.0), _clamp(ref.end, 0.0, 1.0)
    if start > end:
        start, end = 0.0, 1.0
    fit = ref.fit if ref.fit in ENCODER_FITS else "centre"
    box = None
    try:
        left, top, side = (int(v) for v in ref.crop.split(","))
        if side >= 1 and left >= 0 and top >= 0:
            box = (left, top, side)
    except ValueError:
        pass
    mask = ref.mask if ref.mask and Path(ref.mask).is_file() else ""
    return ReferenceItem(uid, ref.path, weight, start, end, fit, box, mask)


_WORD = re.compile(r"[^\s,()\[\]{}:|<>]+")
"""A word of a prompt as an embedding name can stand in it (between spaces, commas, brackets)."""


def _multiple_of_8(value: float) -> int:
    low, high = LIMITS["width"]
    return int(min(max(round(value / 8) * 8, low), high))


def _init_value(name: str, value: object) -> object:
    """Check and normalise an img2img / inpainting setting before it enters the state."""
    if name == "mode":
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {value!r}")
        return value
    if name in ("init_path", "mask_path"):
        return str(value or "")
    if name == "strength":
        # Strength 0 would keep the picture unchanged; the engine refuses it, so the floor is 0.01.
        return round(_clamp(float(value), 0.01, 1.0), 4)  # type: ignore[arg-type]
    if name == "only_masked":
        return bool(value)
    return max(0, int(value))  # type: ignore[call-overload]


def _reference_value(name: str, value: object) -> object:
    """Check and normalise one of a reference's image-prompt controls."""
    if name in ("start", "end"):
        return round(_clamp(float(value), 0.0, 1.0), 4)  # type: ignore[arg-type]
    if name == "fit":
        if value not in ENCODER_FITS:
            raise ValueError(f"fit must be one of {', '.join(ENCODER_FITS)}, not {value!r}")
        return value
    if name == "box":
        if value is None:
            return None
        left, top, side = (int(v) for v in value)  # type: ignore[union-attr]
        if side < 1 or left < 0 or top < 0:
            raise ValueError(f"a crop square needs a positive side inside the picture, not {value!r}")
        return (left, top, side)
    if name == "mask_path":
        return str(value or "")
    if name == "weight":
        return float(_clamp(float(value), *LIMITS["weight"]))  # type: ignore[arg-type]
    raise AttributeError(f"a reference has no setting {name!r}")


def _parse_block_map(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[name.strip()] = float(value)
    return out


def _hires_value(name: str, value: object) -> object:
    if name == "hires_on":
        return bool(value)
    if name == "hires_upscaler":
        if value not in UPSCALER_LABELS:
            raise ValueError(f"the upscaler must be one of {', '.join(UPSCALER_LABELS)}, not {value!r}")
        return value
    if name == "hires_steps":
        return int(value)  # type: ignore[call-overload]
    return round(float(value), 4)  # type: ignore[arg-type]


def _is_everything(weights: Mapping[str, float]) -> bool:
    return all(w == 1.0 for w in layer_weights(weights))


def within_limits(name: str, value: float) -> float:
    """``value`` brought inside the window's range for the setting ``name`` (see ``LIMITS``)."""
    return _clamp(value, *LIMITS[name])


def _clamp(value: float, low: float, high: float) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        return low
    return min(max(value, low), high)
