"""docs/crop-editor.png and docs/regions.png: the real window at laptop size (1366 × 768) with the
per-reference controls set by mouse, after a generation with the built-in tiny models (so the
pictures are coloured noise; the window around them is the real one).

    cd docs/tools && PYTHONPATH=../.. xvfb-run -s "-screen 0 1600x1000x24" python3 image_prompt_demo.py [../]
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

LEFT, NO_MOD = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier


def _drag(widget, start: QPointF, end: QPointF, steps: int = 8) -> None:
    a, b = start.toPoint(), end.toPoint()
    QTest.mousePress(widget, LEFT, NO_MOD, a)
    for i in range(1, steps + 1):
        QTest.mouseMove(widget, a + (b - a) * i / steps)
    QTest.mouseRelease(widget, LEFT, NO_MOD, b)


def _stroke(window, points: list[tuple[float, float]]) -> None:
    canvas = window.regions.canvas
    width, height = window.regions.region_size()
    at = [canvas.mapFromScene(QPointF(x * width, y * height)) for x, y in points]
    QTest.mousePress(canvas.viewport(), LEFT, NO_MOD, at[0])
    for p in at[1:]:
        QTest.mouseMove(canvas.viewport(), p)
    QTest.mouseRelease(canvas.viewport(), LEFT, NO_MOD, at[-1])


def _scroll_to(window, card) -> None:
    """Scroll the control column so ``card`` starts near the top."""
    column = window.column_scroll
    top = card.mapTo(column.widget(), card.rect().topLeft()).y()
    column.verticalScrollBar().setValue(max(0, top - 12))


def main(docs: Path) -> int:
    from ipa_studio.gui.main_window import MainWindow
    from ipa_studio.gui.selftest import build_demo_models, demo_settings, engine_started, wait_until
    from ipa_studio.gui.style import apply_theme

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("IPA_STUDIO_MODELS", None)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    docs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        wide = folder / "street-panorama.png"
        make_reference_image(3, size=(900, 400)).save(wide)
        portrait = folder / "portrait.png"
        make_reference_image(8, size=(400, 560)).save(portrait)
        settings = demo_settings(
            folder, models, prompt="two friends on a sunny street", steps=8, width=512, height=384
        )
        window = MainWindow(settings, None, check_network=False)
        window.resize(1366, 768)
        window.show()
        if not wait_until(lambda: engine_started(window), 120):
            print("the engine did not start", file=sys.stderr)
            return 1
        ended: list[str] = []
        window.generation_ended.connect(ended.append)

        # --- the crop editor: the wide reference, a square dragged onto its right part
        window.references.add_files([wide, portrait])
        wait_until(lambda: all(c.has_crop() for c in window.references.cards.values()), 60)
        first, second = (window.references.cards[r.uid] for r in window.state.references)
        first.more_button.click()
        first.fit_box.setCurrentIndex(first.fit_box.findData("crop"))
        editor = first.crop_editor
        wait_until(lambda: editor.has_picture() and window.state.references[0].box is not None, 60)
        wait_until(lambda: False, 0.3)
        rect = editor.box_rect()
        _drag(editor, rect.center(), rect.center() + QPointF(rect.width() * 0.45, 0))
        rect = editor.box_rect()
        _drag(editor, rect.topLeft(), rect.topLeft() + QPointF(rect.width() * 0.25, rect.height() * 0.25))
        window.state.update_reference(window.state.references[0].uid, start=0.0, end=0.8)
        wait_until(lambda: "crop" in first.tags.text(), 30)
        window.generate()
        if not wait_until(lambda: len(ended) == 1, 600) or ended != ["finished"]:
            print(f"generation failed: {ended} {window.banner.text()}", file=sys.stderr)
            return 1
        window.banner.hide()
        _scroll_to(window, first)
        wait_until(lambda: False, 0.5)
        save_window(window, docs / "crop-editor.png")
        print(f"saved {docs / 'crop-editor.png'}")

        # --- regions: the wide reference drives the left, the portrait the right
        first.more_button.click()  # closed again: the column is short on a laptop
        window.show_regions(window.state.references[0].uid)
        wait_until(lambda: False, 0.4)
        window.regions.canvas.set_brush_size(150)
        _stroke(window, [(0.12, 0.15), (0.15, 0.5), (0.12, 0.85), (0.3, 0.85), (0.32, 0.5), (0.3, 0.15)])
        window.show_regions(window.state.references[1].uid)
        _stroke(window, [(0.88, 0.15), (0.85, 0.5), (0.88, 0.85), (0.7, 0.85), (0.68, 0.5), (0.7, 0.15)])
        second.more_button.click()
        window.generate()
        if not wait_until(lambda: len(ended) == 2, 600) or ended[-1] != "finished":
            print(f"generation failed: {ended} {window.banner.text()}", file=sys.stderr)
            return 1
        window.show_regions(window.state.references[1].uid)
        window.banner.hide()
        _scroll_to(window, first)
        wait_until(lambda: False, 0.5)
        save_window(window, docs / "regions.png")
        print(f"saved {docs / 'regions.png'}")
        window.shutdown()
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]))
