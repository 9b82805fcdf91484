"""Decode images off the GUI thread (reference crops, history thumbnails).

A 24-megapixel phone photo takes a good fraction of a second to decode; done on the GUI thread that
would freeze the window, and it may happen while a generation runs. A one-thread pool keeps the
order of requests and never competes with the engine for more than one core.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal
from PySide6.QtGui import QImage

from ipa_studio.gui.errors import describe_error


class _Task(QRunnable):
    def __init__(self, owner: ImageLoader, key: Hashable, make: Callable[[], QImage], doing: str) -> None:
        super().__init__()
        self.owner, self.key, self.make, self.doing = owner, key, make, doing

    def run(self) -> None:
        try:
            image = self.make()
        except Exception as exc:
            self.owner.loaded.emit(self.key, QImage(), describe_error(exc, self.doing))
            return
        self.owner.loaded.emit(self.key, image, "")


class ImageLoader(QObject):
    loaded = Signal(object, QImage, str)  # key, image (null on failure), error message

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._pool.setExpiryTimeout(2_000)

    def load(self, key: Hashable, make: Callable[[], QImage], doing: str = "opening an image") -> None:
        """Run ``make`` on the pool; ``loaded(key, image, error)`` arrives on the GUI thread."""
        self._pool.start(_Task(self, key, make, doing))

    def wait(self, timeout_ms: int = 30_000) -> bool:
        self._pool.clear()
        return self._pool.waitForDone(timeout_ms)

    def active(self) -> int:
        return self._pool.activeThreadCount()
