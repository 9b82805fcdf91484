"""docs/canvas.png: the real window's Canvas with a start picture and a mask painted by mouse strokes,
after one inpainting job (the built-in tiny models, so the repainted area is coloured noise).

    PYTHONPATH=. xvfb-run -s "-screen 0 1600x1000x24" python3 docs/tools/screenshot.py canvas [docs]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from shots import save_window

from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.canvas.view import MaskCanvas


def _stroke(canvas: MaskCanvas, points: list[tuple[float, float]]) -> None:
    """A real mouse stroke through the viewport, as a person paints it."""
    viewport = canvas.viewport()
    at = [canvas.mapFromScene(QPointF(x, y)) for x, y in points]
    no_mod = Qt.KeyboardModifier.NoModifier
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, no_mod, at[0])
    for p in at[1:]:
        QTest.mouseMove(viewport, p)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, no_mod, at[-1])


def save_canvas_screenshot(docs: Path) -> int:
    from ipa_studio.gui.main_window import MainWindow
    from ipa_studio.gui.panels.references import file_urls_mime
    from ipa_studio.gui.selftest import build_demo_models, demo_settings, engine_started, wait_until
    from ipa_studio.gui.style import apply_theme

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("IPA_STUDIO_MODELS", None)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        start = folder / "harbour.png"
        make_reference_image(12, size=(768, 512)).save(start)
        reference = folder / "boat.jpg"
        make_reference_image(5, size=(480, 480)).save(reference, quality=92)
        settings = demo_settings(
            folder,
            models,
            prompt="a red sailing boat on calm water",
            steps=12,
            width=512,
            height=512,
            seed_locked=False,
        )
        window = MainWindow(settings, None, check_network=False)
        window.resize(1366, 768)  # a laptop screen: what most people see
        window.show()
        if not wait_until(lambda: engine_started(window), 120):
            print("the engine did not start", file=sys.stderr)
            return 1
        window.references.add_from_mime(file_urls_mime([reference]))
        wait_until(lambda: all(c.has_crop() for c in window.references.cards.values()), 60)
        window.init_panel.mode_buttons["inpaint"].click()
        window.canvas.set_init(start)
        canvas = window.canvas.canvas
        if not wait_until(canvas.has_image, 60):
            print(f"the start picture did not open: {window.banner.text()}", file=sys.stderr)
            return 1
        wait_until(lambda: False, 0.3)  # the layout settles, the view fits the picture
        canvas.set_hardness(0.6)
        canvas.set_brush_size(70)
        _stroke(canvas, [(230 + 12 * i, 330 - 40 * abs((i % 8) - 4) / 4) for i in range(24)])
        canvas.set_brush_size(120)
        _stroke(canvas, [(520, 140), (560, 170), (600, 190), (640, 200)])

        ended: list[str] = []
        window.generation_ended.connect(ended.append)
        window.generate()
        if not wait_until(lambda: len(ended) == 1, 600) or ended != ["finished"]:
            print(f"generation failed: {ended} {window.banner.text()}", file=sys.stderr)
            return 1
        window.show_canvas()
        window.banner.hide()
        wait_until(lambda: False, 0.5)  # let the last repaints land
        docs.mkdir(parents=True, exist_ok=True)
        save_window(window, docs / "canvas.png")
        print(f"saved {docs / 'canvas.png'}")
        window.close()
    return 0
