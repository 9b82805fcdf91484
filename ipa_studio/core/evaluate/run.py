"""An evaluation run as in the paper (§4.2): N images per (image prompt, caption) pair, CLIP-I and
CLIP-T per image, written as CSV plus a summary.

The paper generated 4 images for each of the 5,000 COCO val2017 images with an empty text prompt and
λ = 1.0 (DDIM, 50 steps, guidance 7.5), and scored them with CLIP ViT-L/14; those are the defaults.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ipa_studio.core.errors import IPAStudioError
from ipa_studio.core.files import temporary
from ipa_studio.core.images import load_image
from ipa_studio.core.train.data import scan_dataset

from .metrics import CLIPSCORE_WEIGHT, ClipScorer, clip_i, clip_t, cosine

CSV_COLUMNS = (
    "pair",
    "reference",
    "caption",
    "image_index",
    "seed",
    "clip_i",
    "clip_t",
    "clip_t_cosine",
    "image_file",
)

Generate = Callable[[Image.Image, str, int], list[Image.Image]]
"""(image prompt, text prompt, seed) → the generated images of one pair."""


@dataclass
class EvalConfig:
    pairs: Path
    """Image prompts with captions, as for training: a folder (sidecar .txt or metadata.jsonl) or an
    official-format .json list (paths relative to its folder)."""
    base_model: Path
    adapter: Path
    image_encoder: Path
    clip_model: Path
    out: Path
    """The CSV; the summary goes next to it as ``<stem>.json``."""
    num_images: int = 4
    scale: float = 1.0
    seed: int = 0
    steps: int = 50
    guidance: float = 7.5
    size: int = 512
    scheduler: str = "ddim"
    caption_as_prompt: bool = False
    """The paper's image-only setting leaves the text prompt empty; True uses the caption as well."""
    limit: int | None = None
    save_images: Path | None = None
    device: str | None = None
    dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class EvalResult:
    clip_i: float
    clip_t: float
    clip_t_cosine: float
    images: int
    pairs: int
    skipped: list[str] = field(default_factory=list)
    csv: Path | None = None
    summary_file: Path | None = None

    def summary_line(self, config: EvalConfig | None = None) -> str:
        line = (
            f"CLIP-I {self.clip_i:.4f}  CLIP-T {self.clip_t:.4f}  (CLIPScore w={CLIPSCORE_WEIGHT}; "
            f"raw cosine {self.clip_t_cosine:.4f})  over {self.images} images from {self.pairs} pairs"
        )
        if config is not None:
            line += (
                f"  adapter={config.adapter.name} base={config.base_model.name} "
                f"λ={config.scale:g} seed={config.seed}"
            )
        return line


def _engine_generator(
    config: EvalConfig,
    *,
    engine: Any = None,
    on_step: Callable[[Any], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Generate:
    """Generation on ``engine`` (made from the config when None; reused across checkpoints, so the
    base model and encoders are read once and only the adapter changes)."""
    from ipa_studio.core.engine import Engine
    from ipa_studio.core.request import GenerationRequest, ModelSpec, Reference

    if engine is None:
        dtype = getattr(torch, config.dtype) if config.dtype else None
        engine = Engine(device=config.device, dtype=dtype)
    template = GenerationRequest(
        models=ModelSpec(config.base_model, config.adapter, config.image_encoder),
        scale=config.scale,
        steps=config.steps,
        guidance=config.guidance,
        width=config.size,
        height=config.size,
        scheduler=config.scheduler,  # type: ignore[arg-type]
        num_images=config.num_images,
    )

    def generate(reference: Image.Image, prompt: str, seed: int) -> list[Image.Image]:
        request = template.replace(references=(Reference(reference),), prompt=prompt, seed=seed)
        return engine.generate(request, on_step=on_step, should_cancel=should_cancel).images

    generate.engine = engine  # type: ignore[attr-defined]
    return generate


def _write_atomic(path: Path, text: str) -> None:
    # The project's temporary name: removed even when the process is terminated mid-write.
    with temporary(path) as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)


def evaluate(
    config: EvalConfig,
    *,
    scorer: ClipScorer | None = None,
    generate: Generate | None = None,
    on_pair: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Generate ``num_images`` per pair, score each image, write the CSV and the summary JSON.

    Pair *i* is generated with seed ``seed + i`` (its images are one batch), so any single pair can be
    re-generated on its own. ``generate`` replaces the engine (tests use it to feed known images).
    """
    if config.num_images < 1:
        raise IPAStudioError("The number of images per pair must be at least 1.")
    out = Path(config.out)
    if out.suffix.lower() == ".json":
        raise IPAStudioError("The results file is a CSV; the summary is written next to it as .json.")
    if not out.parent.is_dir():
        raise IPAStudioError(f"The output folder '{out.parent}' does not exist.")
    scan = scan_dataset(config.pairs)
    items = scan.items[: config.limit] if config.limit else scan.items
    skipped = [str(p) for p, _ in scan.unreadable]
    if generate is None:
        generate = _engine_generator(config)
    if scorer is None:
        engine = getattr(generate, "engine", None)
        device = engine.device if engine is not None else (config.device or "cpu")
        scorer = ClipScorer(config.clip_model, device)
    if config.save_images is not None:
        Path(config.save_images).mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    pairs = 0
    for index, item in enumerate(items):
        if on_pair is not None:
            on_pair(index, len(items))
        try:
            reference = load_image(item.path, what="image prompt")
        except IPAStudioError:
            skipped.append(str(item.path))
            continue
        seed = config.seed + index
        images = generate(reference, item.caption if config.caption_as_prompt else "", seed)
        generated = scorer.image_embeddings(images)
        ref_embed = scorer.image_embeddings([reference])
        text_embed = scorer.text_embeddings([item.caption])
        scores_i = clip_i(generated, ref_embed)
        scores_t = clip_t(generated, text_embed)
        cosines_t = cosine(generated, text_embed)
        pairs += 1
        for k, image in enumerate(images):
            image_file = ""
            if config.save_images is not None:
                from ipa_studio.core.images import save_png

                target = Path(config.save_images) / f"{index:05d}_{item.path.stem}_{k}.png"
                image_file = str(save_png(image, target, {"ipa-studio-eval": json.dumps({"seed": seed})}))
            rows.append(
                {
                    "pair": index,
                    "reference": str(item.path),
                    "caption": item.caption,
                    "image_index": k,
                    "seed": seed,
                    "clip_i": float(scores_i[k]),
                    "clip_t": float(scores_t[k]),
                    "clip_t_cosine": float(cosines_t[k]),
                    "image_file": image_file,
                }
            )
    if not rows:
        raise IPAStudioError(f"No image prompt in '{config.pairs}' could be evaluated.")

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    result = EvalResult(mean("clip_i"), mean("clip_t"), mean("clip_t_cosine"), len(rows), pairs, skipped)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(out, text.getvalue())
    summary = out.with_suffix(".json")
    record = {
        "summary": result.summary_line(config),
        "clip_i": result.clip_i,
        "clip_t": result.clip_t,
        "clip_t_cosine": result.clip_t_cosine,
        "clip_t_definition": f"CLIPScore = {CLIPSCORE_WEIGHT} * max(cos(image, caption), 0)",
        "images": result.images,
        "pairs": result.pairs,
        "skipped": skipped,
        "clip_model": str(config.clip_model),
        "settings": config.to_json(),
    }
    _write_atomic(summary, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    result.csv, result.summary_file = out, summary
    return result
