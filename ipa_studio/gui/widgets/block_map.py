"""The block map: the SD1.5 UNet's 16 cross-attention layers, drawn as the U the picture goes through.

Down blocks step down on the left, the middle block sits at the bottom, the up blocks climb back on
the right; each block holds one bar per layer. A bar's height is the layer's weight (0–2; the line
across marks 1, the slider's full λ) and an empty bar carries no reference at all. Under each block
is the λ its layers get (weight × the slider).

People edit it with the mouse (click a bar to select it, drag up or down to set its weight; click a
block's name to select the whole block) or the keys (Left / Right choose a layer, Up / Down change
it by 0.05, Page Up / Page Down by 0.25). The widget only draws and reports; the panel writes the
edits into the view state, which sends the new values back.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QPoint, QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QFont, QHelpEvent, QKeyEvent, QMouseEvent, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from ipa_studio.core.presets import SD15_LAYERS, Layer
from ipa_studio.gui.style import ACCENT

MAX_WEIGHT = 2.0
STEP, PAGE = 0.05, 0.25
BLOCK_TITLES = {
    "down_blocks.0": "Down 0",
    "down_blocks.1": "Down 1",
    "down_blocks.2": "Down 2",
    "mid_block": "Mid",
    "up_blocks.1": "Up 1",
    "up_blocks.2": "Up 2",
    "up_blocks.3": "Up 3",
}
# What each depth of the UNet sees, for the tooltips: the fine grid carries texture, the coarse one
# layout (the observation the style / composition presets rest on).
_GRID_WORDS = {8: "fine detail and texture", 16: "shapes and texture", 32: "layout and shapes", 64: "layout"}

_BAR_W, _BAR_GAP = 11, 4
_TRACK_H = 52  # bar height at weight 2
_LEVEL_DY = 16  # how far each level of the U steps down
_TITLE_H, _VALUE_H = 16, 16


class BlockMap(QWidget):
    selection_changed = Signal(list)  # the selected layer names
    edited = Signal(list, float)  # layer names, their new weight

    def __init__(self, layers: tuple[Layer, ...] = SD15_LAYERS, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("blockMap")
        self.setAccessibleName("Block map")
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.layers = layers
        self.blocks: list[str] = list(dict.fromkeys(layer.block for layer in layers))
        self.values = [1.0] * len(layers)
        self.strength = 1.0
        self.selected: list[str] = [layers[0].name]
        self._dragging: int | None = None
        self._levels = self._block_levels()

    # ------------------------------------------------------------------ data in
    def set_values(self, values: list[float], strength: float) -> None:
        if len(values) != len(self.layers):
            raise ValueError(f"{len(values)} values for {len(self.layers)} layers")
        self.values, self.strength = [float(v) for v in values], float(strength)
        self.update()

    def select(self, names: list[str]) -> None:
        known = [layer.name for layer in self.layers if layer.name in names]
        if known and known != self.selected:
            self.selected = known
            self.selection_changed.emit(list(known))
            self.update()

    def select_block(self, block: str) -> None:
        self.select([layer.name for layer in self.layers if layer.block == block])

    def selection_title(self) -> str:
        """What is selected, in words: a block's title, or one layer of a block."""
        chosen = [layer for layer in self.layers if layer.name in self.selected]
        if not chosen:
            return ""
        block = chosen[0].block
        in_block = [layer for layer in self.layers if layer.block == block]
        if len(chosen) == len(in_block) and len(in_block) > 1:
            return f"{BLOCK_TITLES.get(block, block)}, all {len(in_block)} layers"
        if len(in_block) == 1:
            return BLOCK_TITLES.get(block, block)
        return f"{BLOCK_TITLES.get(block, block)}, layer {in_block.index(chosen[0]) + 1} of {len(in_block)}"

    # ------------------------------------------------------------------ geometry
    def _block_levels(self) -> dict[str, int]:
        """How deep each block sits in the U: 0 at the top (full detail), deepest in the middle."""
        sizes = {layer.block: layer.downscale for layer in self.layers}
        smallest = min(sizes.values())
        return {block: (sizes[block] // smallest).bit_length() - 1 for block in self.blocks}

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(360, self._height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        per_block = max(sum(1 for x in self.layers if x.block == b) for b in self.blocks)
        return QSize(len(self.blocks) * (per_block * (_BAR_W + _BAR_GAP) + 4), self._height())

    def _height(self) -> int:
        return _TITLE_H + _TRACK_H + _VALUE_H + max(self._levels.values()) * _LEVEL_DY + 12

    def _column(self, block: str) -> QRect:
        """The whole column of one block: its title, its bars and its λ line."""
        width = self.width() / len(self.blocks)
        i = self.blocks.index(block)
        top = 4 + self._levels[block] * _LEVEL_DY
        return QRect(round(i * width), top, round(width), _TITLE_H + _TRACK_H + _VALUE_H + 4)

    def block_title_rect(self, block: str) -> QRect:
        column = self._column(block)
        return QRect(column.x(), column.y(), column.width(), _TITLE_H)

    def track_rect(self, index: int) -> QRect:
        """Where layer ``index``'s bar can reach (weight 0 at the bottom, 2 at the top)."""
        layer = self.layers[index]
        members = [i for i, x in enumerate(self.layers) if x.block == layer.block]
        column = self._column(layer.block)
        span = len(members) * _BAR_W + (len(members) - 1) * _BAR_GAP
        left = column.x() + (column.width() - span) // 2 + members.index(index) * (_BAR_W + _BAR_GAP)
        return QRect(left, column.y() + _TITLE_H + 2, _BAR_W, _TRACK_H)

    def point_for(self, index: int, weight: float) -> QPoint:
        """The point of layer ``index``'s track that stands for ``weight`` (for dragging there)."""
        track = self.track_rect(index)
        return QPoint(track.center().x(), round(track.bottom() - weight / MAX_WEIGHT * (track.height() - 1)))

    def _weight_at(self, index: int, y: int) -> float:
        track = self.track_rect(index)
        weight = (track.bottom() - y) / (track.height() - 1) * MAX_WEIGHT
        return round(min(max(weight, 0.0), MAX_WEIGHT) / STEP) * STEP

    def _bar_at(self, pos: QPoint) -> int | None:
        for i in range(len(self.layers)):
            if self.track_rect(i).adjusted(-_BAR_GAP // 2, -4, _BAR_GAP // 2, 4).contains(pos):
                return i
        return None

    def _title_at(self, pos: QPoint) -> str | None:
        return next((b for b in self.blocks if self.block_title_rect(b).contains(pos)), None)

    # ------------------------------------------------------------------ drawing
    def paintEvent(self, _event: object) -> None:  # noqa: N802 - Qt override
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        accent = QColor(ACCENT)
        text = self.palette().windowText().color()
        dim = QColor("#8a8a92")
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, small.pointSizeF() * 0.85))

        # The path through the UNet, behind the blocks: down the left, up the right.
        path = QPainterPath()
        for n, block in enumerate(self.blocks):
            centre = self._column(block)
            point = QPoint(centre.center().x(), centre.y() + _TITLE_H + _TRACK_H // 2)
            path.moveTo(point) if n == 0 else path.lineTo(point)
        p.setPen(QPen(QColor("#45454c"), 3, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        p.drawPath(path)

        selected = set(self.selected)
        for block in self.blocks:
            members = [i for i, x in enumerate(self.layers) if x.block == block]
            first, last = self.track_rect(members[0]), self.track_rect(members[-1])
            box = QRectF(first.left() - 5, first.top() - 4, last.right() - first.left() + 11, _TRACK_H + 8)
            p.setPen(QPen(QColor("#4a4a52"), 1))
            p.setBrush(QColor("#26262a"))
            p.drawRoundedRect(box, 4, 4)
            title = self.block_title_rect(block)
            whole = all(self.layers[i].name in selected for i in members) and len(members) > 1
            p.setFont(small)
            p.setPen(accent.lighter(130) if whole else text)
            p.drawText(title, Qt.AlignmentFlag.AlignCenter, BLOCK_TITLES.get(block, block))
            for i in members:
                self._draw_bar(p, i, self.layers[i].name in selected, accent)
            lams = [self.values[i] * self.strength for i in members]
            low, high = min(lams), max(lams)
            words = "off" if high == 0 else (f"{low:.2f}" if high - low < 0.005 else f"{low:.1f}–{high:.1f}")
            value_rect = QRect(title.x(), first.bottom() + 5, title.width(), _VALUE_H)
            p.setPen(dim if high == 0 else text)
            p.drawText(value_rect, Qt.AlignmentFlag.AlignCenter, words)
        if self.hasFocus():
            p.setPen(QPen(accent, 1, Qt.PenStyle.DotLine))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRoundedRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5), 4, 4)
        p.end()

    def _draw_bar(self, p: QPainter, index: int, selected: bool, accent: QColor) -> None:
        track = self.track_rect(index)
        weight = self.values[index]
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("#1c1c1e"))
        p.drawRect(track)
        if weight > 0:
            filled = max(2, round(weight / MAX_WEIGHT * track.height()))
            colour = QColor(accent)
            colour.setAlphaF(0.55 + 0.45 * min(weight, 1.0))
            if weight > 1:
                colour = colour.lighter(100 + round(30 * (weight - 1)))
            p.setBrush(colour)
            p.drawRect(QRect(track.left(), track.bottom() - filled + 1, track.width(), filled))
        # The line at weight 1: the slider's λ exactly.
        one = track.bottom() - round(track.height() / 2)
        p.setPen(QPen(QColor("#7a7a84"), 1))
        p.drawLine(track.left() - 1, one, track.right() + 1, one)
        if selected:
            p.setPen(QPen(QColor("#ffffff"), 1.5))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(QRectF(track).adjusted(-1.5, -1.5, 1.5, 1.5))

    # ------------------------------------------------------------------ input
    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if event.button() != Qt.MouseButton.LeftButton:
            return super().mousePressEvent(event)
        pos = event.position().toPoint()
        bar = self._bar_at(pos)
        if bar is not None:
            self.select([self.layers[bar].name])
            self._dragging = bar
            self.edited.emit([self.layers[bar].name], self._weight_at(bar, pos.y()))
            return
        block = self._title_at(pos)
        if block is not None:
            self.select_block(block)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._dragging is not None and event.buttons() & Qt.MouseButton.LeftButton:
            bar = self._dragging
            self.edited.emit([self.layers[bar].name], self._weight_at(bar, event.position().toPoint().y()))
        cursor = (
            Qt.CursorShape.SizeVerCursor if self._bar_at(event.position().toPoint()) is not None else None
        )
        if cursor is None:
            self.unsetCursor()
        else:
            self.setCursor(cursor)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        self._dragging = None
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        names = [layer.name for layer in self.layers]
        current = names.index(self.selected[0])
        key = event.key()
        if key in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            step = -1 if key == Qt.Key.Key_Left else 1
            self.select([names[(current + step) % len(names)]])
            return
        change = {
            Qt.Key.Key_Up: STEP,
            Qt.Key.Key_Down: -STEP,
            Qt.Key.Key_PageUp: PAGE,
            Qt.Key.Key_PageDown: -PAGE,
        }.get(key)
        if change is None:
            return super().keyPressEvent(event)
        weight = self.values[current] + change
        self.edited.emit(list(self.selected), round(min(max(weight, 0.0), MAX_WEIGHT), 4))

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ToolTip and isinstance(event, QHelpEvent):
            bar = self._bar_at(event.pos())
            if bar is None:
                block = self._title_at(event.pos())
                tip = f"Click to select all of {BLOCK_TITLES.get(block, block)}" if block else ""
            else:
                tip = self.layer_tip(bar)
            if tip:
                QToolTip.showText(event.globalPos(), tip, self)
            else:
                QToolTip.hideText()
            return True
        return super().event(event)

    def layer_tip(self, index: int) -> str:
        layer = self.layers[index]
        weight = self.values[index]
        grid = f"1/{layer.downscale} of the picture's size: {_GRID_WORDS.get(layer.downscale, 'layout')}"
        carries = (
            f"weight {weight:.2f} → λ {weight * self.strength:.2f}" if weight > 0 else "off (no reference)"
        )
        return f"{layer.name}\n{carries}\nits grid: {grid}\nDrag up or down to change it."
