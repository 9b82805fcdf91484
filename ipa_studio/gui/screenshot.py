"""Make docs/window.png (the real window after a few generations, with the built-in tiny models) and
docs/models.png (the Models tab, offline, with the adapter not chosen yet).

Run under a virtual display so fonts and styles render as on a desktop:

    xvfb-run -s "-screen 0 1600x1000x24" python -m ipa_studio.gui.screenshot [docs]

The tiny models have random weights, so the pictures they make are coloured noise; the window
around them is the real one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PIL import Image
from PySide6.QtWidgets import QApplication

from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.panels.references import file_urls_mime
from ipa_studio.gui.qimage import qimage_to_pil
from ipa_studio.gui.selftest import build_demo_models, demo_settings, wait_until
from ipa_studio.gui.style import apply_theme


def _save(window: MainWindow, path: Path) -> None:
    # 256 colours without dithering: the UI looks the same and the noise pictures of the tiny
    # models shrink from ~0.9 MB to ~0.4 MB in the repository.
    image = qimage_to_pil(window.grab().toImage()).convert("RGB")
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main(docs: Path) -> int:
    # Offline on purpose: the Models tab then shows its plain "no internet" message, and nothing
    # is sent anywhere while making pictures for the docs.
    os.environ["HF_HUB_OFFLINE"] = "1"
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        refs = []
        for seed, size in ((3, (640, 480)), (5, (480, 640))):
            path = folder / f"reference-{seed}.jpg"
            make_reference_image(seed, size=size).save(path, quality=92)
            refs.append(path)
        settings = demo_settings(
            folder,
            models,
            prompt="a cosy cabin in a snowy forest, warm evening light",
            negative_prompt="blurry, text",
            steps=20,
            width=512,
            height=512,
            seed_locked=False,
        )
        window = MainWindow(settings, None, check_network=False)
        window.resize(1500, 940)
        window.show()
        if not wait_until(
            lambda: not window.models_loading and "Starting" not in window.device_label.text(), 120
        ):
            print("the engine did not start", file=sys.stderr)
            return 1
        window.references.add_from_mime(file_urls_mime(refs))
        wait_until(lambda: all(c.has_crop() for c in window.references.cards.values()), 60)
        list(window.references.cards.values())[1].spin.setValue(0.6)
        ended: list[str] = []
        window.generation_ended.connect(ended.append)
        for _ in range(3):
            window.generate()
        if not wait_until(lambda: len(ended) == 3, 600) or set(ended) != {"finished"}:
            print(f"generation failed: {ended} {window.banner.text()}", file=sys.stderr)
            return 1
        window.banner.hide()
        wait_until(lambda: False, 0.5)  # let the last repaints land
        docs.mkdir(parents=True, exist_ok=True)
        _save(window, docs / "window.png")

        window.setup.set_path("adapter", "")
        window.setup.check_network()
        window.tabs.setCurrentIndex(1)
        wait_until(lambda: window.setup.online is not None, 30)
        wait_until(lambda: False, 0.3)
        _save(window, docs / "models.png")
        print(f"saved {docs / 'window.png'} and {docs / 'models.png'}")
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
