"""Make docs/train.png: the Train tab after a short real run on the built-in tiny models.

    PYTHONPATH=. xvfb-run -s "-screen 0 1600x1000x24" python3 docs/tools/train_demo.py [docs]

The tiny models have random weights, so the samples are coloured noise and the loss is that of a
random network; the tab, the curves and the grid around them are the real ones.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtWidgets import QApplication
from shots import save_window

from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import TRAIN_TAB, MainWindow
from ipa_studio.gui.selftest import build_demo_models, demo_settings, engine_started, wait_until
from ipa_studio.gui.style import apply_theme


def main(docs: Path) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("IPA_STUDIO_MODELS", None)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        data = folder / "my-pictures"
        data.mkdir()
        for i in range(24):
            make_reference_image(40 + i, (96 + 4 * i, 80)).save(data / f"{i:03d}.png")
            if i != 23:
                (data / f"{i:03d}.txt").write_text(f"a picture of shapes, number {i}", encoding="utf-8")
        (data / "IMG_0042.png").write_bytes(b"\x89PNG truncated")
        settings = demo_settings(folder, models)
        settings.device = "cpu"
        window = MainWindow(settings, None, check_network=False)
        window.resize(1366, 768)
        window.show()
        if not wait_until(lambda: engine_started(window), 120):
            print("the engine did not start", file=sys.stderr)
            return 1
        window.tabs.setCurrentIndex(TRAIN_TAB)
        panel = window.train
        panel.set_folder(data)
        if not wait_until(lambda: panel.scan is not None, 60):
            print("the folder check did not finish", file=sys.stderr)
            return 1
        panel.resolution_box.setValue(64)
        panel.steps_box.setValue(120)
        panel.batch_box.setValue(4)
        panel.checkpoint_box.setValue(60)
        panel.sample_box.setValue(30)
        ended: list[str] = []
        panel.run_ended.connect(ended.append)
        panel.start()
        if not wait_until(lambda: bool(ended), 900) or ended != ["finished"]:
            print(f"training failed: {ended} {panel.status.text()}", file=sys.stderr)
            return 1
        wait_until(lambda: panel.samples.loaded_count() == 4 * len(panel.samples.rows()), 30)
        window.banner.hide()
        wait_until(lambda: False, 0.5)
        docs.mkdir(parents=True, exist_ok=True)
        save_window(window, docs / "train.png")
        print(f"saved train.png in {docs}")
        window.shutdown()
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
