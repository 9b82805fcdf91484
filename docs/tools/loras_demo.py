"""docs/loras.png: the model box with two LoRAs (an LCM-LoRA and a style LoRA) and the Fast preset
offered for the LCM-LoRA, on a laptop-sized window (1366 × 768).

    PYTHONPATH=. xvfb-run -s "-screen 0 1600x1000x24" python3 docs/tools/loras_demo.py [docs]

The models are the tiny random ones; the LoRA files are written in their published layouts
(``tests/fixtures/fewstep_loras.py``), so the window reads them as it reads real ones.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtWidgets import QApplication
from shots import save_window

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def save_loras_screenshot(docs: Path) -> int:
    from diffusers import UNet2DConditionModel

    from ipa_studio.core.models.tiny import make_reference_image
    from ipa_studio.gui.main_window import MainWindow
    from ipa_studio.gui.panels.references import file_urls_mime
    from ipa_studio.gui.selftest import build_demo_models, demo_settings, engine_started, wait_until
    from ipa_studio.gui.style import apply_theme
    from tests.fixtures.fewstep_loras import kohya_style_lora, write_lcm_lora

    os.environ["HF_HUB_OFFLINE"] = "1"
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        unet = UNet2DConditionModel.from_pretrained(models.base, subfolder="unet")
        lcm = write_lcm_lora(unet, folder / "loras" / "lcm-lora-sdv1-5.safetensors")
        style = kohya_style_lora(unet, folder / "loras" / "watercolor_style_v2.safetensors")
        settings = demo_settings(
            folder, models, prompt="a lighthouse on a cliff, watercolour", steps=30, guidance=7.5
        )
        window = MainWindow(settings, None, check_network=False)
        window.resize(1366, 768)
        window.show()
        if not wait_until(lambda: engine_started(window), 120):
            print("the engine did not start", file=sys.stderr)
            return 1
        ref = folder / "reference.jpg"
        make_reference_image(5, size=(512, 640)).save(ref, quality=92)
        window.references.add_from_mime(file_urls_mime([ref]))
        ended: list[str] = []
        window.generation_ended.connect(ended.append)
        window.generate()
        if not wait_until(lambda: bool(ended), 600) or ended != ["finished"]:
            print(f"generation failed: {ended} {window.banner.text()}", file=sys.stderr)
            return 1
        window.banner.hide()
        lora_list = window.picker.loras
        first = lora_list.add(str(style))
        window.state.update_lora(first.uid, strength=0.6)
        lora_list.add(str(lcm))
        if not wait_until(lambda: lora_list.fast.isVisible(), 30):
            print("the Fast preset was not offered", file=sys.stderr)
            return 1
        wait_until(lambda: False, 0.5)  # the last repaints
        docs.mkdir(parents=True, exist_ok=True)
        save_window(window, docs / "loras.png")
        print(f"saved {docs / 'loras.png'}")
        window.shutdown()
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(save_loras_screenshot(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
