"""``ipa-studio sweep``: the λ sweep contact sheet (one PNG) and its scores (a CSV)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ipa_studio.cli.generate import add_request_arguments, make_engine, request_from_args

DEFAULT_LAMBDAS = "0,0.2,0.4,0.6,0.8,1"


def parse_lambdas(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of λ values such as 0,0.5,1") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one λ")
    return values


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "sweep",
        help="one seed at several λ (and block presets), scored with CLIP-I / CLIP-T, as a contact sheet",
        description="Generates the request once per λ (and per --sweep-preset) with the same seed, scores "
        "each picture with CLIP-I (against the references) and CLIP-T (against the prompt), marks the "
        "balance point and writes the contact sheet PNG plus a CSV of the scores.",
    )
    g.set_defaults(run=run)
    add_request_arguments(g)
    s = g.add_argument_group("sweep")
    s.add_argument(
        "--lambdas",
        type=parse_lambdas,
        default=parse_lambdas(DEFAULT_LAMBDAS),
        metavar="L1,L2,…",
        help=f"the λ values, one column each (default {DEFAULT_LAMBDAS})",
    )
    s.add_argument(
        "--sweep-preset",
        action="append",
        default=[],
        metavar="NAME",
        help="a block preset, one row each (repeatable; default: one row of plain λ)",
    )
    s.add_argument(
        "--clip-model",
        type=Path,
        required=True,
        help="CLIP model folder for the scores (the paper used openai/clip-vit-large-patch14)",
    )
    s.add_argument("--out", type=Path, required=True, help="the contact sheet PNG")
    s.add_argument("--csv", type=Path, help="the scores (default: beside --out, .csv)")
    s.add_argument("--save-images", type=Path, metavar="DIR", help="also write every picture, with metadata")
    s.add_argument("--thumb", type=int, default=256, help="picture size on the sheet (pixels)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tqdm import tqdm

    from ipa_studio.core.evaluate import ClipScorer
    from ipa_studio.core.images import save_png
    from ipa_studio.core.metadata import request_to_metadata
    from ipa_studio.core.presets import find_preset, load_presets
    from ipa_studio.core.sweep import contact_sheet, run_sweep, write_csv

    if args.preset is not None:
        parser.error("a sweep sets λ itself: use --sweep-preset for its rows instead of --preset")
    if not 64 <= args.thumb <= 1024:
        parser.error("--thumb must be from 64 to 1024")
    request = request_from_args(args, parser)
    out = args.out if args.out.suffix.lower() == ".png" else args.out.with_suffix(".png")
    csv_path = args.csv or out.with_suffix(".csv")
    for folder in {out.parent, csv_path.parent}:
        if not folder.is_dir():
            raise SystemExit(f"error: the output folder '{folder}' does not exist")
    known = load_presets()
    presets = [find_preset(name, known) for name in args.sweep_preset]
    print(f"seed {request.seed}", file=sys.stderr)
    engine = make_engine(args, request)
    scorer = ClipScorer(args.clip_model, engine.device)
    cells = len(args.lambdas) * max(1, len(presets))
    bar = tqdm(total=cells, desc="sweep", unit="picture", disable=args.quiet, file=sys.stderr)

    def on_progress(progress) -> None:
        bar.update(progress.done - bar.n)

    try:
        result = run_sweep(engine, request, args.lambdas, scorer, presets=presets, on_progress=on_progress)
    finally:
        bar.close()
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    files: list[str] = []
    if args.save_images is not None:
        args.save_images.mkdir(parents=True, exist_ok=True)
        for cell in result.cells:
            name = f"{out.stem}_r{cell.row}_l{cell.strength:g}.png"
            files.append(
                str(save_png(cell.image, args.save_images / name, request_to_metadata(cell.request)))
            )
    best = result.cells[result.balance]
    extra = {
        "sweep_lambdas": ",".join(f"{v:g}" for v in result.strengths),
        "sweep_presets": ",".join(p or "" for p in result.presets),
        "sweep_balance_lambda": best.strength,
        "sweep_balance_preset": best.preset or "",
    }
    save_png(contact_sheet(result, args.thumb), out, request_to_metadata(request, extra=extra))
    write_csv(result, csv_path, files)
    print(out)
    print(csv_path)
    label = f"λ {best.strength:g}" + (f" ({best.preset})" if best.preset else "")
    print(f"balance: {label}, CLIP-I {best.clip_i:.4f}, CLIP-T {best.clip_t:.4f}", file=sys.stderr)
    return 0
