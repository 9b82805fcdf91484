"""Scoring each saved checkpoint of a training run, to see which step gives the best adapter.

The loss of an IP-Adapter run barely moves while the adapter improves, so the way to judge a run is
the paper's metrics per checkpoint. ``find_checkpoints`` turns what a person points at (a run folder,
checkpoint folders, adapter files) into ``(step, adapter file)`` pairs; ``evaluate_checkpoints``
scores each with ``evaluate`` on one engine and one CLIP model, writes a per-checkpoint CSV of every
image and a summary with one row per checkpoint, and names the best.

**Best** is the checkpoint with the highest mean CLIP-I (ties: higher CLIP-T, then the earlier
step). CLIP-I, how close the generated images are to the image prompt, is what an image-prompt
adapter is trained for and the paper's first column (Table 1); CLIP-T shows whether the images still
match the prompt's caption and is the choice with ``best_by="clip_t"``.

This module reads only JSON and file names until an evaluation runs, so listing a run's checkpoints
is cheap (no torch import) and can be done from a window.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ipa_studio.core.errors import Cancelled, IPAStudioError

# The trainer's checkpoint layout (ipa_studio/core/train/trainer.py; a test holds them equal):
# <run>/checkpoints/step-0001000/training_state.json written last, <name>.safetensors beside it.
STATE_FILE = "training_state.json"
CHECKPOINT_PREFIX = "step-"
RUN_CONFIG = "train_config.json"
ADAPTER_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
BEST_BY = ("clip_i", "clip_t")
SUMMARY_COLUMNS = ("step", "adapter", "clip_i", "clip_t", "clip_t_cosine", "images", "pairs", "best", "csv")

_STEP_IN_NAME = re.compile(r"(?:step|checkpoint|ckpt)[-_]?0*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Checkpoint:
    adapter: Path
    step: int | None
    """The training step, when the files say it (training_state.json, a step-N folder or file name)."""

    @property
    def label(self) -> str:
        return f"step {self.step}" if self.step is not None else self.adapter.name


@dataclass(frozen=True)
class CheckpointScore:
    checkpoint: Checkpoint
    clip_i: float
    clip_t: float
    clip_t_cosine: float
    images: int
    pairs: int
    csv: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.checkpoint.step,
            "adapter": str(self.checkpoint.adapter),
            "clip_i": self.clip_i,
            "clip_t": self.clip_t,
            "clip_t_cosine": self.clip_t_cosine,
            "images": self.images,
            "pairs": self.pairs,
            "csv": str(self.csv),
        }


@dataclass
class CheckpointsResult:
    scores: list[CheckpointScore]
    best: CheckpointScore
    best_by: str
    csv: Path
    summary_file: Path
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Progress:
    """Where an evaluation of several checkpoints is: checkpoint, pair and denoising step (0-based
    indices of what is running now, with their totals)."""

    checkpoint: int
    checkpoints: int
    pair: int
    pairs: int
    step: int = 0
    steps: int = 1

    @property
    def fraction(self) -> float:
        inner = (self.pair + min(self.step, self.steps) / max(self.steps, 1)) / max(self.pairs, 1)
        return min(1.0, (self.checkpoint + inner) / max(self.checkpoints, 1))


def best_definition(best_by: str) -> str:
    if best_by == "clip_t":
        return "highest mean CLIP-T (ties: higher CLIP-I, then the earlier step)"
    return "highest mean CLIP-I, the paper's image-prompt metric (ties: higher CLIP-T, then the earlier step)"


def pick_best(scores: Sequence[CheckpointScore], best_by: str = "clip_i") -> CheckpointScore:
    if best_by not in BEST_BY:
        raise IPAStudioError(f"'best' is judged by {' or '.join(BEST_BY)}, not {best_by!r}.")
    if not scores:
        raise IPAStudioError("No checkpoint was scored.")
    other = "clip_t" if best_by == "clip_i" else "clip_i"

    def key(s: CheckpointScore) -> tuple[float, float, float]:
        step = s.checkpoint.step if s.checkpoint.step is not None else 0
        return (getattr(s, best_by), getattr(s, other), -step)

    return max(scores, key=key)


def _run_adapter_name(run: Path) -> str:
    try:
        name = json.loads((run / RUN_CONFIG).read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else "ip-adapter"


def _state_step(folder: Path) -> int | None:
    try:
        step = json.loads((folder / STATE_FILE).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _folder_step(folder: Path) -> int | None:
    digits = folder.name[len(CHECKPOINT_PREFIX) :]
    return int(digits) if folder.name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def _checkpoint_adapter(folder: Path, name: str) -> Path | None:
    for suffix in (".safetensors", ".bin"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


def _from_checkpoint_folder(folder: Path, name: str | None = None) -> Checkpoint:
    name = name or _run_adapter_name(folder.parent.parent)
    adapter = _checkpoint_adapter(folder, name)
    if adapter is None:
        raise IPAStudioError(
            f"The checkpoint folder '{folder}' holds no adapter file ({name}.safetensors). It may have "
            "been written by an older version or another tool; point at its adapter file instead."
        )
    step = _state_step(folder)
    return Checkpoint(adapter, step if step is not None else _folder_step(folder))


def _run_checkpoints(run: Path) -> list[Checkpoint]:
    folder = run / "checkpoints"
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and _folder_step(p) is not None and (p / STATE_FILE).is_file()
    ]
    name = _run_adapter_name(run)
    return [_from_checkpoint_folder(p, name) for p in sorted(found, key=lambda p: _folder_step(p) or 0)]


def _from_file(path: Path) -> Checkpoint:
    if path.suffix.lower() not in ADAPTER_SUFFIXES:
        raise IPAStudioError(f"'{path.name}' is not an adapter file (.safetensors or .bin).")
    parent = path.parent
    step = _state_step(parent) if (parent / STATE_FILE).is_file() else None
    if step is None:
        step = _folder_step(parent)
    if step is None:
        match = _STEP_IN_NAME.search(path.stem)
        step = int(match.group(1)) if match else None
    return Checkpoint(path, step)


def find_checkpoints(paths: Sequence[str | Path]) -> list[Checkpoint]:
    """The checkpoints to evaluate: each saved checkpoint of a run folder, a checkpoint folder, or an
    adapter file; in step order (those without a step keep their given order, after the others)."""
    if not paths:
        raise IPAStudioError("Choose a training run folder or at least one checkpoint to evaluate.")
    found: list[Checkpoint] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(_from_file(path))
        elif path.is_dir() and (path / STATE_FILE).is_file():
            found.append(_from_checkpoint_folder(path))
        elif path.is_dir() and (path / "checkpoints").is_dir():
            run = _run_checkpoints(path)
            if not run:
                raise IPAStudioError(f"The run folder '{path}' has no complete checkpoint yet.")
            found.extend(run)
        elif path.is_dir():
            raise IPAStudioError(
                f"'{path}' is neither a training run folder (with a checkpoints folder) nor a "
                f"checkpoint folder (with {STATE_FILE})."
            )
        else:
            raise IPAStudioError(f"'{path}' does not exist.")
    unique: dict[Path, Checkpoint] = {}
    for checkpoint in found:
        unique.setdefault(checkpoint.adapter.resolve(), checkpoint)
    with_step = sorted((c for c in unique.values() if c.step is not None), key=lambda c: c.step or 0)
    return with_step + [c for c in unique.values() if c.step is None]


def checkpoint_csv(out: Path, checkpoint: Checkpoint, index: int) -> Path:
    """Where the per-image rows of one checkpoint go, beside the summary ``out``."""
    tag = (
        f"step-{checkpoint.step:07d}"
        if checkpoint.step is not None
        else f"{index + 1:02d}-{checkpoint.adapter.stem}"
    )
    return out.with_name(f"{out.stem}.{tag}{out.suffix}")


def evaluate_checkpoints(
    config: Any,
    checkpoints: Sequence[Checkpoint],
    *,
    best_by: str = "clip_i",
    engine: Any = None,
    scorer: Any = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    on_score: Callable[[CheckpointScore], None] | None = None,
) -> CheckpointsResult:
    """Score every checkpoint with ``config`` (an ``EvalConfig``; its ``adapter`` is replaced by each
    checkpoint's, its ``out`` is the summary CSV). The same seeds are used for every checkpoint, so
    differences come from the adapter alone. Raises ``Cancelled`` when ``should_cancel`` turns true
    (checked before every denoising step); finished checkpoints' CSVs stay on disk."""
    from .metrics import ClipScorer
    from .run import _engine_generator, _write_atomic, evaluate

    if best_by not in BEST_BY:
        raise IPAStudioError(f"'best' is judged by {' or '.join(BEST_BY)}, not {best_by!r}.")
    if not checkpoints:
        raise IPAStudioError("There is no checkpoint to evaluate.")
    out = Path(config.out)
    if out.suffix.lower() != ".csv":
        raise IPAStudioError("The results file is a .csv; the summary is written next to it as .json.")
    if not out.parent.is_dir():
        raise IPAStudioError(f"The output folder '{out.parent}' does not exist.")
    cancelled = should_cancel or (lambda: False)
    scores: list[CheckpointScore] = []
    skipped: set[str] = set()
    total = len(checkpoints)
    where = {"checkpoint": 0, "pair": 0, "pairs": 1}

    def on_pair(pair: int, pairs: int) -> None:
        if cancelled():
            raise Cancelled("Evaluation cancelled.")
        where.update(pair=pair, pairs=pairs)
        if on_progress is not None:
            on_progress(Progress(where["checkpoint"], total, pair, pairs))

    def on_step(info: Any) -> None:
        if on_progress is not None:
            on_progress(
                Progress(where["checkpoint"], total, where["pair"], where["pairs"], info.step, info.total)
            )

    for index, checkpoint in enumerate(checkpoints):
        if cancelled():
            raise Cancelled("Evaluation cancelled.")
        where.update(checkpoint=index, pair=0, pairs=1)
        one = replace(config, adapter=checkpoint.adapter, out=checkpoint_csv(out, checkpoint, index))
        generate = _engine_generator(one, engine=engine, on_step=on_step, should_cancel=cancelled)
        engine = generate.engine  # type: ignore[attr-defined]
        if scorer is None:
            scorer = ClipScorer(config.clip_model, engine.device)
        result = evaluate(one, scorer=scorer, generate=generate, on_pair=on_pair)
        skipped.update(result.skipped)
        score = CheckpointScore(
            checkpoint,
            result.clip_i,
            result.clip_t,
            result.clip_t_cosine,
            result.images,
            result.pairs,
            result.csv or one.out,
        )
        scores.append(score)
        if on_score is not None:
            on_score(score)
    best = pick_best(scores, best_by)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for score in scores:
        row = score.to_json()
        row["step"] = "" if row["step"] is None else row["step"]
        row["best"] = int(score is best)
        writer.writerow(row)
    _write_atomic(out, text.getvalue())
    summary = out.with_suffix(".json")
    settings = config.to_json()
    settings.pop("adapter", None)
    record = {
        "best": {**best.to_json(), "label": best.checkpoint.label},
        "best_by": best_by,
        "best_definition": best_definition(best_by),
        "checkpoints": [s.to_json() for s in scores],
        "clip_t_definition": "CLIPScore = 2.5 * max(cos(image, caption), 0)",
        "skipped": sorted(skipped),
        "settings": settings,
    }
    _write_atomic(summary, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return CheckpointsResult(scores, best, best_by, out, summary, sorted(skipped))
