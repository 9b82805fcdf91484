"""``ipa-studio presets``: list, save and delete per-block λ presets."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("presets", help="list, save or delete per-block λ presets (style, composition, …)")
    g.set_defaults(run=run)
    g.add_argument("--save", metavar="NAME", help="save a preset of your own under NAME")
    g.add_argument(
        "--weights",
        metavar="BLOCK=W,…",
        help="the preset's weights, e.g. 'down_blocks.2.attentions.1=1,up_blocks.1=0.5,default=0'",
    )
    g.add_argument("--description", default="", help="what the saved preset is for")
    g.add_argument("--delete", metavar="NAME", help="delete a preset of your own")
    g.add_argument("--file", type=Path, help="the presets file (default: in the user config folder)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipa_studio.cli.generate import parse_scale
    from ipa_studio.core.presets import (
        SD15_LAYERS,
        BlockPreset,
        delete_preset,
        layer_weights,
        load_presets,
        save_preset,
    )

    if args.save and args.delete:
        parser.error("give --save or --delete, not both")
    if args.save:
        if not args.weights:
            parser.error("--save needs --weights")
        try:
            weights = parse_scale(args.weights)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
        if not isinstance(weights, dict):
            weights = {"default": weights}
        saved = save_preset(BlockPreset(args.save, weights, args.description), args.file)
        print(f"saved '{saved.name}'")
        return 0
    if args.delete:
        delete_preset(args.delete, args.file)
        print(f"deleted '{args.delete}'")
        return 0
    print(
        "layer order: "
        + " ".join(
            layer.name.replace("_blocks", "").replace(".attentions", "").replace("mid_block.0", "mid")
            for layer in SD15_LAYERS
        )
    )
    for preset in load_presets(args.file):
        kind = "built in" if preset.builtin else "yours"
        row = " ".join(f"{w:g}" for w in layer_weights(preset.weights))
        print(f"{preset.name} ({kind}): {preset.description}\n    {row}")
    return 0
