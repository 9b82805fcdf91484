"""Painting a mask on a 2048 × 2048 canvas: time per stroke segment (one mouse move), printed.

The canvas is the real one (``MaskCanvas`` with its overlay), in a 1400 × 900 window, driven with
synthetic mouse events along zigzag strokes that cross the picture. For every mouse move it measures

* ``paint``  – the move handler: the segment painted into the mask, the overlay's dirty rectangle
  converted, the repaint of that rectangle scheduled;
* ``render`` – the event loop turn that follows: Qt repaints the dirty part of the view;
* ``total``  – both: what the next mouse move waits for;

and, per stroke, ``end`` – the mouse release: the stroke's undo step (patches before / after).
For comparison it also times re-rendering the whole overlay once (what a non-incremental canvas
would pay on every mouse move).

    python benchmarks/paint_strokes.py                 # offscreen, 2048 px, brushes 64/256/512
    python benchmarks/paint_strokes.py --size 4096 --moves 300
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PySide6.QtCore import QEvent, QPointF, Qt  # noqa: E402, TID251 - the benchmark drives the Qt canvas
from PySide6.QtGui import QImage, QMouseEvent  # noqa: E402, TID251
from PySide6.QtWidgets import QApplication  # noqa: E402, TID251

from ipa_studio.gui.canvas.mask import MaskLayer  # noqa: E402
from ipa_studio.gui.canvas.view import MaskCanvas  # noqa: E402


def _picture(size: int) -> QImage:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rgb = np.stack([xx * 255, yy * 255, (1 - xx) * 200], axis=-1).astype(np.uint8)
    return QImage(rgb.tobytes(), size, size, size * 3, QImage.Format.Format_RGB888).copy()


def _mouse(kind: QEvent.Type, pos: QPointF, button: Qt.MouseButton, buttons: Qt.MouseButton) -> QMouseEvent:
    return QMouseEvent(kind, pos, pos, button, buttons, Qt.KeyboardModifier.NoModifier)


def _stats(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):6.2f}  p95 {p95:6.2f}  worst {ms[-1]:6.2f} ms"


def run(view: MaskCanvas, app: QApplication, brush: int, moves: int, step: float, strokes: int) -> dict:
    """``strokes`` zigzag strokes of ``moves`` mouse moves, ``step`` screen pixels apart."""
    view.layer.clear()
    view.set_brush_size(brush)
    view.set_hardness(0.5)
    viewport = view.viewport()
    width, height = viewport.width(), viewport.height()
    paint, render, total, ends = [], [], [], []
    left, right = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    for s in range(strokes):
        x, y = 40.0 + 30 * s, 40.0 + 60 * s
        direction = 1.0
        app.sendEvent(viewport, _mouse(QEvent.Type.MouseButtonPress, QPointF(x, y), left, left))
        app.processEvents()
        for _ in range(moves):
            x += direction * step
            y += step * 0.35
            if not 20 < x < width - 20:
                direction = -direction
            if y > height - 20:
                y = 40.0
            t0 = time.perf_counter()
            app.sendEvent(viewport, _mouse(QEvent.Type.MouseMove, QPointF(x, y), right, left))
            t1 = time.perf_counter()
            app.processEvents()
            t2 = time.perf_counter()
            paint.append(t1 - t0)
            render.append(t2 - t1)
            total.append(t2 - t0)
        t0 = time.perf_counter()
        app.sendEvent(viewport, _mouse(QEvent.Type.MouseButtonRelease, QPointF(x, y), left, right))
        ends.append(time.perf_counter() - t0)
        app.processEvents()
    return {"paint": paint, "render": render, "total": total, "end": ends}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="picture and mask size (square)")
    parser.add_argument("--brushes", default="64,256,512", help="brush diameters in picture pixels")
    parser.add_argument("--moves", type=int, default=200, help="mouse moves per stroke")
    parser.add_argument("--strokes", type=int, default=3, help="strokes per brush and zoom")
    args = parser.parse_args()

    app = QApplication.instance() or QApplication(sys.argv[:1])
    layer = MaskLayer(args.size, args.size)
    view = MaskCanvas(layer)
    view.resize(1400, 900)
    view.show()
    view.set_image(_picture(args.size))
    app.processEvents()

    print(
        f"Painting on a {args.size} × {args.size} mask in a {view.viewport().width()} × "
        f"{view.viewport().height()} view (Qt platform: {app.platformName()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f})"
    )
    worst: tuple[float, str] = (0.0, "")
    for zoom_name in ("fit", "1:1"):
        if zoom_name == "fit":
            view.fit()
        else:
            view.actual_size()
            view.centerOn(QPointF(args.size / 2, args.size / 2))
        app.processEvents()
        for brush in (int(b) for b in args.brushes.split(",")):
            # 6 screen px per move: a brisk stroke at 100+ mouse events per second.
            times = run(view, app, brush, args.moves, 6.0, args.strokes)
            label = f"zoom {zoom_name:>3} ({view.zoom():.2f}), brush {brush:>4} px"
            print(f"\n{label}, {len(times['total'])} segments")
            for key in ("paint", "render", "total"):
                print(f"  {key:<6} {_stats(times[key])}")
            print(f"  end    {_stats(times['end'])}   (per stroke: its undo step)")
            top = max(times["total"])
            if top > worst[0]:
                worst = (top, label)

    # What a canvas that re-renders the whole overlay per mouse move would pay, for comparison.
    full = []
    for _ in range(5):
        t0 = time.perf_counter()
        view.overlay.refresh(layer.rect())
        app.processEvents()
        full.append(time.perf_counter() - t0)
    print(f"\nwhole overlay re-rendered once: {_stats(full)}")
    print(f"worst segment overall: {worst[0] * 1000:.2f} ms ({worst[1]})")
    view.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
