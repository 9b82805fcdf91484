"""Command line entry point: ``ipa-studio <command>``. The same core as the window, no Qt.

Each command lives in its own module with ``register(subparsers)``, which adds its parser and sets
``run(args, parser) -> exit code`` as the default; add new commands to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from ipa_studio import __version__
from ipa_studio.cli import evaluate, generate, models, presets, sweep, train

COMMANDS = [generate, sweep, train, evaluate, models, presets]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ipa-studio", description="Image-prompted Stable Diffusion 1.5.")
    parser.add_argument("--version", action="version", version=f"ipa-studio {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from ipa_studio.core.errors import Cancelled, IPAStudioError
    from ipa_studio.core.files import remove_temps_on_termination

    # A `kill` (SIGTERM) while a picture or a converted model is being written must not leave the
    # partial file behind.
    remove_temps_on_termination()
    if os.environ.get("IPA_STUDIO_BACKGROUND") == "1" and hasattr(os, "nice"):
        # Started by the window for background work (the Evaluate tab): the window's own thread
        # must win the CPU over this process, or its event loop waits for a time slice.
        with contextlib.suppress(OSError):
            os.nice(10)

    try:
        return args.run(args, parser)
    except Cancelled:
        print("cancelled: no image was written", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted: no image was written", file=sys.stderr)
        return 130
    except IPAStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "out of memory" not in str(exc):
            raise
        print("error: out of memory. Try a smaller size, fewer images, or --device cpu.", file=sys.stderr)
        return 3
