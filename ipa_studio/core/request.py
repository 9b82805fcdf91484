"""Immutable descriptions of one generation job.

Everything a generation needs travels in one frozen ``GenerationRequest``; the engine never reads
settings from anywhere else, so a request can be queued, logged, saved into PNG metadata and replayed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

ImageSource = str | Path | Image.Image
"""A path to an image file, or an image already in memory (pasted, dropped, a previous result)."""

SchedulerName = Literal["ddim", "dpm++", "euler-a", "lcm", "tcd"]
SCHEDULERS: tuple[str, ...] = ("ddim", "dpm++", "euler-a", "lcm", "tcd")
"""``lcm`` / ``tcd``: the few-step samplers of LCM-LoRA and TCD-LoRA (4–8 steps, guidance 1–2); on
a plain SD1.5 model without such a LoRA they make blurred pictures (see ``core/fewstep.py``)."""

Scale = float | Mapping[str, float]
"""λ: one number for every layer, or a mapping from UNet block prefix to λ.

Block prefixes are the UNet's module names, for example ``"down_blocks.2"``, ``"mid_block"`` or
``"up_blocks.1.attentions.1"``. A layer takes the λ of the longest matching prefix; a ``"default"``
entry (0 when absent) covers layers no prefix matches.
"""


EncoderFit = Literal["centre", "crop", "pad", "tile"]
ENCODER_FITS: tuple[str, ...] = ("centre", "crop", "pad", "tile")


@dataclass(frozen=True)
class EncoderView:
    """What part of a reference the image encoder sees (its input is one square, e.g. 224×224).

    ``"centre"``: the centre square that CLIP's own preprocessing cuts (the default, bit for bit).
    ``"crop"``: a square of the picture, ``box`` = (left, top, side) in the picture's pixels.
    ``"pad"``: the whole picture on a black square (nothing cut, the subject smaller).
    ``"tile"``: the whole picture as up to four overlapping squares along its long side, each
    encoded; their tokens join as one reference (nothing cut, nothing shrunk).
    """

    fit: EncoderFit = "centre"
    box: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Reference:
    """One image prompt and its weight among the other references (1.0 = full share).

    ``start`` / ``end``: the part of the denoising steps (fractions, the ControlNet rule) in which
    this reference acts; outside it, its attention is not computed at all. ``mask``: where in the
    picture it acts (white = here), as attention masks inside the decoupled attention; references
    without a mask share one attention, each masked one has its own. ``view``: what the encoder sees.
    """

    image: ImageSource
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mask: ImageSource | None = None
    view: EncoderView = field(default_factory=EncoderView)


@dataclass(frozen=True)
class NegativeImage:
    """What the image prompt's unconditional (classifier-free guidance) branch sees.

    By default that branch is a zero image (as the paper and diffusers do). ``image``: a picture whose
    encoder tokens take its place, so the result moves away from it. ``noise`` (0–1): a noised
    unconditional picture instead, ``image`` (or, without one, each reference itself) faded towards
    uniform noise by this much; 1 is pure noise.
    """

    image: ImageSource | None = None
    noise: float = 0.0


@dataclass(frozen=True)
class HiresSpec:
    """Second pass ("hires fix"): upscale the finished picture by ``scale`` and repaint it with
    img2img at ``strength`` at the larger size, with the same prompt, references and seed.

    ``steps`` 0 uses the request's steps. ``upscaler`` is ``"lanczos"`` (the only one built in).
    """

    scale: float = 2.0
    strength: float = 0.5
    steps: int = 0
    upscaler: str = "lanczos"


@dataclass(frozen=True)
class InitImage:
    """Img2img / inpainting source. ``strength`` 1.0 repaints fully, 0.0 keeps the image."""

    image: ImageSource
    strength: float = 0.75


@dataclass(frozen=True)
class MaskSpec:
    """Inpainting mask: white = repaint, black = keep; grey edges blend.

    ``only_masked`` repaints just the mask's bounding box (plus ``padding`` pixels of context),
    generated at the request's full width × height and pasted back, so a small masked area gets
    the model's full resolution. ``blur`` softens the inside of the mask edge when the result is
    blended over the original; pixels outside the mask always stay exactly as they were.
    """

    image: ImageSource
    only_masked: bool = False
    padding: int = 32
    blur: int = 4


@dataclass(frozen=True)
class ControlSpec:
    """One ControlNet: the control map (already preprocessed), the model and its strength."""

    image: ImageSource
    model: str | Path
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA applied on top of the base model for one job.

    ``strength`` scales its UNet part; ``text_strength`` its text-encoder part (``None``: the same as
    ``strength``, as A1111's ``<lora:name:1>`` does). A disabled LoRA stays listed but is not applied.
    """

    path: str | Path
    strength: float = 1.0
    text_strength: float | None = None
    enabled: bool = True


@dataclass(frozen=True)
class ModelSpec:
    """Which files to run: base model (diffusers folder), IP-Adapter checkpoint, image encoder."""

    base: str | Path
    adapter: str | Path | None = None
    image_encoder: str | Path | None = None


@dataclass(frozen=True)
class GenerationRequest:
    models: ModelSpec
    references: tuple[Reference, ...] = ()
    prompt: str = ""
    negative_prompt: str = ""
    scale: Scale = 1.0
    steps: int = 50
    guidance: float = 7.5
    seed: int = 0
    width: int = 512
    height: int = 512
    scheduler: SchedulerName = "ddim"
    num_images: int = 1
    init: InitImage | None = None
    mask: MaskSpec | None = None
    controls: tuple[ControlSpec, ...] = field(default_factory=tuple)
    negative_image: NegativeImage | None = None
    hires: HiresSpec | None = None
    loras: tuple[LoraSpec, ...] = ()
    # Textual-inversion files; each is used in the prompts by its name (the file's stem).
    embeddings: tuple[str | Path, ...] = ()

    @property
    def mode(self) -> str:
        """Human name of the job kind, for metadata and logs."""
        if self.mask is not None:
            base = "inpaint"
        elif self.init is not None:
            base = "img2img"
        else:
            base = "txt2img"
        return base + ("+controlnet" if self.controls else "") + ("+hires" if self.hires else "")

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)
