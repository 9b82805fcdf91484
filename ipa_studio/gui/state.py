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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from ipa_studio.core.errors import RequestError
from ipa_studio.core.request import SCHEDULERS, GenerationRequest, ModelSpec, Reference
from ipa_studio.core.settings import LastValues, ModelPaths

MAX_SEED = 2**32 - 1
"""Seeds drawn by the app stay below 2**32 (what the command line draws too); larger ones from
elsewhere are still accepted up to 2**53, the largest whole number a spin box holds exactly."""
SEED_LIMIT = 2**53 - 1

PRESETS: dict[str, tuple[float, bool]] = {
    # name: (λ, clear the prompt). Image-only is the paper's recipe: λ = 1 with an empty prompt.
    "image": (1.0, True),
    "balanced": (0.6, False),
    "text": (0.3, False),
}


@dataclass(frozen=True)
class ReferenceItem:
    uid: int
    path: str
    weight: float = 1.0


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


class ViewState(QObject):
    """Everything a generation is made from. ``changed(name)`` fires once per real change."""

    changed = Signal(str)

    def __init__(self, last: LastValues | None = None, models: ModelPaths | None = None) -> None:
        super().__init__()
        last = last or LastValues()
        self.prompt = last.prompt
        self.negative_prompt = last.negative_prompt
        self.scale: float = _clamp(last.scale, 0.0, 1.0)
        # λ per UNet block, only when reused from an image made that way (the command line can);
        # the window shows it and any move of the slider replaces it with one number.
        self.scale_blocks: dict[str, float] | None = None
        self.steps = max(1, last.steps)
        self.guidance = last.guidance
        self.seed = int(_clamp(last.seed, 0, SEED_LIMIT))
        self.seed_locked = last.seed_locked
        self.width = last.width
        self.height = last.height
        self.scheduler = last.scheduler if last.scheduler in SCHEDULERS else "ddim"
        self.num_images = max(1, last.num_images)
        self.references: list[ReferenceItem] = []
        self.models = replace(models) if models is not None else ModelPaths()

    # ------------------------------------------------------------------ plain values
    def set(self, name: str, value: object) -> None:
        if name not in _FIELDS:
            raise AttributeError(f"ViewState has no setting {name!r}")
        if name == "scale":
            value = _clamp(float(value), 0.0, 1.0)  # type: ignore[arg-type]
            if self.scale_blocks is not None:
                self.scale_blocks = None
                self.scale = value
                self.changed.emit("scale")
                return
        if getattr(self, name) == value:
            return
        setattr(self, name, value)
        self.changed.emit(name)

    def apply_preset(self, name: str) -> None:
        scale, clear_prompt = PRESETS[name]
        self.set("scale", scale)
        if clear_prompt:
            self.set("prompt", "")

    def randomize_seed(self) -> int:
        self.set("seed", random.randint(0, MAX_SEED))
        return self.seed

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

    # ------------------------------------------------------------------ models
    def set_models(self, models: ModelPaths) -> None:
        if models != self.models:
            self.models = replace(models)
            self.changed.emit("models")

    # ------------------------------------------------------------------ state → request
    def next_request(self) -> GenerationRequest:
        """The request for the next job; draws a fresh seed first unless the seed is locked."""
        request = self.build_request()  # check first: a refused job should not use up a seed
        if not self.seed_locked:
            self.randomize_seed()
            request = request.replace(seed=self.seed)
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
        return GenerationRequest(
            models=ModelSpec(m.base, m.adapter or None, m.image_encoder or None)
            if has_adapter
            else ModelSpec(m.base),
            references=tuple(Reference(r.path, r.weight) for r in self.references),
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            scale=dict(self.scale_blocks) if self.scale_blocks is not None else self.scale,
            steps=self.steps,
            guidance=self.guidance,
            seed=self.seed,
            width=self.width,
            height=self.height,
            scheduler=self.scheduler,  # type: ignore[arg-type]
            num_images=self.num_images,
        )

    # ------------------------------------------------------------------ request → state
    def apply_request(self, request: GenerationRequest) -> list[str]:
        """Put a past request's settings into the panels. Returns notes on what could not be restored.

        The seed is locked, so pressing Generate makes the same picture again.
        """
        notes: list[str] = []
        if request.init is not None or request.mask is not None or request.controls:
            notes.append(
                f"This image was made with {request.mode}, which the window does not offer yet; "
                "only its prompt, references and settings were restored."
            )
        for name in _FIELDS:
            if name in ("scale", "seed_locked"):
                continue
            value = getattr(request, name)
            if name == "scheduler" and value not in SCHEDULERS:
                continue
            self.set(name, value)
        if isinstance(request.scale, Mapping):
            self.scale_blocks = {str(k): float(v) for k, v in request.scale.items()}
            self.scale = float(self.scale_blocks.get("default", 0.0))
            self.changed.emit("scale")
        else:
            self.set("scale", float(request.scale))
        self.set("seed_locked", True)

        self.references = []
        lost = 0
        for ref in request.references:
            if isinstance(ref.image, (str, Path)) and Path(ref.image).is_file():
                self.references.append(ReferenceItem(next(_uids), str(ref.image), float(ref.weight)))
            else:
                lost += 1
        self.changed.emit("references")
        if lost:
            notes.append(
                f"{lost} reference image{'s' if lost > 1 else ''} could not be found any more "
                f"({'they were' if lost > 1 else 'it was'} moved, deleted or only pasted) and "
                f"{'were' if lost > 1 else 'was'} left out."
            )

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
        )


def _clamp(value: float, low: float, high: float) -> float:
    if not math.isfinite(value):
        return low
    return min(max(value, low), high)
