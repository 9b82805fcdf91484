"""The λ sweep as a job of the engine's worker thread: run, score, save, report cell by cell.

:func:`run` is called by :class:`ipa_studio.gui.worker.GenerationWorker` on its thread (the thread
that owns the engine); it hands each finished cell to ``on_cell`` as a :class:`CellView` with a
ready-made thumbnail, so the window only places pictures and text. At the end everything is saved
as the command line saves it: each picture (with its settings), the contact sheet PNG and the CSV,
in a folder of its own under ``sweeps/`` in the outputs folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtGui import QImage

from ipa_studio.core.presets import BlockPreset
from ipa_studio.core.request import GenerationRequest
from ipa_studio.gui.kept import keep_inputs
from ipa_studio.gui.qimage import pil_to_qimage, thumbnail

THUMB = 256
SWEEPS_FOLDER = "sweeps"


@dataclass(frozen=True)
class SweepJob:
    id: int
    request: GenerationRequest
    strengths: tuple[float, ...]
    presets: tuple[BlockPreset, ...]
    """One row each; empty = one row of plain λ."""
    clip_model: Path
    outputs_dir: Path


@dataclass(frozen=True)
class ScorerLoad:
    """Load the CLIP model now, between jobs: building it holds the GIL for a few hundred ms (the
    tokenizer's Rust constructor), which must not happen while a sweep is being watched."""

    folder: Path


@dataclass(frozen=True)
class CellView:
    """One picture of the sheet, as the window shows it."""

    index: int
    row: int
    column: int
    strength: float
    preset: str | None
    clip_i: float
    clip_t: float
    image: QImage
    balance_score: float = float("nan")
    path: Path | None = None
    request: GenerationRequest | None = None


@dataclass(frozen=True)
class SweepOutcome:
    cells: list[CellView]
    balance: int
    folder: Path
    sheet: Path
    csv: Path
    seconds: float
    presets: list[str | None] = field(default_factory=list)
    notices: tuple[str, ...] = ()


class ScorerCache:
    """The CLIP model stays loaded between sweeps (loading it is the slow part of scoring)."""

    def __init__(self) -> None:
        self._key: tuple[str, str] | None = None
        self._scorer: Any = None

    def loaded(self, folder: Path, device: Any) -> bool:
        return self._key == (str(folder), str(device))

    def get(self, folder: Path, device: Any) -> Any:
        from ipa_studio.core.evaluate import ClipScorer

        key = (str(folder), str(device))
        if self._key != key:
            self._scorer = ClipScorer(folder, device)
            self._key = key
        return self._scorer


def run(
    engine: Any,
    job: SweepJob,
    scorers: ScorerCache,
    on_progress: Callable[[int, int], None],
    on_cell: Callable[[CellView], None],
    should_cancel: Callable[[], bool],
) -> SweepOutcome:
    from ipa_studio.core.images import save_png
    from ipa_studio.core.metadata import request_to_metadata
    from ipa_studio.core.sweep import contact_sheet, run_sweep, write_csv

    started = time.perf_counter()
    request, kept_notes = keep_inputs(job.request, job.outputs_dir)
    scorer = scorers.get(job.clip_model, engine.device)
    cells_total = len(job.strengths) * max(1, len(job.presets))

    def progress(p: Any) -> None:
        if p.step is not None:
            on_progress(p.done * p.step.total + p.step.step, cells_total * p.step.total)
        if p.cell is not None:
            c = p.cell
            index = len(views)
            image = thumbnail(pil_to_qimage(c.image), THUMB)
            view = CellView(index, c.row, c.column, c.strength, c.preset, c.clip_i, c.clip_t, image)
            views.append(view)
            on_cell(view)

    views: list[CellView] = []
    result = run_sweep(
        engine,
        request,
        list(job.strengths),
        scorer,
        presets=list(job.presets) or None,
        on_progress=progress,
        should_cancel=should_cancel,
    )
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = _free_folder(job.outputs_dir / SWEEPS_FOLDER / f"{stamp}-{request.seed}")
    folder.mkdir(parents=True)
    files = []
    for cell in result.cells:
        row = f"r{cell.row}_" if len(result.presets) > 1 else ""
        path = folder / f"{row}lambda-{cell.strength:g}.png"
        files.append(str(save_png(cell.image, path, request_to_metadata(cell.request))))
    best = result.cells[result.balance]
    extra = {
        "sweep_lambdas": ",".join(f"{v:g}" for v in result.strengths),
        "sweep_presets": ",".join(p or "" for p in result.presets),
        "sweep_balance_lambda": best.strength,
        "sweep_balance_preset": best.preset or "",
    }
    sheet = save_png(contact_sheet(result), folder / "sheet.png", request_to_metadata(request, extra=extra))
    csv_path = write_csv(result, folder / "scores.csv", files)
    final = [
        CellView(
            i,
            c.row,
            c.column,
            c.strength,
            c.preset,
            c.clip_i,
            c.clip_t,
            views[i].image,
            c.balance_score,
            Path(files[i]),
            c.request,
        )
        for i, c in enumerate(result.cells)
    ]
    return SweepOutcome(
        final,
        result.balance,
        folder,
        Path(sheet),
        csv_path,
        time.perf_counter() - started,
        list(result.presets),
        (*kept_notes, *result.notices),
    )


def _free_folder(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
