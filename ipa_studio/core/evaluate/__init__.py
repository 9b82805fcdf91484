"""The paper's CLIP-I / CLIP-T evaluation (§4.2) of an adapter over (image prompt, caption) pairs."""

from .checkpoints import (
    BEST_BY,
    Checkpoint,
    CheckpointScore,
    CheckpointsResult,
    Progress,
    best_definition,
    evaluate_checkpoints,
    find_checkpoints,
    pick_best,
)
from .metrics import CLIPSCORE_WEIGHT, ClipScorer, clip_i, clip_t, cosine
from .run import CSV_COLUMNS, EvalConfig, EvalResult, evaluate

__all__ = [
    "BEST_BY",
    "Checkpoint",
    "CheckpointScore",
    "CheckpointsResult",
    "Progress",
    "best_definition",
    "evaluate_checkpoints",
    "find_checkpoints",
    "pick_best",
    "CLIPSCORE_WEIGHT",
    "CSV_COLUMNS",
    "ClipScorer",
    "EvalConfig",
    "EvalResult",
    "clip_i",
    "clip_t",
    "cosine",
    "evaluate",
]
