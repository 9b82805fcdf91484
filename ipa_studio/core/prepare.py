"""Checking a request and reading its inputs, before any model work starts.

Two steps, both cheap and both before a weight file is opened:

- ``check_request`` looks only at the numbers and names in a request: every setting is range-checked
  with a message that names it, so a typo (``--guidance 1e308``, a NaN from a script, a 100 000-pixel
  width) is refused in words instead of producing a black picture or exhausting memory later.
- ``prepare`` reads every image the request names and returns a ``Prepared``: the pictures at the
  size the UNet will work at, with what each mode needs spelled out as fields, so the denoising loop
  reads typed values rather than string keys.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image

from ipa_studio.core import compose
from ipa_studio.core.errors import RequestError
from ipa_studio.core.images import load_image, load_mask
from ipa_studio.core.references import check_view
from ipa_studio.core.request import SCHEDULERS, EncoderView, GenerationRequest

# Ranges a request may use. They are wider than the window's controls (which stay where pictures are
# good) and narrow enough that nothing outside them can do more than waste a run or memory.
MAX_STEPS = 1000  # the SD1.5 schedulers have 1000 training timesteps: more steps cannot exist
MAX_GUIDANCE = 100.0
MAX_SCALE = 2.0  # λ: 1 follows the references fully; above 2 the image branch only burns
MAX_WEIGHT = 2.0
MAX_CONTROL_SCALE = 2.0
MAX_SIDE = 4096  # per side of the picture the UNet works on
MAX_IMAGES = 16  # pictures in one job; they run as one batch
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_MASK_PADDING = 4096
MAX_MASK_BLUR = 256
MAX_HIRES_SCALE = 4.0
MAX_LORA_STRENGTH = 10.0  # either sign: negative strengths remove a LoRA's effect (A1111 allows them)


@dataclass(frozen=True)
class Start:
    """The picture img2img and inpainting start from: as given, and at the working size."""

    original: Image.Image
    work: Image.Image


@dataclass(frozen=True)
class Mask:
    """The inpainting mask (white = repaint) at the picture's own size and at the working size."""

    original: Image.Image
    work: Image.Image


@dataclass(frozen=True)
class PreparedReference:
    """One reference that takes part (weight above 0), read and checked."""

    image: Image.Image
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    view: EncoderView = field(default_factory=EncoderView)
    region: Mask | None = None
    """Where it acts (white = here), at the picture's size and at the working size."""


@dataclass(frozen=True)
class Prepared:
    """Everything a generation reads from disk or memory, decoded and checked.

    txt2img needs only ``references`` and ``size``; img2img adds ``start``; inpainting adds ``mask``
    (always together with ``start``); ControlNet adds ``controls`` (one map per ``request.controls``).
    With "masked area only", ``crop`` is the box of the original picture that is being repainted,
    and ``start`` / ``mask`` / ``controls`` / ``size`` describe that box scaled to the request's size.
    """

    references: tuple[PreparedReference, ...]
    """References at weight 0 are left out (they contribute nothing, and cost no encoder call)."""
    original_size: tuple[int, int]
    """The size the finished picture is handed back at."""
    size: tuple[int, int]
    """The size the UNet works at (multiples of 8)."""
    start: Start | None = None
    mask: Mask | None = None
    controls: tuple[Image.Image, ...] = ()
    crop: tuple[int, int, int, int] | None = None
    notices: tuple[str, ...] = field(default_factory=tuple)
    """Things the user should know that did not stop the job (e.g. a mask that was scaled)."""
    negative: Image.Image | None = None
    """The negative image prompt's picture (``request.negative_image.image``), if any."""

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(ref.weight for ref in self.references)

    def replace(self, **changes) -> Prepared:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- numbers


def _number(value: object, what: str, low: float, high: float, *, low_open: bool = False) -> float:
    """``value`` as a float in [low, high] (in (low, high] with ``low_open``), else a RequestError
    that names ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RequestError(f"{what} must be a number (got {value!r}).")
    number = float(value)
    if not math.isfinite(number):
        raise RequestError(f"{what} must be a finite number (got {value!r}).")
    if low_open and not low < number <= high:
        raise RequestError(f"{what} must be above {low:g} and at most {high:g} (got {value!r}).")
    if not low <= number <= high:
        raise RequestError(f"{what} must be from {low:g} to {high:g} (got {value!r}).")
    return number


def _whole(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestError(f"{what} must be a whole number (got {value!r}).")
    if not low <= value <= high:
        raise RequestError(f"{what} must be from {low} to {high} (got {value}).")
    return int(value)


def check_scale(scale: object) -> None:
    """λ: one number, or a mapping from UNet block prefix to a number."""
    if isinstance(scale, Mapping):
        if not scale:
            raise RequestError("Per-block λ needs at least one block.")
        for name, value in scale.items():
            if not isinstance(name, str) or not name.strip():
                raise RequestError(f"A per-block λ entry has no block name ({name!r}).")
            _number(value, f"λ for '{name}'", 0.0, MAX_SCALE)
    else:
        _number(scale, "λ (image strength)", 0.0, MAX_SCALE)


FEW_STEP_MAX_STEPS = 50
"""LCM / TCD: diffusers' ``original_inference_steps`` for SD1.5."""


def check_request(r: GenerationRequest) -> None:
    """Refuse any setting out of range, in words that name it. Reads no file."""
    _whole(r.steps, "Steps", 1, MAX_STEPS)
    _number(r.guidance, "Guidance", 0.0, MAX_GUIDANCE)
    _whole(r.seed, "Seed", 0, MAX_SEED)
    _whole(r.num_images, "The number of images", 1, MAX_IMAGES)
    # Without a start picture the request's size is the picture's size; with one it matters only
    # for "masked area only", which generates at the request's size.
    if r.init is None or (r.mask is not None and r.mask.only_masked):
        _whole(r.width, "Width", compose.MIN_SIDE, MAX_SIDE)
        _whole(r.height, "Height", compose.MIN_SIDE, MAX_SIDE)
    if r.scheduler not in SCHEDULERS:
        raise RequestError(f"Unknown scheduler '{r.scheduler}'. Choose one of: {', '.join(SCHEDULERS)}.")
    if r.scheduler in ("lcm", "tcd") and r.steps > FEW_STEP_MAX_STEPS:
        # The consistency samplers pick their steps among 50 "original" ones; more cannot be made.
        raise RequestError(
            f"The {r.scheduler.upper()} sampler runs at most {FEW_STEP_MAX_STEPS} steps "
            f"({r.steps} were asked for); it is meant for 2-8 steps with a few-step LoRA."
        )
    check_scale(r.scale)
    for i, ref in enumerate(r.references, 1):
        _number(ref.weight, f"The weight of reference image {i}", 0.0, MAX_WEIGHT)
    check_image_prompt(r)
    if r.references and r.models.adapter is None:
        raise RequestError("Reference images need an IP-Adapter: choose an adapter file.")
    if r.init is not None:
        _number(r.init.strength, "Strength", 0.0, 1.0, low_open=True)
    if r.mask is not None:
        if r.init is None:
            raise RequestError("Inpainting needs an init image under the mask.")
        _whole(r.mask.padding, "Mask padding", 0, MAX_MASK_PADDING)
        _whole(r.mask.blur, "Mask edge blend", 0, MAX_MASK_BLUR)
    for i, c in enumerate(r.controls, 1):
        _number(c.scale, f"The strength of control {i}", 0.0, MAX_CONTROL_SCALE)
        _number(c.start, f"The start of control {i}", 0.0, 1.0)
        _number(c.end, f"The end of control {i}", 0.0, 1.0)
        if not c.start < c.end:
            raise RequestError(f"Control {i}'s start must be below its end, both between 0 and 1.")
    check_loras(r)


def lora_tag_notices(r: GenerationRequest) -> list[str]:
    """A prompt's ``<lora:name:w>`` tags (A1111's way of choosing LoRAs) whose LoRA is not in the
    request's list: said, since their text is left out of the prompt and no file is applied."""
    if "<" not in r.prompt + r.negative_prompt:
        return []
    from pathlib import Path

    from ipa_studio.core.lora import prompt_lora_tags

    listed = {Path(str(spec.path)).stem.lower() for spec in r.loras if spec.enabled}
    out = []
    for tag in prompt_lora_tags(r.prompt) + prompt_lora_tags(r.negative_prompt):
        if tag.name.lower() not in listed:
            out.append(
                f"The prompt names the LoRA '{tag.name}' ({tag.text}), which is not in the LoRA list: "
                "the tag was left out of the prompt. Add the LoRA file to use it."
            )
    return out


def check_loras(r: GenerationRequest) -> None:
    """LoRA strengths and embedding names; the files themselves are judged when they are read."""
    from pathlib import Path

    limit = MAX_LORA_STRENGTH
    for spec in r.loras:
        name = Path(str(spec.path)).name
        _number(spec.strength, f"The strength of the LoRA '{name}'", -limit, limit)
        if spec.text_strength is not None:
            _number(spec.text_strength, f"The text strength of the LoRA '{name}'", -limit, limit)
    for item in r.embeddings:
        if not Path(str(item)).stem.strip():
            raise RequestError(f"The embedding file '{item}' has no name a prompt could use.")


def check_image_prompt(r: GenerationRequest) -> None:
    """The image-prompt controls: step windows, encoder views, negative image, second pass."""
    for i, ref in enumerate(r.references, 1):
        _number(ref.start, f"The start of reference image {i}", 0.0, 1.0)
        _number(ref.end, f"The end of reference image {i}", 0.0, 1.0)
        if not ref.start < ref.end:
            raise RequestError(f"Reference image {i}'s start must be below its end, both between 0 and 1.")
        if not isinstance(ref.view, EncoderView):
            raise RequestError(f"The encoder view of reference image {i} is not a view ({ref.view!r}).")
        check_view(ref.view, what=f"reference image {i}")
    if r.negative_image is not None:
        if r.negative_image.image is None and r.negative_image.noise == 0:
            raise RequestError("A negative image prompt needs a picture, noise above 0, or both.")
        _number(r.negative_image.noise, "The noise of the negative image", 0.0, 1.0)
    if r.hires is not None:
        h = r.hires
        _number(h.scale, "The second pass's upscale factor", 1.0, MAX_HIRES_SCALE, low_open=True)
        _number(h.strength, "The second pass's strength", 0.0, 1.0, low_open=True)
        _whole(h.steps, "The second pass's steps", 0, MAX_STEPS)
        from ipa_studio.core.hires import check_upscaler

        check_upscaler(h.upscaler)
        if r.mask is not None:
            raise RequestError(
                "A second pass goes with new pictures and img2img, not with inpainting: turn one off."
            )


# ----------------------------------------------------------------------------- pictures


def prepare(r: GenerationRequest) -> Prepared:
    """Check the request, then read and size every picture it names (no model is touched)."""
    check_request(r)
    # A reference at weight 0 contributes nothing; leaving it out also skips its encoder call.
    used = [ref for ref in r.references if ref.weight > 0]
    pictures = [load_image(ref.image, what="reference image") for ref in used]
    for i, (ref, picture) in enumerate(zip(used, pictures, strict=True), 1):
        check_view(ref.view, picture.size, what=f"reference image {i}")
    notices: list[str] = []
    start_image = load_image(r.init.image, what="init image") if r.init is not None else None
    original = start_image.size if start_image is not None else (r.width, r.height)
    if min(original) < compose.MIN_SIDE:
        raise RequestError(
            f"The image must be at least {compose.MIN_SIDE} pixels a side (got {original[0]}×{original[1]})."
        )
    if max(original) > MAX_SIDE and not (r.mask is not None and r.mask.only_masked):
        raise RequestError(
            f"The start picture is {original[0]}×{original[1]}; pictures can be at most {MAX_SIDE} pixels "
            "a side. Scale it down first, or inpaint with 'masked area only'."
        )
    # The UNet needs multiples of 8: work at the nearest such size, hand back the original size.
    size = compose.work_size(original)
    start = mask = None
    if start_image is not None:
        start = Start(start_image, _resized(start_image, size, Image.Resampling.LANCZOS))
    if r.mask is not None:
        mask_image, notice = compose.fit_mask(load_mask(r.mask.image), original)
        if notice:
            notices.append(notice)
        mask = Mask(mask_image, _resized(mask_image, size, Image.Resampling.BILINEAR))
    controls = tuple(load_image(c.image, what="control image") for c in r.controls)
    notices.extend(lora_tag_notices(r))
    references = []
    for i, (ref, picture) in enumerate(zip(used, pictures, strict=True), 1):
        region = None
        if ref.mask is not None:
            region_image = _region_mask(ref.mask, original, i, notices)
            region = Mask(region_image, _resized(region_image, size, Image.Resampling.BILINEAR))
        references.append(
            PreparedReference(picture, float(ref.weight), float(ref.start), float(ref.end), ref.view, region)
        )
    negative = None
    if r.negative_image is not None and r.negative_image.image is not None:
        negative = load_image(r.negative_image.image, what="negative image")
    prepared = Prepared(
        tuple(references), original, size, start, mask, controls, notices=tuple(notices), negative=negative
    )
    if r.mask is not None and r.mask.only_masked:
        prepared = crop_to_mask(r, prepared)
    return prepared


def _region_mask(source, size: tuple[int, int], index: int, notices: list[str]) -> Image.Image:
    """A reference's region mask at the picture's size: the same shape is scaled (with a notice)."""
    what = f"the mask of reference image {index}"
    mask = load_mask(source, what=what)
    if mask.size == size:
        return mask
    (mw, mh), (w, h) = mask.size, size
    if abs((mw / mh) / (w / h) - 1.0) > compose.ASPECT_TOLERANCE:
        raise RequestError(
            f"The mask of reference image {index} is {mw}×{mh} but the picture is {w}×{h}: different "
            "shapes, so it cannot say where in this picture the reference belongs. Paint it at the "
            "picture's size."
        )
    notices.append(f"The mask of reference image {index} ({mw}×{mh}) was scaled to the picture ({w}×{h}).")
    return mask.resize(size, Image.Resampling.BILINEAR)


def _resized(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)


def crop_to_mask(r: GenerationRequest, p: Prepared) -> Prepared:
    """ "Masked area only": the mask's surroundings, scaled up to the request's full size."""
    assert p.start is not None and p.mask is not None and r.mask is not None
    target = compose.work_size((r.width, r.height))
    box = compose.crop_box(p.mask.original, r.mask.padding, target[0] / target[1])
    start = Start(p.start.original, p.start.original.crop(box).resize(target, Image.Resampling.LANCZOS))
    mask = Mask(p.mask.original, p.mask.original.crop(box).resize(target, Image.Resampling.BILINEAR))
    # Control maps drawn for the whole picture must follow the same crop.
    controls = tuple(c.crop(box) if c.size == p.start.original.size else c for c in p.controls)
    # So must the references' own masks: the region stays where it was in the picture.
    references = tuple(
        ref
        if ref.region is None
        else dataclasses.replace(
            ref,
            region=Mask(
                ref.region.original, ref.region.original.crop(box).resize(target, Image.Resampling.BILINEAR)
            ),
        )
        for ref in p.references
    )
    return p.replace(start=start, mask=mask, controls=controls, size=target, crop=box, references=references)
