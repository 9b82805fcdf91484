"""Make docs/evaluate.png: the Evaluate tab after scoring each checkpoint of a short training run of
the built-in tiny models, at a laptop's 1366 × 768.

    PYTHONPATH=. xvfb-run -s "-screen 0 1600x1000x24" python3 docs/tools/evaluate_demo.py [docs]

The tiny models have random weights, so the scores are those of noise; the tab around them, the
table, the chart and the best mark are the real ones, filled by a real `ipa-studio evaluate` run.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from PySide6.QtWidgets import QApplication
from shots import save_window

from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.selftest import build_demo_models, demo_settings, engine_started, wait_until
from ipa_studio.gui.style import apply_theme


def _tiny_clip(folder: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(5)
    shared = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            **shared,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(**shared, image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


def _train(folder: Path, base: str, encoder: str) -> Path:
    from ipa_studio.cli import main as cli

    data = folder / "data"
    data.mkdir()
    entries = []
    for i in range(4):
        make_reference_image(70 + i, (72, 64)).save(data / f"{i}.png")
        entries.append({"image_file": f"{i}.png", "text": f"shapes number {i}"})
    (folder / "data.json").write_text(json.dumps(entries), encoding="utf-8")
    run = folder / "my-adapter"
    args = [
        "train", "--data-json", str(folder / "data.json"), "--data-root", str(data),
        "--model", base, "--image-encoder", encoder, "--output", str(run),
        "--resolution", "64", "--batch-size", "2", "--max-steps", "160", "--checkpoint-every", "20",
        "--keep-checkpoints", "0", "--lr", "0.02", "--num-workers", "0", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    if cli(args) != 0:
        raise SystemExit("training the demo run failed")
    return run


def save_evaluate_screenshot(docs: Path) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("IPA_STUDIO_MODELS", None)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        clip = _tiny_clip(folder / "models" / "clip-vit-large-patch14")
        run = _train(folder, models.base, models.image_encoder)
        pairs = folder / "coco-pairs"
        pairs.mkdir()
        for i, caption in enumerate(["a red boat at sea", "a cat on a sofa", "a cabin in the snow"]):
            make_reference_image(90 + i, (80, 64)).save(pairs / f"{i:012d}.jpg")
            (pairs / f"{i:012d}.txt").write_text(caption, encoding="utf-8")
        window = MainWindow(demo_settings(folder, models), None, check_network=False)
        window.resize(1366, 768)
        window.show()
        if not wait_until(lambda: engine_started(window), 120):
            print("the engine did not start", file=sys.stderr)
            return 1
        panel = window.evaluate_panel
        window.tabs.setCurrentWidget(panel)
        panel.checkpoints.set_paths([str(run)])
        panel.refresh_checkpoints()
        panel.pairs.set_paths([str(pairs)])
        panel.clip.set_paths([str(clip)])
        panel.num_images.setValue(2)
        panel.steps.setValue(4)
        panel.size.setValue(64)
        ended: list[str] = []
        panel.ended.connect(ended.append)
        if not panel.start() or not wait_until(lambda: bool(ended), 900) or ended != ["finished"]:
            print(f"evaluation failed: {ended} {panel.status.text()}", file=sys.stderr)
            return 1
        window.banner.hide()
        wait_until(lambda: False, 0.5)
        docs.mkdir(parents=True, exist_ok=True)
        save_window(window, docs / "evaluate.png")
        print(f"saved evaluate.png in {docs}")
        window.shutdown()
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(save_evaluate_screenshot(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
