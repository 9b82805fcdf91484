"""The inpainting mask being painted: one byte per pixel of the init image, 255 = repaint, 0 = keep.

The pixels live in a ``QImage`` (``Format_Grayscale8``) so that Qt can draw and save it directly, and
are written through a numpy view of that image's own buffer. A stroke segment is a capsule: a disc
swept from the previous mouse position to the new one, whose value at each pixel is the brush
profile of the distance to the segment. The brush combines it with ``np.maximum`` and the eraser
with ``np.minimum``, so overlapping segments do not build up darker rims the way stacked soft stamps
do, the result does not depend on how fast the mouse moved, and a segment touches only its own
bounding box, whatever the size of the image.

Undo keeps, per stroke or command, only the rectangle that changed, before and after, against a
shadow copy of the last committed mask; the history is capped in bytes, dropping the oldest steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, QPointF, QRect, Signal
from PySide6.QtGui import QImage

MIN_BRUSH, MAX_BRUSH = 1.0, 1024.0
HISTORY_BYTES = 256 * 2**20
"""Undo memory cap. A stroke costs twice its bounding box (a 300 px stroke across a 2048 px image
≈ 1.2 MB); a full-image command on a 2048 × 2048 mask at most 8 MB, usually far less."""
HISTORY_STEPS = 1000


@dataclass
class Brush:
    """``size``: diameter in image pixels. ``hardness``: 1 = a hard edge (one pixel of antialiasing),
    0 = feathered all the way from the centre. ``eraser``: paint "keep" instead of "repaint"."""

    size: float = 64.0
    hardness: float = 0.7
    eraser: bool = False

    def clamped(self) -> Brush:
        size = min(max(float(self.size), MIN_BRUSH), MAX_BRUSH)
        return Brush(size, min(max(float(self.hardness), 0.0), 1.0), self.eraser)


def brush_profile(distance: np.ndarray, radius: float, hardness: float) -> np.ndarray:
    """Mask value (0–255) at ``distance`` pixels from the centre line of a stroke."""
    ramp = max(radius * (1.0 - hardness), 1.0)  # at least a pixel of antialiasing, even when hard
    t = np.clip((radius - distance) / ramp, 0.0, 1.0)
    t = t * t * (3.0 - 2.0 * t)  # smoothstep: no visible kink where the feather begins
    return (t * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class _Edit:
    """One undo step: the pixels of ``rect`` before and after (an int when they were all equal)."""

    rect: QRect
    before: np.ndarray | int
    after: np.ndarray | int
    invert: bool = False  # invert is its own inverse: no pixels stored

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in (self.before, self.after) if isinstance(p, np.ndarray)) + 64


def _pack(pixels: np.ndarray) -> np.ndarray | int:
    first = int(pixels.flat[0])
    if (pixels == first).all():
        return first  # clear / fill / a flat area: one number instead of a copy
    return pixels.copy()


class MaskLayer(QObject):
    """The mask and its history. ``changed(rect)`` names the pixels that changed (for the overlay);
    ``history_changed()`` fires when undo / redo become possible or impossible."""

    changed = Signal(QRect)
    history_changed = Signal()

    def __init__(
        self,
        width: int = 1,
        height: int = 1,
        *,
        history_bytes: int = HISTORY_BYTES,
        history_steps: int = HISTORY_STEPS,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.history_bytes = history_bytes
        self.history_steps = history_steps
        self.revision = 0  # goes up with every change, so "has it changed since …" is one comparison
        self._undo: list[_Edit] = []
        self._redo: list[_Edit] = []
        self._bytes = 0
        self._stroke: QRect | None = None
        self._last: QPointF | None = None
        self._brush = Brush()
        self._image = QImage()
        self._shadow = np.zeros((0, 0), np.uint8)
        self.reset(width, height)

    # ------------------------------------------------------------------ size and pixels
    def reset(self, width: int, height: int) -> None:
        """A new, empty mask of ``width`` × ``height``; forgets the history."""
        self._image = QImage(max(1, int(width)), max(1, int(height)), QImage.Format.Format_Grayscale8)
        self._image.fill(0)
        self._shadow = np.zeros((self.height, self.width), np.uint8)
        self._stroke = self._last = None
        self._undo.clear()
        self._redo.clear()
        self._bytes = 0
        self.revision += 1
        self.changed.emit(self.rect())
        self.history_changed.emit()

    @property
    def width(self) -> int:
        return self._image.width()

    @property
    def height(self) -> int:
        return self._image.height()

    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def rect(self) -> QRect:
        return QRect(0, 0, self.width, self.height)

    def image(self) -> QImage:
        """The mask as Qt sees it (a shallow copy: Qt's copy-on-write keeps it from changing later)."""
        return QImage(self._image)

    def _pixels(self) -> np.ndarray:
        # bits() (not constBits) detaches the buffer if a copy of the image is shared, so writes
        # never leak into an image handed out earlier. Taken afresh each time for the same reason.
        stride = self._image.bytesPerLine()
        return np.frombuffer(self._image.bits(), np.uint8).reshape(self.height, stride)[:, : self.width]

    def pixels(self) -> np.ndarray:
        """Read-only view of the mask (height × width, uint8); valid until the next change."""
        stride = self._image.bytesPerLine()
        view = np.frombuffer(self._image.constBits(), np.uint8).reshape(self.height, stride)
        return view[:, : self.width]

    def array(self) -> np.ndarray:
        """A copy of the mask (height × width, uint8)."""
        return self.pixels().copy()

    def is_empty(self) -> bool:
        return not self.pixels().any()

    # ------------------------------------------------------------------ painting
    def begin_stroke(self, point: QPointF, brush: Brush) -> None:
        """Start a stroke with a dab at ``point`` (image pixels; (0, 0) is the top-left corner)."""
        if self._stroke is not None:
            self.end_stroke()
        self._brush = brush.clamped()
        self._stroke = QRect()
        self._last = QPointF(point)
        self._segment(self._last, self._last)

    def stroke_to(self, point: QPointF) -> None:
        """Continue the stroke to ``point``: paints the segment from the previous point only."""
        if self._stroke is None or self._last is None:
            return
        point = QPointF(point)
        self._segment(self._last, point)
        self._last = point

    def end_stroke(self) -> None:
        """Finish the stroke: one undo step for all of it."""
        rect, self._stroke, self._last = self._stroke, None, None
        if rect is not None and not rect.isEmpty():
            self._commit(rect)

    @property
    def painting(self) -> bool:
        return self._stroke is not None

    def _segment(self, p0: QPointF, p1: QPointF) -> None:
        radius = self._brush.size / 2.0
        ax, ay, bx, by = p0.x(), p0.y(), p1.x(), p1.y()
        x0 = max(0, math.floor(min(ax, bx) - radius))
        y0 = max(0, math.floor(min(ay, by) - radius))
        x1 = min(self.width, math.ceil(max(ax, bx) + radius) + 1)
        y1 = min(self.height, math.ceil(max(ay, by) + radius) + 1)
        if x0 >= x1 or y0 >= y1:
            return  # wholly outside the picture
        # Distance from each pixel centre to the segment, in float32: ample for pixel positions.
        px = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - ax)
        py = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - ay)
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        if length2 > 1e-12:
            t = np.clip((px * np.float32(dx) + py * np.float32(dy)) * np.float32(1.0 / length2), 0.0, 1.0)
            ex, ey = px - t * np.float32(dx), py - t * np.float32(dy)
            distance = np.sqrt(ex * ex + ey * ey)
        else:
            distance = np.sqrt(px * px + py * py)
        value = brush_profile(distance, radius, self._brush.hardness)
        target = self._pixels()[y0:y1, x0:x1]
        if self._brush.eraser:
            np.minimum(target, 255 - value, out=target)
        else:
            np.maximum(target, value, out=target)
        rect = QRect(x0, y0, x1 - x0, y1 - y0)
        self._stroke = rect if self._stroke is None or self._stroke.isEmpty() else self._stroke.united(rect)
        self.revision += 1
        self.changed.emit(rect)

    # ------------------------------------------------------------------ commands
    def invert(self) -> None:
        self._cancel_stroke()
        self._invert_pixels()
        self._push(_Edit(self.rect(), 0, 0, invert=True))
        self.changed.emit(self.rect())

    def clear(self) -> None:
        """Everything kept (black)."""
        self._set_all(0)

    def fill(self) -> None:
        """Everything repainted (white)."""
        self._set_all(255)

    def _set_all(self, value: int) -> None:
        self._cancel_stroke()
        self._pixels()[:] = value
        self.revision += 1
        self._commit(self.rect())
        self.changed.emit(self.rect())

    def set_pixels(self, pixels: np.ndarray) -> None:
        """Replace the mask with ``pixels`` (height × width, uint8), as one undo step."""
        pixels = np.asarray(pixels)
        if pixels.shape != (self.height, self.width):
            raise ValueError(f"mask pixels must be {self.height}×{self.width}, got {pixels.shape}")
        self._cancel_stroke()
        self._pixels()[:] = pixels.astype(np.uint8, copy=False)
        self.revision += 1
        self._commit(self.rect())
        self.changed.emit(self.rect())

    def _cancel_stroke(self) -> None:
        if self._stroke is not None:
            self.end_stroke()

    def _invert_pixels(self) -> None:
        pixels = self._pixels()
        np.subtract(255, pixels, out=pixels)
        np.subtract(255, self._shadow, out=self._shadow)
        self.revision += 1

    # ------------------------------------------------------------------ history
    def _commit(self, rect: QRect) -> None:
        """Record what changed inside ``rect`` since the last commit as one undo step."""
        rect = rect.intersected(self.rect())
        x, y, w, h = rect.x(), rect.y(), rect.width(), rect.height()
        now = self.pixels()[y : y + h, x : x + w]
        before = self._shadow[y : y + h, x : x + w]
        diff = now != before
        rows = np.flatnonzero(diff.any(axis=1))
        if rows.size == 0:
            return
        cols = np.flatnonzero(diff.any(axis=0))
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        tight = QRect(x + left, y + top, right - left, bottom - top)
        edit = _Edit(tight, _pack(before[top:bottom, left:right]), _pack(now[top:bottom, left:right]))
        before[top:bottom, left:right] = now[top:bottom, left:right]
        self._push(edit)

    def _push(self, edit: _Edit) -> None:
        self._undo.append(edit)
        self._bytes += edit.nbytes
        for old in self._redo:
            self._bytes -= old.nbytes
        self._redo.clear()
        while self._undo and (self._bytes > self.history_bytes or len(self._undo) > self.history_steps):
            self._bytes -= self._undo.pop(0).nbytes
        self.history_changed.emit()

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo_steps(self) -> int:
        return len(self._undo)

    def history_nbytes(self) -> int:
        return self._bytes

    def undo(self) -> bool:
        self._cancel_stroke()
        if not self._undo:
            return False
        edit = self._undo.pop()
        self._apply(edit, edit.before)
        self._redo.append(edit)
        self.history_changed.emit()
        return True

    def redo(self) -> bool:
        self._cancel_stroke()
        if not self._redo:
            return False
        edit = self._redo.pop()
        self._apply(edit, edit.after)
        self._undo.append(edit)
        self.history_changed.emit()
        return True

    def _apply(self, edit: _Edit, pixels: np.ndarray | int) -> None:
        if edit.invert:
            self._invert_pixels()
        else:
            r = edit.rect
            box = (slice(r.y(), r.y() + r.height()), slice(r.x(), r.x() + r.width()))
            self._pixels()[box] = pixels
            self._shadow[box] = pixels
            self.revision += 1
        self.changed.emit(edit.rect)

    # ------------------------------------------------------------------ files
    def to_pil(self) -> Image.Image:
        """The mask as a PIL ``"L"`` image: what a ``MaskSpec`` and the engine take."""
        return Image.fromarray(np.ascontiguousarray(self.pixels()), "L")

    def save_png(self, path: str | os.PathLike[str]) -> Path:
        """Write the mask as a greyscale PNG (white = repaint), atomically."""
        return write_png_atomic(self.to_pil(), path)


def write_png_atomic(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """``image`` as a PNG at ``path`` via a temporary file and a rename: never a half-written file.

    Light compression on purpose: masks are flat and compress well anyway, and this runs on the GUI
    thread when Generate is pressed (a 2048 × 2048 mask takes a few milliseconds).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
