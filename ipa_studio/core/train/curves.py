"""The training curves as a PNG next to the run (Pillow only: the core has no plotting library).

Two panels over the step axis: the loss, raw (thin, light) and smoothed (thick), and the learning
rate. The window draws the same series live; this file is what stays with the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ipa_studio.core.images import save_png

BACKGROUND = (30, 30, 34)
GRID = (62, 62, 70)
TEXT = (215, 215, 220)
RAW = (120, 150, 200)
SMOOTH = (255, 170, 60)
LR = (110, 200, 140)


def smoothed(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average with the start-up bias removed (as TensorBoard smooths), so the
    first points are not pulled towards zero."""
    out, average = [], 0.0
    for n, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**n))
    return out


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 × 10^k apart) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0) * 0.1
    raw = (high - low) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def tick_text(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) < 1e-3 or abs(value) >= 1e5:
        # Three digits: the ticks of a nearly constant learning rate differ only there.
        return f"{value:.2e}"
    return f"{value:g}"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _panel(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    title: str,
    steps: Sequence[int],
    series: list[tuple[Sequence[float], tuple[int, int, int], int]],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    left, top, right, bottom = box
    draw.text((left, top - 22), title, fill=TEXT, font=font)
    values = [v for s, _, _ in series for v in s if math.isfinite(v)]
    if not steps or not values:
        draw.text((left + 10, top + 10), "no steps yet", fill=TEXT, font=font)
        return
    x0, x1 = min(steps), max(steps)
    if x1 == x0:
        x1 = x0 + 1
    y0, y1 = min(values), max(values)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - (abs(y0) or 1) * 0.05, y1 + (abs(y1) or 1) * 0.05
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def at(step: float, value: float) -> tuple[float, float]:
        return (
            left + (step - x0) / (x1 - x0) * (right - left),
            bottom - (value - y0) / (y1 - y0) * (bottom - top),
        )

    for tick in nice_ticks(y0, y1):
        _, y = at(x0, tick)
        draw.line((left, y, right, y), fill=GRID)
        label = tick_text(tick)
        draw.text((left - 8 - draw.textlength(label, font=font), y - 8), label, fill=TEXT, font=font)
    for tick in nice_ticks(x0, x1):
        x, _ = at(tick, y0)
        draw.line((x, top, x, bottom), fill=GRID)
        label = tick_text(tick)
        draw.text((x - draw.textlength(label, font=font) / 2, bottom + 6), label, fill=TEXT, font=font)
    draw.rectangle(box, outline=GRID)
    for data, colour, width in series:
        points = [at(s, v) for s, v in zip(steps, data, strict=False) if math.isfinite(v)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        elif points:
            draw.line(points, fill=colour, width=width, joint="curve")


def write_curves(
    path: Path, steps: Sequence[int], losses: Sequence[float], learning_rates: Sequence[float]
) -> Path:
    """``curves.png``: loss (raw and smoothed) and learning rate against the step."""
    width, height = 1000, 640
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(15)
    smooth = smoothed(losses)
    _panel(
        draw,
        (90, 40, width - 30, 380),
        "training loss: raw (blue), smoothed (orange)",
        steps,
        [(losses, RAW, 1), (smooth, SMOOTH, 3)],
        font,
    )
    _panel(draw, (90, 450, width - 30, height - 50), "learning rate", steps, [(learning_rates, LR, 2)], font)
    label = "step"
    draw.text(((width - draw.textlength(label, font=font)) / 2, height - 24), label, fill=TEXT, font=font)
    return save_png(image, path, {})
