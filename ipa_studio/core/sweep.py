"""λ sweep contact sheet: one seed at several λ (and block presets), each picture scored.

Every cell is the request at one strength λ (and, optionally, one block preset, whose shape λ
scales — see :mod:`ipa_studio.core.presets`), one picture, the same seed. Each picture gets the
paper's two scores (§4.2, computed by :mod:`ipa_studio.core.evaluate`):

- **CLIP-I**: cosine of its CLIP image embedding with each reference's, averaged over the
  references (how much it looks like the image prompt);
- **CLIP-T**: CLIPScore with the text prompt, 2.5 · max(cos, 0) (how well it follows the words).

**The balance point** is the cell that keeps most of both: each score is scaled to 0–1 over the
sweep (lowest → 0, highest → 1; a score that does not change counts 1 everywhere), and the cell with
the largest harmonic mean of the two scaled scores wins (the first one on a tie, which is the lowest
λ of the first preset). The harmonic mean is low when either score is low, so the winner is a
picture that has given up little of either — the "image overpowers my prompt" point lies just
above it.

:func:`run_sweep` takes progress and cancel callbacks like :meth:`Engine.generate`, so the window
can run it on its worker thread; :func:`contact_sheet` and :func:`write_csv` make the sheet PNG and
the CSV that ``ipa-studio sweep`` writes.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ipa_studio.core.engine import Engine, StepInfo
from ipa_studio.core.errors import Cancelled, IPAStudioError, RequestError
from ipa_studio.core.evaluate.metrics import ClipScorer, clip_i, clip_t, cosine
from ipa_studio.core.images import load_image
from ipa_studio.core.presets import BlockPreset
from ipa_studio.core.request import GenerationRequest

__all__ = [
    "CSV_COLUMNS",
    "MAX_CELLS",
    "SweepCell",
    "SweepProgress",
    "SweepResult",
    "balance_scores",
    "contact_sheet",
    "run_sweep",
    "sweep_requests",
    "write_csv",
]

MAX_CELLS = 64
CSV_COLUMNS = (
    "row",
    "column",
    "preset",
    "lambda",
    "seed",
    "clip_i",
    "clip_t",
    "clip_t_cosine",
    "balance_score",
    "balance",
    "image_file",
)


@dataclass(frozen=True)
class SweepCell:
    row: int
    column: int
    strength: float
    """λ of this cell (the preset's weights times it)."""
    preset: str | None
    request: GenerationRequest
    image: Image.Image
    clip_i: float
    clip_t: float
    clip_t_cosine: float
    balance_score: float = math.nan


@dataclass
class SweepResult:
    request: GenerationRequest
    strengths: list[float]
    presets: list[str | None]
    cells: list[SweepCell]
    """Row by row: one row per preset (or one row without presets), one column per λ."""
    balance: int
    """Index into ``cells`` of the balance point."""
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SweepProgress:
    done: int
    """Cells finished."""
    total: int
    step: StepInfo | None = None
    """The step just taken in the cell being made (None when a cell has just finished)."""
    cell: SweepCell | None = None
    """The cell just finished (its balance score is known only at the end)."""


def sweep_requests(
    request: GenerationRequest, strengths: Sequence[float], presets: Sequence[BlockPreset] | None = None
) -> list[tuple[int, int, float, str | None, GenerationRequest]]:
    """(row, column, λ, preset name, request) of every cell; one picture each, the request's seed."""
    if not strengths:
        raise RequestError("A sweep needs at least one λ.")
    rows: list[BlockPreset | None] = list(presets) if presets else [None]
    if len(rows) * len(strengths) > MAX_CELLS:
        raise RequestError(
            f"A sweep can have at most {MAX_CELLS} pictures ({len(rows)} × {len(strengths)} asked)."
        )
    cells = []
    for row, preset in enumerate(rows):
        for column, strength in enumerate(strengths):
            scale = float(strength) if preset is None else preset.scale(float(strength))
            cell = request.replace(scale=scale, num_images=1)
            cells.append((row, column, float(strength), preset.name if preset else None, cell))
    return cells


def _scaled(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high - low <= 1e-12:
        return [1.0] * len(values)
    return [(v - low) / (high - low) for v in values]


def balance_scores(clip_i_values: Sequence[float], clip_t_values: Sequence[float]) -> list[float]:
    """Harmonic mean of the two scores, each scaled to 0–1 over the sweep (see the module's text)."""
    out = []
    for a, b in zip(_scaled(clip_i_values), _scaled(clip_t_values), strict=True):
        out.append(2 * a * b / (a + b) if a + b > 0 else 0.0)
    return out


def run_sweep(
    engine: Engine,
    request: GenerationRequest,
    strengths: Sequence[float],
    scorer: ClipScorer,
    *,
    presets: Sequence[BlockPreset] | None = None,
    on_progress: Callable[[SweepProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> SweepResult:
    """Make and score every cell; raises ``Cancelled`` as soon as ``should_cancel`` turns true."""
    import time

    from ipa_studio.core.prepare import check_request

    if not request.references:
        raise RequestError("A λ sweep compares pictures with the references: add a reference image.")
    if not request.prompt.strip():
        raise RequestError(
            "A λ sweep weighs the references against the prompt: type a prompt (with an empty prompt, "
            "λ 1 is always best)."
        )
    plan = sweep_requests(request, strengths, presets)
    for *_, cell_request in plan:
        check_request(cell_request)
    started = time.perf_counter()
    references = [load_image(r.image) for r in request.references if r.weight > 0]
    reference_embeds = scorer.image_embeddings(references)
    text_embed = scorer.text_embeddings([request.prompt])
    cells: list[SweepCell] = []
    notices: list[str] = []
    total = len(plan)
    for row, column, strength, preset, cell_request in plan:
        if should_cancel is not None and should_cancel():
            raise Cancelled("Sweep cancelled.")

        def relay(info: StepInfo, done: int = len(cells)) -> None:
            if on_progress is not None:
                on_progress(SweepProgress(done, total, step=info))

        result = engine.generate(cell_request, relay, should_cancel)
        notices.extend(n for n in result.notices if n not in notices)
        image = result.images[0]
        generated = scorer.image_embeddings([image])
        cell = SweepCell(
            row,
            column,
            strength,
            preset,
            cell_request,
            image,
            clip_i=float(clip_i(generated, reference_embeds).mean()),
            clip_t=float(clip_t(generated, text_embed)[0]),
            clip_t_cosine=float(cosine(generated, text_embed)[0]),
        )
        cells.append(cell)
        if on_progress is not None:
            on_progress(SweepProgress(len(cells), total, cell=cell))
    scores = balance_scores([c.clip_i for c in cells], [c.clip_t for c in cells])
    cells = [_with_score(c, s) for c, s in zip(cells, scores, strict=True)]
    balance = max(range(len(cells)), key=lambda i: (scores[i], -i))
    rows = list(dict.fromkeys(c.preset for c in cells))
    return SweepResult(
        request, [float(s) for s in strengths], rows, cells, balance, time.perf_counter() - started, notices
    )


def _with_score(cell: SweepCell, score: float) -> SweepCell:
    import dataclasses

    return dataclasses.replace(cell, balance_score=score)


# --------------------------------------------------------------------------------------------------
# The sheet and the CSV
# --------------------------------------------------------------------------------------------------

_BACKGROUND = (24, 24, 28)
_TEXT = (230, 230, 235)
_DIM = (150, 150, 160)
_MARK = (255, 196, 0)


# Fonts with Greek letters on Linux, Windows and macOS; Pillow's own font has no λ.
_FONTS = ("DejaVuSans.ttf", "arial.ttf", "Arial.ttf", "Helvetica.ttc", "Arial Unicode.ttf")


def _font(size: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, str]:
    """A font at ``size`` and how to write λ with it ("λ", or "lambda" where it has no Greek)."""
    for name in _FONTS:
        try:
            return ImageFont.truetype(name, size), "λ"
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size), "lambda"
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default(), "lambda"


def contact_sheet(result: SweepResult, thumb: int = 256) -> Image.Image:
    """The sweep as one picture: a grid (presets down, λ across), both scores under each picture,
    the balance point framed and labelled."""
    columns = len(result.strengths)
    rows = len(result.presets)
    label_w = 170 if any(result.presets) else 0
    pad, caption = 12, 46
    title_h = 44
    cell_w, cell_h = thumb + pad, thumb + caption + pad
    sheet = Image.new("RGB", (label_w + pad + columns * cell_w, title_h + rows * cell_h + pad), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    (big, lam), (small, _) = _font(max(12, thumb // 14)), _font(max(11, thumb // 18))
    best = result.cells[result.balance]
    title = (
        f"{lam} sweep, seed {result.request.seed}. Balance point: {lam} {best.strength:g}"
        + (f" ({best.preset})" if best.preset else "")
        + f", CLIP-I {best.clip_i:.3f}, CLIP-T {best.clip_t:.3f}"
    )
    draw.text((pad, 12), title, fill=_TEXT, font=big)
    for index, cell in enumerate(result.cells):
        x = label_w + pad + cell.column * cell_w
        y = title_h + cell.row * cell_h
        picture = cell.image.copy()
        picture.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(picture, (x + (thumb - picture.width) // 2, y + (thumb - picture.height) // 2))
        marked = index == result.balance
        if marked:
            draw.rectangle((x - 4, y - 4, x + thumb + 3, y + thumb + 3), outline=_MARK, width=4)
        line1 = f"{lam} {cell.strength:g}" + ("   balance point" if marked else "")
        line2 = f"CLIP-I {cell.clip_i:.3f}   CLIP-T {cell.clip_t:.3f}"
        draw.text((x, y + thumb + 6), line1, fill=_MARK if marked else _TEXT, font=small)
        draw.text((x, y + thumb + 6 + caption // 2), line2, fill=_TEXT if marked else _DIM, font=small)
    if label_w:
        for row, name in enumerate(result.presets):
            draw.text((pad, title_h + row * cell_h + thumb // 2), name or lam, fill=_TEXT, font=big)
    return sheet


def write_csv(result: SweepResult, path: str | os.PathLike[str], image_files: Sequence[str] = ()) -> Path:
    """One row per cell (scores as computed, full precision), written atomically."""
    from ipa_studio.core.settings import write_text_atomic

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for index, cell in enumerate(result.cells):
        writer.writerow(
            {
                "row": cell.row,
                "column": cell.column,
                "preset": cell.preset or "",
                "lambda": repr(cell.strength),
                "seed": cell.request.seed,
                "clip_i": repr(cell.clip_i),
                "clip_t": repr(cell.clip_t),
                "clip_t_cosine": repr(cell.clip_t_cosine),
                "balance_score": repr(cell.balance_score),
                "balance": int(index == result.balance),
                "image_file": image_files[index] if index < len(image_files) else "",
            }
        )
    path = Path(path)
    try:
        write_text_atomic(path, buffer.getvalue())
    except OSError as exc:
        raise IPAStudioError(
            f"The sweep's CSV could not be written to {path}: {exc.strerror or exc}."
        ) from exc
    return path
