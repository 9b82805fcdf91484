"""docs/block-map.png and docs/sweep.png: the block map with the Style preset edited, and a λ sweep
contact sheet (two rows, five λ), in the real window at a laptop's 1366 × 768, with the built-in tiny
models and a tiny random CLIP model for the scores (so the pictures are coloured noise and the
scores are those of random weights; the window around them is the real one).

    PYTHONPATH=. xvfb-run -s "-screen 0 1600x1000x24" python3 docs/tools/balance_demo.py [docs]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtWidgets import QApplication
from shots import save_window


def _tiny_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(5)
    text = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32
    )
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=dict(vision, patch_size=8), projection_dim=16)
    ).save_pretrained(folder)
    return folder


def main(docs: Path) -> int:
    from ipa_studio.core.models.tiny import make_reference_image
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
        clip = _tiny_clip(folder / "clip-tiny")
        reference = folder / "watercolour.jpg"
        make_reference_image(3, size=(640, 480)).save(reference, quality=92)
        settings = demo_settings(
            folder, models, prompt="a lighthouse on a cliff at dawn", steps=8, width=256, height=256, seed=42
        )
        window = MainWindow(settings, None, check_network=False)
        window.resize(1366, 768)
        window.show()
        if not wait_until(lambda: engine_started(window) and not window.models_loading, 120):
            print("the engine did not start", file=sys.stderr)
            return 1
        window.references.add_from_mime(file_urls_mime([reference]))
        wait_until(lambda: all(c.has_crop() for c in window.references.cards.values()), 60)
        window.state.set("scale", 0.8)
        window.balance.show_preset("Style")
        # An edit a person might make: the middle block on at half strength, then Up 1 selected.
        window.state.set_layer_weights(["mid_block.attentions.0"], 0.5, window.balance.presets)
        window.balance.block_map.select_block("up_blocks.1")
        window.state.set("hires_on", True)
        window.column_scroll.ensureWidgetVisible(window.balance, 0, 0)
        window.column_scroll.verticalScrollBar().setValue(window.balance.y() - 10)
        wait_until(lambda: False, 0.5)
        docs.mkdir(parents=True, exist_ok=True)
        save_window(window, docs / "block-map.png")

        window.balance.show_preset("Style")
        window.state.set("hires_on", False)
        page = window.sweep_page
        ready: list[str] = []
        window.scorer_ready.connect(ready.append)
        page.set_clip_model(str(clip))
        wait_until(lambda: bool(ready), 60)
        page.lambdas.setText("0, 0.25, 0.5, 0.75, 1")
        page.row_checks["Everything"].setChecked(True)
        ended: list[str] = []
        window.sweep_ended.connect(ended.append)
        window.view_tabs.setCurrentWidget(page)
        window.run_sweep()
        if not wait_until(lambda: bool(ended), 900) or ended != ["finished"]:
            print(f"the sweep did not finish: {ended} {window.banner.text()}", file=sys.stderr)
            return 1
        window.banner.hide()
        wait_until(lambda: False, 0.5)
        save_window(window, docs / "sweep.png")
        print(f"saved block-map.png and sweep.png in {docs}")
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
