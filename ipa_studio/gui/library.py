"""The model library, off the GUI thread.

``ModelLibrary`` reads weight headers, hashes files and imports torch (through its safe loader), so
none of it may run on the GUI thread: a scan of a folder of checkpoints or the sha256 of a 4 GB file
would freeze the window. One ``LibraryWorker`` thread does all of it, in the order asked, and is the
only writer of the library's index while the window is open (two writers could lose each other's
entries). The GUI gets immutable snapshots and detections back through signals.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal

from ipa_studio.core.errors import Cancelled
from ipa_studio.gui.errors import describe_error


def library_root(models_dir: Path) -> Path:
    """The library folder the window uses: ``IPA_STUDIO_MODELS`` when set (as for the command line,
    so both see one library), else the models folder of the settings."""
    env = os.environ.get("IPA_STUDIO_MODELS")
    return Path(env).expanduser() if env else Path(models_dir).expanduser()


def path_key(path: str | Path) -> str:
    """One spelling per file: the same model reached through a symlink or with ~ compares equal."""
    return os.path.realpath(os.path.expanduser(str(path)))


@dataclass(frozen=True)
class LibrarySnapshot:
    """What the library held after a scan. ``entries`` are ``LibraryEntry`` objects (immutable)."""

    root: Path
    entries: tuple[Any, ...] = ()
    encoders: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Adapter entry name → the image encoder entry ``image_encoder_for`` picks; absent when the
    library has none that fits."""
    error: str = ""
    """Why the library could not be read (a damaged index), for people."""

    def of_kind(self, kind: str) -> list[Any]:
        """Entries of one kind, the usable ones first, each group by name."""
        return sorted(
            (e for e in self.entries if e.kind == kind), key=lambda e: (not e.usable, e.name.lower())
        )

    def find(self, path: str | Path) -> Any | None:
        """The entry for ``path`` (compared as real paths), or None."""
        return self._by_path.get(path_key(path)) if path else None

    @cached_property
    def _by_path(self) -> dict[str, Any]:
        # The library stores resolved paths already; resolving again only guards old index files.
        return {path_key(e.path): e for e in self.entries}


class LibraryWorker(QThread):
    """Library operations on one thread, in order. Started by the first request; ``stop()`` at exit."""

    scanned = Signal(object)  # LibrarySnapshot
    inspected = Signal(str, object, str)  # path, Detection (None on failure), message on failure
    progress = Signal(str, float, float)  # path being added, bytes done, bytes total
    added = Signal(str, object, str)  # path, LibraryEntry (None on failure), message on failure

    def __init__(self, root: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("ipa-studio-library")
        self._root = Path(root)
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._cancel = False
        self._stopping = False
        self._latest: LibrarySnapshot | None = None

    @property
    def root(self) -> Path:
        return self._root

    @property
    def latest(self) -> LibrarySnapshot | None:
        """The last scan's snapshot: a view made after that scan was announced reads it here, since
        a signal reaches only the slots connected when it was sent."""
        with self._lock:
            return self._latest

    # ------------------------------------------------------------------ GUI-thread API
    def set_root(self, root: Path, register: Iterable[str] = ()) -> None:
        self._root = Path(root)
        self.scan(register)

    def scan(self, register: Iterable[str] = ()) -> None:
        """Re-read the folders; ``register``: model paths in use, added to the library when missing
        (referenced where they are, not copied), so the picker lists what the window runs."""
        self._put(("scan", (self._root, tuple(p for p in register if p))))

    def inspect(self, path: str) -> None:
        self._put(("inspect", path))

    def add(self, path: str, *, name: str | None = None, convert: bool = False) -> None:
        with self._lock:
            self._cancel = False
        self._put(("add", (self._root, path, name, convert)))

    def cancel(self) -> None:
        """Stop the add that is running (hashing or converting); the library stays as it was."""
        with self._lock:
            self._cancel = True

    def stop(self, timeout_ms: int = 30_000) -> bool:
        if not self.isRunning():
            return True
        with self._lock:
            self._cancel = self._stopping = True
        self._queue.put(None)
        return self.wait(timeout_ms)

    def _put(self, item: tuple[str, Any]) -> None:
        if self._stopping:
            return
        self._queue.put(item)
        if not self.isRunning():
            self.start()

    def _cancelled(self) -> bool:
        with self._lock:
            return self._cancel

    def _closing(self) -> bool:
        with self._lock:
            return self._stopping

    # ------------------------------------------------------------------ worker thread
    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            what, args = item
            if self._closing():
                continue  # drain: nothing more is wanted once the window closes
            if what == "scan":
                self._announce(self._scan(*args))
            elif what == "inspect":
                self._inspect(args)
            elif what == "add":
                self._add(*args)

    def _announce(self, snapshot: LibrarySnapshot) -> None:
        with self._lock:
            self._latest = snapshot
        self.scanned.emit(snapshot)

    def _scan(self, root: Path, register: tuple[str, ...]) -> LibrarySnapshot:
        try:
            from ipa_studio.core.models.library import LibraryError, ModelLibrary

            lib = ModelLibrary(root)
            for path in register:
                self._register(lib, path)
            try:
                entries = lib.refresh(hash_new=False, should_cancel=self._closing)
            except OSError:
                entries = lib.entries()  # a read-only models folder: list what it holds, add nothing
            encoders = {}
            for adapter in entries:
                if adapter.kind == "adapter" and adapter.usable:
                    try:
                        encoders[adapter.name] = lib.image_encoder_for(adapter)
                    except LibraryError:
                        pass  # the picker says which encoder is missing, from the adapter's details
        except Cancelled:
            return LibrarySnapshot(Path(root))
        except Exception as exc:  # a damaged index, an unwritable folder: the window still opens
            return LibrarySnapshot(Path(root), error=describe_error(exc, "reading the model library"))
        return LibrarySnapshot(Path(root), tuple(entries), MappingProxyType(encoders))

    @staticmethod
    def _register(lib: Any, text: str) -> None:
        path = Path(text).expanduser()
        if not path.exists():
            return
        known = lib.find_path(path)
        # A usable entry is current; an unusable one is detected again, because a folder scanned
        # while its download was still running was recorded as incomplete.
        if known is not None and known.usable:
            return
        try:
            lib.add(path, name=known.name if known else None, hash_files=False)
        except Exception:
            pass  # the Models tab's own check still says what is wrong with it

    def _inspect(self, path: str) -> None:
        try:
            from ipa_studio.core.models.library import ModelLibrary

            found = ModelLibrary.inspect(path)
        except Exception as exc:
            self.inspected.emit(path, None, describe_error(exc, "looking at the model"))
            return
        self.inspected.emit(path, found, "")

    def _add(self, root: Path, path: str, name: str | None, convert: bool) -> None:
        last = [0.0]

        def on_progress(done: int, total: int) -> None:
            # At most ~20 updates a second: hashing reports every 8 MiB.
            now = time.monotonic()
            if now - last[0] >= 0.05 or done >= total:
                last[0] = now
                self.progress.emit(path, float(done), float(total))

        try:
            from ipa_studio.core.models.library import ModelLibrary

            entry = ModelLibrary(root).add(
                path,
                name=name or None,
                convert=convert,
                on_progress=on_progress,
                should_cancel=self._cancelled,
            )
        except Cancelled:
            self.added.emit(path, None, "Adding the model was cancelled; the library is unchanged.")
            return
        except Exception as exc:
            self.added.emit(path, None, describe_error(exc, "adding the model"))
            return
        # The new snapshot first, so whoever handles ``added`` finds the entry in it.
        self._announce(self._scan(root, ()))
        self.added.emit(path, entry, "")
