"""``ipa-studio evaluate``: the paper's CLIP-I / CLIP-T of an adapter over (image prompt, caption) pairs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipa_studio.core.evaluate import EvalConfig

from ipa_studio.core.request import SCHEDULERS

PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="score an adapter with the paper's CLIP-I / CLIP-T metrics",
        description="Generate N images per image prompt (empty text prompt, λ=1 by default, as the "
        "paper did on COCO val2017) and score each: CLIP-I = cosine of CLIP image embeddings of the "
        "generated image and the image prompt; CLIP-T = CLIPScore (2.5·max(cos, 0)) of the generated "
        "image with the prompt image's caption. Writes one CSV row per generated image and a summary "
        "(.json next to the CSV) recording the adapter, base model, λ and seed.",
    )
    e.set_defaults(run=run)
    m = e.add_argument_group("models and data")
    m.add_argument(
        "--pairs", type=Path, required=True, help="image prompts with .txt captions or metadata.jsonl"
    )
    m.add_argument("--model", type=Path, required=True, help="SD1.5 base model (diffusers folder)")
    which = m.add_mutually_exclusive_group(required=True)
    which.add_argument("--adapter", type=Path, help="IP-Adapter checkpoint to evaluate")
    which.add_argument(
        "--checkpoints",
        type=Path,
        nargs="+",
        metavar="PATH",
        help="evaluate several: a training run folder (each saved checkpoint), checkpoint folders or "
        "adapter files; writes one summary row per checkpoint and names the best",
    )
    m.add_argument("--image-encoder", type=Path, required=True, help="image encoder folder (ViT-H/14)")
    m.add_argument("--clip-model", type=Path, required=True, help="CLIPModel folder (ViT-L/14 in the paper)")
    s = e.add_argument_group("generation (defaults: the paper's)")
    s.add_argument("--num-images", type=int, default=4, help="images per pair (default 4)")
    s.add_argument("--scale", type=float, default=1.0, metavar="λ", help="image prompt strength (1.0)")
    s.add_argument("--seed", type=int, default=0, help="pair i uses seed + i (default 0)")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--guidance", type=float, default=7.5)
    s.add_argument("--size", type=int, default=512)
    s.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    s.add_argument("--caption-as-prompt", action="store_true", help="also give the caption as text prompt")
    s.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    o = e.add_argument_group("output")
    o.add_argument("--out", type=Path, required=True, help="CSV file (summary written next to it as .json)")
    o.add_argument(
        "--best-by",
        choices=("clip-i", "clip-t"),
        default="clip-i",
        help="with --checkpoints: the metric that picks the best checkpoint (default clip-i, the "
        "paper's image-prompt metric; ties go to the other metric, then the earlier step)",
    )
    o.add_argument("--save-images", type=Path, default=None, help="also save the generated images here")
    o.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    o.add_argument("--precision", choices=sorted(PRECISIONS), default=None)
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument(
        "--events",
        action="store_true",
        help="with --checkpoints: print progress and each checkpoint's scores as JSON lines on stdout "
        "(what the window's Evaluate tab reads)",
    )


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tqdm import tqdm

    from ipa_studio.core.evaluate import EvalConfig, evaluate

    if args.num_images < 1:
        parser.error("--num-images must be at least 1")
    if args.events and args.checkpoints is None:
        parser.error("--events goes with --checkpoints")
    config = EvalConfig(
        pairs=args.pairs,
        base_model=args.model,
        adapter=args.adapter or Path(),
        image_encoder=args.image_encoder,
        clip_model=args.clip_model,
        out=args.out,
        num_images=args.num_images,
        scale=args.scale,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        size=args.size,
        scheduler=args.scheduler,
        caption_as_prompt=args.caption_as_prompt,
        limit=args.limit,
        save_images=args.save_images,
        device=args.device,
        dtype=PRECISIONS[args.precision] if args.precision else None,
    )
    bar = tqdm(unit="pair", desc="evaluating", disable=args.quiet, file=sys.stderr)

    if args.checkpoints is not None:
        return _run_checkpoints(args, config, bar)

    def on_pair(index: int, total: int) -> None:
        bar.total = total
        bar.update(index - bar.n)

    try:
        result = evaluate(config, on_pair=on_pair)
        bar.update(bar.total - bar.n if bar.total else 0)
    finally:
        bar.close()
    if result.skipped:
        print(f"{len(result.skipped)} unreadable image prompt(s) skipped", file=sys.stderr)
    print(result.summary_line(config))
    print(result.csv)
    return 0


def _run_checkpoints(args: argparse.Namespace, config: EvalConfig, bar: Any) -> int:
    from ipa_studio.core.evaluate import (
        CheckpointScore,
        Progress,
        best_definition,
        evaluate_checkpoints,
        find_checkpoints,
    )

    checkpoints = find_checkpoints(args.checkpoints)
    best_by = args.best_by.replace("-", "_")
    if config.out.suffix.lower() != ".csv":
        config.out = config.out.with_suffix(".csv")
    print(f"{len(checkpoints)} checkpoint(s): " + ", ".join(c.label for c in checkpoints), file=sys.stderr)

    def event(kind: str, **fields: Any) -> None:
        # One JSON object per line, flushed at once: a reader on the other end of a pipe sees each
        # checkpoint's scores as soon as they exist. Floats are written exactly (repr).
        print(json.dumps({"event": kind, **fields}), flush=True)

    if args.events:
        event(
            "checkpoints",
            items=[{"step": c.step, "adapter": str(c.adapter), "label": c.label} for c in checkpoints],
        )

    def on_progress(p: Progress) -> None:
        bar.total = p.checkpoints * p.pairs
        bar.update(p.checkpoint * p.pairs + p.pair - bar.n)
        if args.events:
            event(
                "progress",
                fraction=p.fraction,
                checkpoint=p.checkpoint,
                checkpoints=p.checkpoints,
                pair=p.pair,
                pairs=p.pairs,
                step=p.step,
                steps=p.steps,
            )

    def on_score(score: CheckpointScore) -> None:
        if args.events:
            event("score", **score.to_json())

    try:
        result = evaluate_checkpoints(
            config, checkpoints, best_by=best_by, on_progress=on_progress, on_score=on_score
        )
    finally:
        bar.close()
    if args.events:
        event(
            "done",
            best=result.scores.index(result.best),
            best_by=best_by,
            best_definition=best_definition(best_by),
            csv=str(result.csv),
            summary=str(result.summary_file),
            skipped=len(result.skipped),
        )
        return 0
    if result.skipped:
        print(f"{len(result.skipped)} unreadable image prompt(s) skipped", file=sys.stderr)
    for score in result.scores:
        mark = "  <- best" if score is result.best else ""
        print(
            f"{score.checkpoint.label:>12}  CLIP-I {score.clip_i:.4f}  CLIP-T {score.clip_t:.4f}  "
            f"{score.checkpoint.adapter}{mark}"
        )
    print(f"best: {result.best.checkpoint.label} ({best_definition(best_by)})")
    print(result.csv)
    return 0
