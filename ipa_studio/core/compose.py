"""Pixel work around inpainting: working sizes, the "masked area only" crop, and pasting back.

Kept apart from the engine because it is plain image arithmetic (no models), and because the
promise it keeps is exact: a pixel the mask leaves black comes back bit-identical.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from ipa_studio.core.errors import ImageInputError, RequestError

MIN_SIDE = 64
# Masks exported at another resolution of the same picture are common; a different shape is not.
ASPECT_TOLERANCE = 0.02


def work_size(size: tuple[int, int]) -> tuple[int, int]:
    """The nearest size the UNet can run (multiples of 8, at least 64 px a side)."""
    return tuple(max(MIN_SIDE, int(round(v / 8)) * 8) for v in size)  # type: ignore[return-value]


def fit_mask(mask: Image.Image, size: tuple[int, int]) -> tuple[Image.Image, str | None]:
    """Scale a mask of the same shape to ``size`` (returning a notice), refuse one of another shape."""
    if mask.size == size:
        return mask, None
    (mw, mh), (w, h) = mask.size, size
    if abs((mw / mh) / (w / h) - 1.0) > ASPECT_TOLERANCE:
        raise ImageInputError(
            f"The mask is {mw}×{mh} but the init image is {w}×{h}: different shapes, so it cannot be "
            "this image's mask. Paint or export the mask at the init image's size."
        )
    notice = f"The mask ({mw}×{mh}) was scaled to the init image's size ({w}×{h})."
    return mask.resize(size, Image.Resampling.BILINEAR), notice


def crop_box(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """Bounding box of the painted area plus ``padding``, widened to ``aspect`` (w/h) where the
    image allows, so the crop scales to the working size without distortion."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        raise RequestError("The mask is empty: paint the area to repaint first.")
    width, height = mask.size
    left, top, right, bottom = box
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(width, right + padding), min(height, bottom + padding)
    cw, ch = right - left, bottom - top
    if cw / ch < aspect:
        cw = min(width, round(ch * aspect))
    else:
        ch = min(height, round(cw / aspect))
    cx, cy = (left + right) / 2, (top + bottom) / 2
    left = int(min(max(0, round(cx - cw / 2)), width - cw))
    top = int(min(max(0, round(cy - ch / 2)), height - ch))
    return left, top, left + cw, top + ch


def blend_alpha(mask: Image.Image, blur: int) -> np.ndarray:
    """Per-pixel weight of the generated image: the mask, feathered inwards only, so a pixel outside
    the mask (value 0) keeps weight 0 however large the blur."""
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    if blur > 0:
        soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32) / 255.0
        alpha = np.minimum(alpha, soft)
    return alpha


def paste_back(
    original: Image.Image,
    generated: Image.Image,
    mask: Image.Image,
    blur: int,
    box: tuple[int, int, int, int],
) -> Image.Image:
    """Blend ``generated`` (any size; scaled to ``box``) over ``original`` inside ``box``."""
    left, top, right, bottom = box
    patch = generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    region = original.crop(box)
    alpha = blend_alpha(mask.crop(box), blur)[..., None]
    base = np.asarray(region, dtype=np.float32)
    mixed = np.rint(base * (1.0 - alpha) + np.asarray(patch, dtype=np.float32) * alpha)
    # Where alpha is 0 take the original bytes themselves: no arithmetic touches them.
    out = np.where(alpha > 0, mixed, base).clip(0, 255).astype(np.uint8)
    result = original.copy()
    result.paste(Image.fromarray(out, "RGB"), (left, top))
    return result
