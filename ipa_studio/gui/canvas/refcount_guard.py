"""A guard against a PySide6 bug that aborts the interpreter after enough Qt calls.

Found with PySide6 6.12.0 on CPython 3.11: every call of a void Qt method (``widget.update()``,
``item.setPos()``, ``painter.drawImage()``…) drops one reference to ``None`` it never took, and every
``Signal.emit`` drops one to ``True``. From CPython 3.12 on these objects are immortal and nothing
happens; before, once their counts reach zero the process dies with "Fatal Python error:
none_dealloc: deallocating None". With torch loaded the counts start near 144 000 (``None``) and
33 000 (``True``): painting a mask makes several such calls per mouse move, so a few minutes of
painting would end the session. (Any long session would get there in the end.)

:func:`guard_singletons` checks whether the running PySide6 has the bug and, only then, gives
``None``, ``True`` and ``False`` a reference count no session can use up: the immortality that
CPython 3.12 gives them anyway. It belongs at application start; it is idempotent and costs
microseconds, so the canvas also calls it, which makes the canvas safe wherever it is used.
"""

from __future__ import annotations

import ctypes
import logging
import sys

from PySide6.QtCore import QObject

log = logging.getLogger("ipa_studio.gui")

_PROBE_CALLS = 200
_BOOST = 1 << 40  # ~10^12 calls; ob_refcnt is a Py_ssize_t, so this is far from overflowing
_done = False


def pyside_drops_references() -> bool:
    """True when void Qt calls drop a reference to ``None`` (measured, not guessed from versions)."""
    probe = QObject()
    before = sys.getrefcount(None)
    for _ in range(_PROBE_CALLS):
        probe.setObjectName("probe")
    return before - sys.getrefcount(None) >= _PROBE_CALLS // 2


def guard_singletons() -> bool:
    """Apply the guard once, where it is needed; returns True when it was applied (now or before)."""
    global _done
    if _done:
        return True
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False  # immortal singletons: the bug cannot bite
    if not pyside_drops_references():
        return False
    for singleton in (None, True, False):
        # ob_refcnt is the first field of every CPython object (Py_ssize_t), at the object's address.
        ctypes.c_ssize_t.from_address(id(singleton)).value += _BOOST
    _done = True
    log.warning("PySide6 drops references to None/True (a known-bad build); guarded against it")
    return True
