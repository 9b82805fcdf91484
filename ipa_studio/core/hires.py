"""Second pass ("hires fix"): generate, upscale, and repaint at the larger size, in one job.

The job is exactly the two steps a person would do by hand, and nothing else:

1. generate the request without its second pass;
2. for each picture: upscale it by ``hires.scale`` (Lanczos; the size rounded to a multiple of 8),
   then run img2img on it at ``hires.strength`` with the same prompt, references, per-block λ,
   ControlNets and seed (one picture per run), ``hires.steps`` steps (0 = the request's).

Upscalers are looked up by name in :data:`UPSCALERS`, a function (picture, size) → picture. Only
Lanczos is built in; an upscaler model (ESRGAN-style) plugs in by registering a function under its
name with :func:`register_upscaler` — none is bundled, because none can be tested here without its
weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ipa_studio.core import compose
from ipa_studio.core.errors import RequestError
from ipa_studio.core.request import GenerationRequest, InitImage

if TYPE_CHECKING:
    from ipa_studio.core.engine import Engine, GenerationResult, StepInfo

__all__ = [
    "UPSCALERS",
    "check_upscaler",
    "planned_steps",
    "register_upscaler",
    "run",
    "second_pass_request",
    "upscale",
    "upscaled_size",
]

Upscaler = Callable[[Image.Image, tuple[int, int]], Image.Image]


def _lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image.resize(size, Image.Resampling.LANCZOS)


UPSCALERS: dict[str, Upscaler] = {"lanczos": _lanczos}


def register_upscaler(name: str, upscaler: Upscaler) -> None:
    """Make ``name`` usable as ``HiresSpec.upscaler``; ``upscaler`` returns exactly ``size``."""
    UPSCALERS[name] = upscaler


def check_upscaler(name: object) -> None:
    if name not in UPSCALERS:
        raise RequestError(
            f"The upscaler {name!r} is not available. Built in: {', '.join(sorted(UPSCALERS))}; "
            "upscaler models are not supported yet."
        )


def upscaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` × ``scale``, each side rounded to a multiple of 8 (what the UNet works at)."""
    from ipa_studio.core.prepare import MAX_SIDE

    width, height = (max(compose.MIN_SIDE, round(side * scale / 8) * 8) for side in size)
    if max(width, height) > MAX_SIDE:
        raise RequestError(
            f"The second pass would be {width}×{height}; pictures can be at most {MAX_SIDE} pixels a "
            "side. Use a smaller upscale factor."
        )
    return width, height


def upscale(image: Image.Image, scale: float, upscaler: str = "lanczos") -> Image.Image:
    check_upscaler(upscaler)
    size = upscaled_size(image.size, scale)
    out = UPSCALERS[upscaler](image, size)
    if out.size != size:
        raise RequestError(f"The upscaler {upscaler!r} returned {out.size}, not the {size} it was asked for.")
    return out.convert("RGB")


def second_pass_request(request: GenerationRequest, upscaled: Image.Image) -> GenerationRequest:
    """The img2img request of the second pass for one upscaled picture."""
    assert request.hires is not None
    hires = request.hires
    return request.replace(
        init=InitImage(upscaled, hires.strength),
        width=upscaled.width,
        height=upscaled.height,
        steps=hires.steps or request.steps,
        num_images=1,
        hires=None,
    )


def planned_steps(request: GenerationRequest) -> int:
    """Denoising steps a request without a second pass runs (img2img runs only its strength's share)."""
    if request.init is None:
        return request.steps
    return min(int(request.steps * request.init.strength), request.steps)


def run(
    engine: Engine,
    request: GenerationRequest,
    on_step: Callable[[StepInfo], None] | None,
    should_cancel: Callable[[], bool] | None,
) -> GenerationResult:
    """Both passes of ``request`` as one job; progress counts the steps of both."""
    from ipa_studio.core.engine import GenerationResult, StepInfo
    from ipa_studio.core.prepare import check_request, prepare

    assert request.hires is not None
    check_request(request)
    first = request.replace(hires=None)
    # Refuse a too-large second pass before the first one runs.
    target = upscaled_size(prepare(first).original_size, request.hires.scale)
    per_image = planned_steps(second_pass_request(request, Image.new("RGB", target)))
    if per_image == 0:
        raise RequestError(
            "The second pass's strength is too low for its steps: no step would run. Raise its "
            "strength or its steps."
        )
    total = planned_steps(first) + request.num_images * per_image
    done = 0

    def relay(info: StepInfo) -> None:
        if on_step is not None:
            on_step(StepInfo(done + info.step, total, info.elapsed, info.preview))

    result = engine.generate(first, relay, should_cancel)
    seconds, notices = result.seconds, list(result.notices)
    done = planned_steps(first)
    images, latents = [], []
    for image in result.images:
        second = engine.generate(
            second_pass_request(request, upscale(image, request.hires.scale, request.hires.upscaler)),
            relay,
            should_cancel,
        )
        done += per_image
        images.extend(second.images)
        latents.append(second.latents)
        seconds += second.seconds
        notices.extend(n for n in second.notices if n not in notices)
    return GenerationResult(images, torch.cat(latents), request, seconds, notices)
