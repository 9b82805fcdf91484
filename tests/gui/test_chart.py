"""The line chart: points appended live are drawn, the PNG has the asked size, marks sit on their
point, ticks are round numbers, and a long curve costs no more to draw than a short one."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QSize
from PySide6.QtGui import QColor, QImage

from ipa_studio.gui.widgets.chart import LEFT, RIGHT, LineChart, decimate, format_tick, nice_ticks

RED = "#ff2020"
GREEN = "#20ff20"


def _near(image: QImage, x: float, y: float, color: str, radius: int = 3) -> bool:
    """Whether a pixel within ``radius`` of (x, y) has (about) ``color``."""
    want = QColor(color)
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            px, py = round(x) + dx, round(y) + dy
            if 0 <= px < image.width() and 0 <= py < image.height():
                got = image.pixelColor(px, py)
                if (
                    abs(got.red() - want.red()) < 40
                    and abs(got.green() - want.green()) < 40
                    and abs(got.blue() - want.blue()) < 40
                ):
                    return True
    return False


@pytest.fixture
def chart(qtbot) -> LineChart:
    widget = LineChart(title="Loss")
    qtbot.addWidget(widget)
    widget.resize(600, 360)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def test_appended_points_show_on_screen(chart: LineChart, qtbot) -> None:
    chart.add_series("loss", RED)
    shot = chart.grab().toImage()
    assert not any(_near(shot, x, y, RED, 0) for x in range(0, 600, 7) for y in range(0, 360, 7))

    for step in range(0, 101):
        chart.append("loss", step, 1.0 / (1 + step))
    qtbot.wait(20)
    shot = chart.grab().toImage()
    for step in (0, 10, 50, 100):
        point = chart.to_pixel(step, 1.0 / (1 + step))
        assert chart.plot_rect().adjusted(-1, -1, 1, 1).contains(point)
        assert _near(shot, point.x(), point.y(), RED), f"no curve drawn at step {step}"
    # A point off the curve is background, so the check above can fail.
    off = chart.to_pixel(100, 0.9)
    assert not _near(shot, off.x(), off.y(), RED)


def test_append_after_show_extends_the_axis(chart: LineChart, qtbot) -> None:
    chart.add_series("loss", RED)
    for step in range(10):
        chart.append("loss", step, 0.5)
    first = chart.to_pixel(9, 0.5)
    chart.append("loss", 1000, 0.25)
    # The x axis now reaches 1000, so step 9 moved left and step 1000 is inside the plot.
    assert chart.to_pixel(9, 0.5).x() < first.x()
    assert chart.plot_rect().adjusted(-1, -1, 1, 1).contains(chart.to_pixel(1000, 0.25))
    assert chart.points("loss") == ([float(s) for s in range(10)] + [1000.0], [0.5] * 10 + [0.25])


def test_save_png_writes_a_picture_of_the_asked_size(chart: LineChart, tmp_path) -> None:
    chart.add_series("loss", RED)
    chart.set_points("loss", [0, 1, 2], [3, 1, 2])
    path = chart.save_png(tmp_path / "curves.png", QSize(1200, 700))
    image = QImage(str(path))
    assert (image.width(), image.height()) == (1200, 700)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The curve is in the file, not only on screen.
    assert sum(_near(image, x, y, RED, 0) for x in range(0, 1200, 4) for y in range(0, 700, 4)) > 10

    default = QImage(str(chart.save_png(tmp_path / "same.png")))
    assert (default.width(), default.height()) == (chart.width(), chart.height())
    assert not list(tmp_path.glob(".*")), "a temporary file was left beside the picture"


def test_best_mark_is_drawn_on_its_point(chart: LineChart, qtbot) -> None:
    chart.add_series("CLIP-I", RED)
    chart.add_series("CLIP-T", GREEN, axis=RIGHT)
    chart.set_points("CLIP-I", [100, 200, 300, 400], [0.61, 0.70, 0.66, 0.64])
    chart.set_points("CLIP-T", [100, 200, 300, 400], [0.21, 0.22, 0.25, 0.23])
    chart.set_mark("CLIP-I", 200, 0.70, "best")
    qtbot.wait(20)
    shot = chart.grab().toImage()
    best = chart.to_pixel(200, 0.70, LEFT)
    # The ring of the mark is white, the centre a lighter red; elsewhere on the curve there is no ring.
    assert _near(shot, best.x() + 6, best.y(), "#ffffff", 1)
    other = chart.to_pixel(300, 0.66, LEFT)
    assert not _near(shot, other.x() + 6, other.y(), "#ffffff", 1)
    # The right axis has its own scale: CLIP-T's highest point is drawn near the top of the plot.
    top = chart.to_pixel(300, 0.25, RIGHT)
    plot = chart.plot_rect()
    assert top.y() - plot.top() < plot.height() * 0.2
    assert _near(shot, top.x(), top.y(), GREEN)
    assert [m.label for m in chart.marks()] == ["best"]
    chart.set_mark("CLIP-I", 300, 0.66, "best")  # moving the mark replaces it
    assert [(m.x, m.y) for m in chart.marks()] == [(300.0, 0.66)]


def test_shared_axis_puts_both_series_on_one_scale(chart: LineChart) -> None:
    chart.add_series("a", RED)
    chart.add_series("b", GREEN)
    chart.set_points("a", [0, 10], [0, 1])
    chart.set_points("b", [0, 10], [0, 10])
    assert chart.to_pixel(10, 1).y() > chart.to_pixel(10, 10).y()
    with pytest.raises(ValueError, match="right axis"):
        chart.to_pixel(0, 0, RIGHT)


def test_empty_chart_says_so_and_refuses_mapping(chart: LineChart) -> None:
    chart.add_series("loss")
    chart.set_placeholder("Start a run to see its curves")
    with pytest.raises(ValueError, match="no points"):
        chart.to_pixel(0, 0)
    assert chart.grab().toImage().width() == chart.width()  # paints without raising


def test_nan_points_are_skipped(chart: LineChart) -> None:
    chart.add_series("loss", RED)
    chart.set_points("loss", [0, 1, 2, 3], [1.0, math.nan, math.inf, 0.5])
    point = chart.to_pixel(3, 0.5)
    assert chart.plot_rect().adjusted(-1, -1, 1, 1).contains(point)


def test_ticks_are_round_and_cover_the_data() -> None:
    low, high, ticks, step = nice_ticks(0.6123, 0.7034)
    assert low <= 0.6123 and high >= 0.7034
    assert step == pytest.approx(0.02)
    assert [format_tick(t, step) for t in ticks] == ["0.60", "0.62", "0.64", "0.66", "0.68", "0.70", "0.72"]
    _, _, ticks, step = nice_ticks(0, 10_000)
    assert [format_tick(t, step) for t in ticks] == ["0", "2000", "4000", "6000", "8000", "10000"]
    low, high, _, _ = nice_ticks(3, 3)
    assert low < 3 < high


def test_decimation_keeps_every_spike_and_the_ends() -> None:
    xs = np.arange(10_000, dtype=float)
    ys = np.sin(xs / 300)
    ys[4321] = 5.0
    ys[7777] = -5.0
    rx, ry = decimate(xs, ys, 0.0, 500 / 9999)
    assert len(rx) <= 4 * 501
    assert 5.0 in ry and -5.0 in ry
    assert (rx[0], rx[-1]) == (0.0, 9999.0)
    assert np.all(np.diff(rx) >= 0)


def test_drawing_ten_thousand_points_costs_about_as_much_as_a_thousand(qtbot) -> None:
    def paint_time(n: int) -> float:
        chart = LineChart()
        qtbot.addWidget(chart)
        chart.resize(800, 400)
        chart.add_series("loss")
        for i in range(n):
            chart.append("loss", i, math.sin(i / 50) + (i % 7) * 0.01)
        chart.grab()  # warm up fonts
        start = time.perf_counter()
        for _ in range(5):
            chart.grab()
        return (time.perf_counter() - start) / 5

    small, large = paint_time(1_000), paint_time(10_000)
    print(f"\nchart paint: {small * 1000:.1f} ms at 1k points, {large * 1000:.1f} ms at 10k points")
    assert large < 40e-3, f"drawing 10k points took {large * 1000:.1f} ms"
    assert large < small * 4 + 5e-3


def test_bad_series_use_is_refused_with_its_name(chart: LineChart) -> None:
    chart.add_series("loss")
    with pytest.raises(ValueError, match="already has a series named 'loss'"):
        chart.add_series("loss")
    with pytest.raises(KeyError, match="no series named 'lr'"):
        chart.append("lr", 0, 1)
    with pytest.raises(ValueError, match="axis must be"):
        chart.add_series("x", axis="top")
    with pytest.raises(ValueError, match="same length"):
        chart.set_points("loss", [1, 2], [1])


def test_grab_matches_mapping_at_a_corner_pixel(chart: LineChart) -> None:
    """The mapping and the drawing agree: the first and last points of a line are at its ends."""
    chart.add_series("line", RED, width=3)
    chart.set_points("line", [0, 10], [0, 10])
    shot = chart.grab().toImage()
    start, end = chart.to_pixel(0, 0), chart.to_pixel(10, 10)
    assert _near(shot, start.x(), start.y(), RED, 2)
    assert _near(shot, end.x(), end.y(), RED, 2)
    middle = QPoint(round((start.x() + end.x()) / 2), round((start.y() + end.y()) / 2))
    assert _near(shot, middle.x(), middle.y(), RED, 2)
