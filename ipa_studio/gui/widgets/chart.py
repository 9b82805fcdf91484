"""A line chart drawn with QPainter: named series, one or two y axes, marked points, a legend.

Used for training curves (loss, learning rate against step) and evaluation results (CLIP-I, CLIP-T
against checkpoint step). Points can be appended while a run streams them: ``append`` only stores
the point and asks for a repaint, and Qt folds many repaint requests into one. Drawing cost stays
flat however many points there are, because each series is reduced to at most four points per
pixel column (first, lowest, highest, last) before it is drawn, so a curve of 10 000 steps costs
about as much as one of 1 000 and still shows every spike.

``to_pixel`` is the chart's own mapping from data to widget coordinates (what tests and tooltips
use), and ``save_png`` renders the chart at any size into a PNG, written atomically.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPaintEvent, QPen, QPolygonF
from PySide6.QtWidgets import QSizePolicy, QWidget

from ipa_studio.core.files import temporary

LEFT = "left"
RIGHT = "right"

# Colours that stay apart from each other on the dark ground (and for most colour-blind readers).
PALETTE = ("#4e9cff", "#f5a142", "#5bd08c", "#e86a8a", "#b48cff", "#e6d45a")

_PIECE = 64  # points per stroked piece of a long curve

_BACKGROUND = QColor("#1c1c1e")
_PLOT_BACKGROUND = QColor("#222226")
_GRID = QColor("#34343a")
_AXIS = QColor("#6a6a72")
_TEXT = QColor("#c8c8ce")
_TITLE = QColor("#f2f2f5")


@dataclass
class _Series:
    name: str
    color: QColor
    axis: str
    width: float
    dashed: bool
    xs: np.ndarray = field(default_factory=lambda: np.empty(64))
    ys: np.ndarray = field(default_factory=lambda: np.empty(64))
    count: int = 0
    visible: bool = True

    def append(self, x: float, y: float) -> None:
        if self.count == len(self.xs):
            # Doubling keeps appends amortised O(1) while a run streams thousands of points.
            self.xs = np.resize(self.xs, 2 * len(self.xs))
            self.ys = np.resize(self.ys, 2 * len(self.ys))
        self.xs[self.count] = x
        self.ys[self.count] = y
        self.count += 1

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = self.xs[: self.count], self.ys[: self.count]
        keep = np.isfinite(xs) & np.isfinite(ys)
        return (xs, ys) if keep.all() else (xs[keep], ys[keep])


@dataclass(frozen=True)
class Mark:
    """A highlighted point of a series, e.g. the best checkpoint."""

    series: str
    x: float
    y: float
    label: str


@dataclass(frozen=True)
class _Axis:
    low: float
    high: float
    ticks: tuple[float, ...]
    step: float

    def fraction(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)


@dataclass(frozen=True)
class _Layout:
    plot: QRectF
    x: _Axis
    left: _Axis | None
    right: _Axis | None
    legend_y: float
    # Only right-axis series: they are read from the left axis (no empty axis on one side).
    right_only: bool


def nice_ticks(low: float, high: float, target: int = 5) -> tuple[float, float, tuple[float, ...], float]:
    """Round axis limits and evenly spaced ticks at 1, 2 or 5 × 10^n covering ``low..high``.

    Returns ``(low, high, ticks, step)``; a zero-height range is widened so a flat curve sits in the
    middle of the chart instead of on its edge.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        low, high = 0.0, 1.0
    if high < low:
        low, high = high, low
    if high - low <= abs(high) * 1e-12 or high == low:
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    raw = (high - low) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), 10 * magnitude)
    start = math.floor(low / step + 1e-9) * step
    end = math.ceil(high / step - 1e-9) * step
    count = int(round((end - start) / step))
    ticks = tuple(_tidy(start + i * step, step) for i in range(count + 1))
    return start, end, ticks, step


def _tidy(value: float, step: float) -> float:
    # start + i*step picks up float noise (0.30000000000000004); round to the step's precision.
    digits = max(0, -math.floor(math.log10(step)) + 2)
    return round(value, digits)


def format_tick(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick spacing needs."""
    if value == 0:
        return "0"
    if step < 1e-3 or abs(value) >= 1e7:
        # Learning rates and the like: one mantissa style for the whole axis ("8.0e-5", "1.0e-4").
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{value:.{_decimals(step)}f}"


def _decimals(step: float) -> int:
    if step >= 1:
        return 0 if float(step).is_integer() else 1
    return min(8, max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if _mantissa(step) == 2.5 else 0))


def _mantissa(step: float) -> float:
    return round(step / 10 ** math.floor(math.log10(step)), 6)


def decimate(xs: np.ndarray, ys: np.ndarray, x0: float, x_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """At most four points per pixel column (first, min, max, last), in drawing order.

    ``x0`` / ``x_scale`` map data x to pixels. Points whose x goes backwards are drawn as given
    (no reduction), since a column's min/max only stands for the line when x is ordered.
    """
    n = len(xs)
    if n < 8 or np.any(np.diff(xs) < 0):
        return xs, ys
    columns = np.floor((xs - x0) * x_scale).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
    if len(starts) * 4 >= n:
        return xs, ys
    ends = np.r_[starts[1:], n] - 1
    low_at = np.empty(len(starts), dtype=np.int64)
    high_at = np.empty(len(starts), dtype=np.int64)
    # The x of the min and max within their column, so the reduced line keeps its shape.
    for i, (s, e) in enumerate(zip(starts, ends + 1, strict=True)):
        seg = ys[s:e]
        low_at[i] = s + int(np.argmin(seg))
        high_at[i] = s + int(np.argmax(seg))
    first_two = np.minimum(low_at, high_at)
    second_two = np.maximum(low_at, high_at)
    order = np.stack([starts, first_two, second_two, ends], axis=1).reshape(-1)
    # Drop repeats (a column of one point lists it four times).
    keep = np.r_[True, order[1:] != order[:-1]]
    order = order[keep]
    return xs[order], ys[order]


class LineChart(QWidget):
    """Named line series over a shared x axis, with a left and (when a series asks) a right y axis."""

    def __init__(self, parent: QWidget | None = None, *, title: str = "") -> None:
        super().__init__(parent)
        self._series: dict[str, _Series] = {}
        self._marks: list[Mark] = []
        self._title = title
        self._x_title = ""
        self._axis_titles: dict[str, str] = {LEFT: "", RIGHT: ""}
        self._placeholder = "No data yet"
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(260, 180)

    # --- data -------------------------------------------------------------------------------

    def add_series(
        self,
        name: str,
        color: str | QColor | None = None,
        *,
        axis: str = LEFT,
        width: float = 2.0,
        dashed: bool = False,
    ) -> None:
        """Add an empty series drawn against the ``LEFT`` or ``RIGHT`` y axis."""
        if axis not in (LEFT, RIGHT):
            raise ValueError(f"axis must be {LEFT!r} or {RIGHT!r}, not {axis!r}")
        if name in self._series:
            raise ValueError(f"the chart already has a series named {name!r}")
        chosen = QColor(color) if color is not None else QColor(PALETTE[len(self._series) % len(PALETTE)])
        self._series[name] = _Series(name, chosen, axis, width, dashed)
        self.update()

    def series_names(self) -> list[str]:
        return list(self._series)

    def append(self, name: str, x: float, y: float) -> None:
        """Add one point to the end of a series; the repaint is scheduled, not done here."""
        self._get(name).append(float(x), float(y))
        self.update()

    def set_points(self, name: str, xs: list[float] | np.ndarray, ys: list[float] | np.ndarray) -> None:
        """Replace all points of a series."""
        series = self._get(name)
        xs_a, ys_a = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if xs_a.shape != ys_a.shape or xs_a.ndim != 1:
            raise ValueError(f"x and y of {name!r} must be two lists of the same length")
        series.xs, series.ys = xs_a.copy(), ys_a.copy()
        series.count = len(xs_a)
        if series.count == 0:
            series.xs, series.ys = np.empty(64), np.empty(64)
        self.update()

    def points(self, name: str) -> tuple[list[float], list[float]]:
        """The points of a series as stored (before any reduction for drawing)."""
        series = self._get(name)
        return series.xs[: series.count].tolist(), series.ys[: series.count].tolist()

    def set_series_visible(self, name: str, visible: bool) -> None:
        self._get(name).visible = visible
        self.update()

    def clear(self) -> None:
        """Remove every point and mark, keeping the series, titles and colours."""
        for series in self._series.values():
            series.xs, series.ys, series.count = np.empty(64), np.empty(64), 0
        self._marks.clear()
        self.update()

    def set_mark(self, series: str, x: float, y: float, label: str) -> None:
        """Mark a point with a ring and a label; one mark per label (setting "best" again moves it)."""
        self._get(series)
        self._marks = [m for m in self._marks if m.label != label]
        self._marks.append(Mark(series, float(x), float(y), label))
        self.update()

    def clear_marks(self) -> None:
        self._marks.clear()
        self.update()

    def marks(self) -> list[Mark]:
        return list(self._marks)

    def set_titles(
        self,
        *,
        title: str | None = None,
        x: str | None = None,
        left: str | None = None,
        right: str | None = None,
    ) -> None:
        if title is not None:
            self._title = title
        if x is not None:
            self._x_title = x
        if left is not None:
            self._axis_titles[LEFT] = left
        if right is not None:
            self._axis_titles[RIGHT] = right
        self.update()

    def set_placeholder(self, text: str) -> None:
        """What the chart says while it has no points."""
        self._placeholder = text
        self.update()

    # --- mapping ----------------------------------------------------------------------------

    def to_pixel(self, x: float, y: float, axis: str = LEFT) -> QPointF:
        """Where the data point ``(x, y)`` of ``axis`` is drawn, in widget coordinates."""
        layout = self._layout(QRectF(self.rect()), QFontMetricsF(self._font()))
        if layout is None:
            raise ValueError("the chart has no points, so nothing maps to pixels yet")
        return self._map(layout, x, y, axis)

    def plot_rect(self) -> QRectF:
        """The area inside the axes, in widget coordinates."""
        layout = self._layout(QRectF(self.rect()), QFontMetricsF(self._font()))
        return layout.plot if layout is not None else QRectF()

    # --- output -----------------------------------------------------------------------------

    def render_image(self, size: QSize | None = None) -> QImage:
        """The chart drawn at ``size`` (the widget's own size by default), independent of the screen."""
        size = size or self.size()
        image = QImage(max(size.width(), 1), max(size.height(), 1), QImage.Format.Format_ARGB32)
        image.fill(_BACKGROUND)
        painter = QPainter(image)
        try:
            self._paint(painter, QRectF(0, 0, image.width(), image.height()))
        finally:
            painter.end()
        return image

    def save_png(self, path: str | os.PathLike[str], size: QSize | None = None) -> Path:
        """Write the chart to ``path`` as a PNG; an existing file is replaced only by a whole one."""
        dest = Path(path)
        image = self.render_image(size)
        with temporary(dest) as tmp:
            if not image.save(str(tmp), "PNG"):
                raise OSError(f"could not write the chart picture to {dest}")
            os.replace(tmp, dest)
        return dest

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(560, 320)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), _BACKGROUND)
            self._paint(painter, QRectF(self.rect()))
        finally:
            painter.end()

    # --- drawing ----------------------------------------------------------------------------

    def _get(self, name: str) -> _Series:
        try:
            return self._series[name]
        except KeyError:
            raise KeyError(f"the chart has no series named {name!r}") from None

    def _font(self) -> QFont:
        font = QFont(self.font())
        font.setPointSizeF(max(8.0, font.pointSizeF() * 0.9))
        return font

    def _ranges(self) -> tuple[tuple[float, float] | None, dict[str, tuple[float, float]]]:
        x_low, x_high = math.inf, -math.inf
        y_ranges: dict[str, tuple[float, float]] = {}
        for series in self._series.values():
            if not series.visible:
                continue
            xs, ys = series.points()
            if len(xs) == 0:
                continue
            x_low, x_high = min(x_low, float(xs.min())), max(x_high, float(xs.max()))
            low, high = y_ranges.get(series.axis, (math.inf, -math.inf))
            y_ranges[series.axis] = (min(low, float(ys.min())), max(high, float(ys.max())))
        if x_low > x_high:
            return None, {}
        return (x_low, x_high), y_ranges

    def _layout(self, rect: QRectF, metrics: QFontMetricsF) -> _Layout | None:
        x_range, y_ranges = self._ranges()
        if x_range is None:
            return None
        line = metrics.height()
        top = rect.top() + 8 + (line * 1.3 if self._title else 0)
        legend_y = top + line / 2
        top += line * 1.4  # the legend row
        x_axis = _Axis(*nice_ticks(*x_range, target=max(2, int(rect.width() / 110))))
        target_y = max(2, int(rect.height() / 60))
        axes = {side: _Axis(*nice_ticks(*rng, target=target_y)) for side, rng in y_ranges.items()}
        left, right = axes.get(LEFT), axes.get(RIGHT)
        right_only = left is None and right is not None
        if right_only:
            left, right = right, None

        def label_width(axis: _Axis | None) -> float:
            if axis is None:
                return 0.0
            return max(metrics.horizontalAdvance(format_tick(t, axis.step)) for t in axis.ticks)

        title_room = line * 1.2
        margin_left = 10 + label_width(left) + 8 + (title_room if self._axis_titles[LEFT] else 0)
        margin_right = 16 + (
            label_width(right) + 8 + (title_room if self._axis_titles[RIGHT] else 0) if right else 0
        )
        bottom = rect.bottom() - 8 - line - 6 - (line * 1.2 if self._x_title else 0)
        plot = QRectF(rect.left() + margin_left, top, rect.width() - margin_left - margin_right, bottom - top)
        if plot.width() < 10 or plot.height() < 10:
            return None
        return _Layout(plot, x_axis, left, right, legend_y, right_only)

    def _axis_for(self, layout: _Layout, axis: str) -> _Axis:
        if axis == RIGHT and layout.right is not None:
            return layout.right
        if axis == RIGHT and layout.right_only and layout.left is not None:
            return layout.left
        if layout.left is None:
            raise ValueError(f"the chart has no points on the {axis} axis")
        if axis == RIGHT:
            raise ValueError("the chart has no points on the right axis")
        return layout.left

    def _map(self, layout: _Layout, x: float, y: float, axis: str) -> QPointF:
        y_axis = self._axis_for(layout, axis)
        plot = layout.plot
        px = plot.left() + layout.x.fraction(x) * plot.width()
        py = plot.bottom() - y_axis.fraction(y) * plot.height()
        return QPointF(px, py)

    def _paint(self, painter: QPainter, rect: QRectF) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        font = self._font()
        painter.setFont(font)
        metrics = QFontMetricsF(font)
        line = metrics.height()
        if self._title:
            title_font = QFont(font)
            title_font.setBold(True)
            painter.setFont(title_font)
            painter.setPen(_TITLE)
            painter.drawText(
                QRectF(rect.left() + 10, rect.top() + 6, rect.width() - 20, line * 1.2),
                Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                self._title,
            )
            painter.setFont(font)
        layout = self._layout(rect, metrics)
        if layout is None:
            painter.setPen(_TEXT)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self._placeholder)
            return
        plot = layout.plot
        painter.fillRect(plot, _PLOT_BACKGROUND)
        self._draw_grid_and_ticks(painter, layout, metrics)
        painter.save()
        painter.setClipRect(plot.adjusted(-3, -3, 3, 3))
        for series in self._series.values():
            if series.visible:
                self._draw_series(painter, layout, series)
        painter.restore()
        self._draw_marks(painter, layout, metrics)
        self._draw_legend(painter, layout, metrics, rect)

    def _draw_grid_and_ticks(self, painter: QPainter, layout: _Layout, metrics: QFontMetricsF) -> None:
        plot = layout.plot
        line = metrics.height()
        grid = QPen(_GRID, 1)
        painter.setPen(grid)
        for t in layout.x.ticks:
            px = plot.left() + layout.x.fraction(t) * plot.width()
            painter.drawLine(QPointF(px, plot.top()), QPointF(px, plot.bottom()))
        y_grid = layout.left or layout.right
        if y_grid is not None:
            for t in y_grid.ticks:
                py = plot.bottom() - y_grid.fraction(t) * plot.height()
                painter.drawLine(QPointF(plot.left(), py), QPointF(plot.right(), py))
        painter.setPen(QPen(_AXIS, 1))
        painter.drawRect(plot)
        painter.setPen(_TEXT)
        for t in layout.x.ticks:
            px = plot.left() + layout.x.fraction(t) * plot.width()
            text = format_tick(t, layout.x.step)
            width = metrics.horizontalAdvance(text)
            painter.drawText(QPointF(px - width / 2, plot.bottom() + 4 + metrics.ascent()), text)
        for side, axis in ((LEFT, layout.left), (RIGHT, layout.right)):
            if axis is None:
                continue
            widest = 0.0
            for t in axis.ticks:
                py = plot.bottom() - axis.fraction(t) * plot.height()
                text = format_tick(t, axis.step)
                width = metrics.horizontalAdvance(text)
                widest = max(widest, width)
                x = plot.left() - 6 - width if side == LEFT else plot.right() + 6
                painter.drawText(QPointF(x, py + metrics.ascent() / 2 - 1), text)
            title = (
                self._axis_titles[side]
                if not (side == LEFT and layout.right_only)
                else (self._axis_titles[RIGHT] or self._axis_titles[LEFT])
            )
            if title:
                painter.save()
                if side == LEFT:
                    cx = plot.left() - 6 - widest - 6 - line / 2
                    painter.translate(cx, plot.center().y())
                    painter.rotate(-90)
                else:
                    cx = plot.right() + 6 + widest + 6 + line / 2
                    painter.translate(cx, plot.center().y())
                    painter.rotate(90)
                width = metrics.horizontalAdvance(title)
                painter.drawText(QPointF(-width / 2, metrics.ascent() / 2 - 1), title)
                painter.restore()
        if self._x_title:
            width = metrics.horizontalAdvance(self._x_title)
            y = plot.bottom() + 4 + line + 4 + metrics.ascent()
            painter.drawText(QPointF(plot.center().x() - width / 2, y), self._x_title)

    def _draw_series(self, painter: QPainter, layout: _Layout, series: _Series) -> None:
        xs, ys = series.points()
        if len(xs) == 0:
            return
        y_axis = self._axis_for(layout, series.axis)
        plot = layout.plot
        x_scale = plot.width() / (layout.x.high - layout.x.low)
        xs, ys = decimate(xs, ys, layout.x.low, x_scale)
        px = plot.left() + (xs - layout.x.low) * x_scale
        py = plot.bottom() - (ys - y_axis.low) / (y_axis.high - y_axis.low) * plot.height()
        pen = QPen(series.color, series.width)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        if series.dashed:
            pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        if len(px) == 1:
            painter.setBrush(series.color)
            painter.drawEllipse(QPointF(px[0], py[0]), 3, 3)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            return
        points = [QPointF(a, b) for a, b in zip(px.tolist(), py.tolist(), strict=True)]
        if len(points) <= 200:
            painter.drawPolyline(QPolygonF(points))
        else:
            # Qt strokes a wide antialiased polyline as one outline whose cost grows faster than
            # its length; short overlapping pieces with bevel joins draw 5x faster and look the same.
            pen.setJoinStyle(Qt.PenJoinStyle.BevelJoin)
            painter.setPen(pen)
            for start in range(0, len(points) - 1, _PIECE):
                painter.drawPolyline(QPolygonF(points[start : start + _PIECE + 1]))
        if len(px) <= 40:
            # Few points (one per checkpoint): show each, so a reader sees where the values are.
            painter.setBrush(series.color)
            painter.setPen(Qt.PenStyle.NoPen)
            for a, b in zip(px.tolist(), py.tolist(), strict=True):
                painter.drawEllipse(QPointF(a, b), 3, 3)
            painter.setBrush(Qt.BrushStyle.NoBrush)

    def _draw_marks(self, painter: QPainter, layout: _Layout, metrics: QFontMetricsF) -> None:
        for mark in self._marks:
            series = self._series.get(mark.series)
            if series is None or not series.visible:
                continue
            point = self._map(layout, mark.x, mark.y, series.axis)
            painter.setBrush(QColor(series.color).lighter(130))
            painter.setPen(QPen(QColor("#ffffff"), 2))
            painter.drawEllipse(point, 6, 6)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            text = mark.label
            width = metrics.horizontalAdvance(text) + 10
            height = metrics.height() + 2
            box = QRectF(point.x() - width / 2, point.y() - 10 - height, width, height)
            # Keep the label inside the plot: below the point near the top edge, shifted at the sides.
            if box.top() < layout.plot.top():
                box.moveTop(point.y() + 10)
            if box.left() < layout.plot.left():
                box.moveLeft(layout.plot.left() + 2)
            if box.right() > layout.plot.right():
                box.moveRight(layout.plot.right() - 2)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(0, 0, 0, 170))
            painter.drawRoundedRect(box, 4, 4)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(QColor("#ffffff"))
            painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)

    def _draw_legend(self, painter: QPainter, layout: _Layout, metrics: QFontMetricsF, rect: QRectF) -> None:
        x = layout.plot.left()
        y = layout.legend_y
        for series in self._series.values():
            label = series.name + ("  (right axis)" if series.axis == RIGHT and layout.right else "")
            width = 22 + metrics.horizontalAdvance(label) + 18
            if x + width > rect.right() - 4:
                break
            pen = QPen(series.color if series.visible else _AXIS, 3)
            if series.dashed:
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.drawLine(QPointF(x, y), QPointF(x + 16, y))
            painter.setPen(_TEXT if series.visible else _AXIS)
            painter.drawText(QPointF(x + 22, y + metrics.ascent() / 2 - 1), label)
            x += width
