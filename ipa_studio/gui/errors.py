"""Turning any exception into a sentence for the person at the window.

The core already raises :class:`IPAStudioError` with a message written for people; those are shown
as they are. Everything else is a bug or an environment problem (out of memory, a driver crash): the
traceback goes to the log, and the window says what happened in words, never as a traceback.
"""

from __future__ import annotations

import logging

from ipa_studio.core.errors import IPAStudioError

log = logging.getLogger("ipa_studio.gui")


def describe_error(exc: BaseException, doing: str = "generating") -> str:
    if isinstance(exc, IPAStudioError):
        return str(exc)
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        # torch.cuda.OutOfMemoryError and MPS allocation failures both say "out of memory".
        return (
            f"The computer ran out of memory while {doing}. Try a smaller image size, fewer images at "
            "once, or close other programs that use the graphics card; then generate again."
        )
    log.error("unexpected error while %s", doing, exc_info=exc)
    return (
        f"Something unexpected went wrong while {doing}: {first_line}. The details were written to the log."
    )
