"""Make docs/window.png (the real window after a few generations, with the built-in tiny models),
docs/picker.png (the model picker with its base-model list open) and docs/models.png (the Models
tab, offline, with the adapter not chosen yet).

Run under a virtual display so fonts and styles render as on a desktop:

    PYTHONPATH=. xvfb-run -s "-screen 0 1600x1000x24" python3 docs/tools/screenshot.py [docs]

The tiny models have random weights, so the pictures they make are coloured noise; the window
around them is the real one.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QPoint, QRect
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QApplication, QComboBox
from shots import save_quantized, save_window

from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.panels.references import file_urls_mime
from ipa_studio.gui.qimage import qimage_to_pil
from ipa_studio.gui.selftest import build_demo_models, demo_settings, engine_started, wait_until
from ipa_studio.gui.style import apply_theme


def _header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    """A valid ``.safetensors`` of zeros with these names and shapes, its data a sparse hole: the
    library judges files by their header, so a few KB stand in for a multi-GB download."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2  # bytes per F16 number
        for d in shape:
            size *= d
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def _demo_library(folder: Path) -> None:
    """Next to the demo models: a second base model, and models the picker lists but cannot run."""
    from ipa_studio.core.models.tiny import build_sd15_folder

    build_sd15_folder(folder / "tiny-sd15-finetune", seed=5)
    u = "model.diffusion_model."
    _header_only(
        folder / "sdxl-base-1.0.safetensors",
        {
            u + "input_blocks.0.0.weight": (320, 4, 3, 3),
            u + "label_emb.0.0.weight": (1280, 2816),
            u + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
            "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (77, 768),
        },
    )
    widths = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280)
    face = {"image_proj.latents": (1, 16, 768), "image_proj.proj_in.weight": (768, 1280)}
    face |= {"image_proj.proj_out.weight": (768, 768), "image_proj.norm_out.weight": (768,)}
    face |= {"image_proj.layers.0.0.to_q.weight": (768, 768)}
    for n, width in enumerate(widths):
        face[f"ip_adapter.{2 * n + 1}.to_k_ip.weight"] = (width, 768)
        face[f"ip_adapter.{2 * n + 1}.to_v_ip.weight"] = (width, 768)
    _header_only(folder / "ip-adapter-plus-face_sd15.safetensors", face)


def _with_list_open(window: MainWindow, combo: QComboBox) -> Image.Image:
    """The model section with ``combo``'s list open: a popup is a window of its own, so it is
    grabbed apart and painted where it sits over the main window."""
    combo.showPopup()
    wait_until(lambda: False, 0.4)
    shot = window.grab().toImage()
    popup = combo.view().window()
    at = window.mapFromGlobal(popup.mapToGlobal(QPoint(0, 0)))
    painter = QPainter(shot)
    painter.drawImage(at, popup.grab().toImage())
    painter.end()
    combo.hidePopup()
    section = window.picker
    top_left = section.mapTo(window, QPoint(0, 0))
    bottom = max(top_left.y() + section.height(), at.y() + popup.height())
    margin = 10
    area = QRect(
        top_left.x() - margin,
        top_left.y() - margin,
        section.width() + 2 * margin,
        bottom - top_left.y() + 2 * margin,
    )
    return qimage_to_pil(shot.copy(area)).convert("RGB")


def _save_picker(window: MainWindow, path: Path) -> None:
    """The base-model list and the adapter list, side by side."""
    picker = window.picker
    shots = [_with_list_open(window, picker.base), _with_list_open(window, picker.adapter)]
    gap = 12
    width = sum(s.width for s in shots) + gap
    height = max(s.height for s in shots)
    image = Image.new("RGB", (width, height), (35, 35, 38))  # the control column's colour
    image.paste(shots[0], (0, 0))
    image.paste(shots[1], (shots[0].width + gap, 0))
    save_quantized(image, path)


def main(docs: Path) -> int:
    # Offline on purpose: the Models tab then shows its plain "no internet" message, and nothing
    # is sent anywhere while making pictures for the docs.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("IPA_STUDIO_MODELS", None)  # the demo library, not the user's
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        _demo_library(folder / "models")
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
        window.resize(1366, 768)  # a laptop screen: what most people see
        window.show()
        if not wait_until(
            lambda: engine_started(window) and len(window.picker.snapshot.entries) >= 6,
            120,
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
        save_window(window, docs / "window.png")
        _save_picker(window, docs / "picker.png")

        window.setup.set_path("adapter", "")
        window.setup.check_network()
        window.tabs.setCurrentIndex(1)
        wait_until(lambda: window.setup.online is not None, 30)
        wait_until(lambda: False, 0.3)
        save_window(window, docs / "models.png")
        print(f"saved window.png, picker.png and models.png in {docs}")
        window.close()
    from control_demo import save_control_screenshot

    return save_control_screenshot(docs)  # docs/control.png, in a window of its own


if __name__ == "__main__":
    # docs/canvas.png alone: python3 docs/tools/screenshot.py canvas [docs]
    if sys.argv[1:2] == ["canvas"]:
        from canvas_demo import save_canvas_screenshot

        sys.exit(save_canvas_screenshot(Path(sys.argv[2]) if len(sys.argv) > 2 else Path("docs")))
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
