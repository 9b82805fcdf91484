"""docs/control.png: the Create tab with a pose control and a depth control, each map beside its photo;
docs/create.png: the same window scrolled to the top (the model, two reference images, the result).

    PYTHONPATH=. xvfb-run -s "-screen 0 1600x1000x24" python3 docs/tools/control_demo.py [docs]

(``docs/tools/screenshot.py`` makes it too, after the other pictures.)

No annotator weights are needed: ``DemoPreprocessors`` stands in for the preprocessor service and
draws the maps of the demo photo from the figure it painted (its keypoints and its outline), the way
the tiny random models stand in for real ones. Everything else is the real window: the cards, the
preprocessing thread, the ControlNet checks, and a generation with both ControlNets.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter
from PySide6.QtWidgets import QApplication, QScrollArea
from shots import save_window

from ipa_studio.gui.main_window import MainWindow

# A dancer with one arm up, as (x, y) fractions of the picture, in OpenPose's keypoint order.
DANCER: tuple[tuple[float, float] | None, ...] = (
    (0.50, 0.16),  # nose
    (0.50, 0.25),  # neck
    (0.41, 0.26),  # right shoulder (on the left of the picture: the dancer faces us)
    (0.31, 0.17),  # right elbow
    (0.26, 0.07),  # right wrist
    (0.59, 0.26),  # left shoulder
    (0.70, 0.33),  # left elbow
    (0.80, 0.29),  # left wrist
    (0.45, 0.51),  # right hip
    (0.41, 0.68),  # right knee
    (0.38, 0.86),  # right ankle
    (0.55, 0.51),  # left hip
    (0.64, 0.65),  # left knee
    (0.73, 0.79),  # left ankle
    (0.48, 0.145),  # right eye
    (0.52, 0.145),  # left eye
    (0.46, 0.155),  # right ear
    (0.54, 0.155),  # left ear
)
LIMBS = ((2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (9, 10), (11, 12), (12, 13))
HORIZON = 0.62


def _figure(draw: ImageDraw.ImageDraw, size: tuple[int, int], skin: Any, dress: Any, hair: Any) -> None:
    w, h = size
    p = [(x * w, y * h) for x, y in (pt or (0.0, 0.0) for pt in DANCER)]
    limb = round(w * 0.05)
    for a, b in LIMBS:
        draw.line([p[a], p[b]], fill=skin, width=limb)
        draw.ellipse(
            [p[b][0] - limb / 2, p[b][1] - limb / 2, p[b][0] + limb / 2, p[b][1] + limb / 2], fill=skin
        )
    hem_l, hem_r = (p[8][0] - w * 0.07, h * 0.60), (p[11][0] + w * 0.08, h * 0.60)
    draw.polygon([p[2], p[5], p[11], hem_r, hem_l, p[8]], fill=dress)
    draw.line([p[1], p[0]], fill=skin, width=round(w * 0.045))
    r = w * 0.055
    draw.ellipse([p[0][0] - r, p[0][1] - r * 1.2, p[0][0] + r, p[0][1] + r * 1.1], fill=skin)
    draw.chord(
        [p[0][0] - r * 1.1, p[0][1] - r * 1.4, p[0][0] + r * 1.1, p[0][1] + r * 0.6], 180, 360, fill=hair
    )


def demo_photo(size: tuple[int, int] = (480, 640)) -> Image.Image:
    """A painted "photo" of a dancer on a beach at sunset."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(h):
        t = y / h
        if t < HORIZON:
            k = t / HORIZON
            colour = (round(90 + 160 * k), round(140 + 60 * k), round(200 - 60 * k))
        else:
            k = (t - HORIZON) / (1 - HORIZON)
            colour = (round(225 - 30 * k), round(195 - 35 * k), round(150 - 40 * k))
        draw.line([(0, y), (w, y)], fill=colour)
    draw.ellipse([w * 0.72, h * 0.46, w * 0.92, h * 0.6], fill=(255, 214, 140))
    draw.rectangle([0, h * HORIZON, w, h * (HORIZON + 0.012)], fill=(70, 110, 150))
    _figure(draw, size, skin=(214, 160, 128), dress=(176, 38, 52), hair=(58, 36, 28))
    return image.filter(ImageFilter.GaussianBlur(1.2))


def demo_depth(size: tuple[int, int]) -> Image.Image:
    """Near is bright: the sky is far, the beach comes closer towards the bottom, the dancer is near."""
    w, h = size
    image = Image.new("L", size)
    draw = ImageDraw.Draw(image)
    for y in range(h):
        t = y / h
        level = 12 if t < HORIZON else round(40 + 150 * (t - HORIZON) / (1 - HORIZON))
        draw.line([(0, y), (w, y)], fill=level)
    _figure(draw, size, skin=225, dress=235, hair=215)
    return image.filter(ImageFilter.GaussianBlur(max(2, w // 120))).convert("RGB")


class DemoPreprocessors:
    """The preprocessor service's interface, with maps drawn from the demo figure (see the module
    docstring). Made by the control worker on its thread, like the real one."""

    def __init__(self, weights_dir: Path, device: str | None = None) -> None:
        from ipa_studio.core.preprocess import PreprocessStats

        self.weights_dir = Path(weights_dir)
        self.stats = PreprocessStats()

    def run(self, image: Any, spec: Any) -> Any:
        from ipa_studio.core.images import content_hash, load_image
        from ipa_studio.core.preprocess import ControlMap, Pose, draw_pose_map, map_size

        picture = load_image(image, what="control image")
        source = content_hash(picture)
        if spec.preprocessor == "none":
            return ControlMap(picture, spec, source)
        self.stats.runs += 1
        size = map_size(picture.size, spec.resolution)
        if spec.preprocessor == "openpose":
            pose = Pose(DANCER)
            return ControlMap(draw_pose_map([pose], size), spec, source, (pose,))
        return ControlMap(demo_depth(size), spec, source)

    def set_weights_dir(self, weights_dir: Path) -> None:
        self.weights_dir = Path(weights_dir)

    def unload(self) -> None:
        pass


def save_control_screenshot(docs: Path) -> int:
    from ipa_studio.core.models.tiny import build_controlnet_folder, make_reference_image
    from ipa_studio.gui.panels.references import file_urls_mime
    from ipa_studio.gui.selftest import build_demo_models, demo_settings, engine_started, wait_until
    from ipa_studio.gui.style import apply_theme

    os.environ["HF_HUB_OFFLINE"] = "1"
    app = QApplication.instance() or QApplication(sys.argv[:1])
    apply_theme(app)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = build_demo_models(folder / "models")
        pose_net = build_controlnet_folder(
            folder / "models/controlnet/control_v11p_sd15_openpose", models.base
        )
        depth_net = build_controlnet_folder(
            folder / "models/controlnet/control_v11f1p_sd15_depth", models.base
        )
        photo = folder / "dancer.jpg"
        demo_photo().save(photo, quality=92)
        settings = demo_settings(
            folder,
            models,
            prompt="a dancer on a beach at sunset, watercolour",
            steps=12,
            width=480,
            height=640,
            seed_locked=False,
        )
        window = MainWindow(settings, None, check_network=False)
        panel = window.control
        panel.worker.service_factory = DemoPreprocessors
        window.resize(1366, 768)  # a laptop screen: what most people see
        window.show()
        if not wait_until(lambda: engine_started(window), 120):
            print("the engine did not start", file=sys.stderr)
            return 1
        refs = [folder / "reference-a.jpg", folder / "reference-b.jpg"]
        for seed, ref in zip((3, 9), refs, strict=True):
            make_reference_image(seed, size=(512, 640)).save(ref, quality=92)
        window.references.add_from_mime(file_urls_mime(refs))
        first, second = panel.add_control(photo), panel.add_control(photo)
        panel.set_model(first, pose_net)
        panel.set_model(second, depth_net)
        cards = [panel.cards[first], panel.cards[second]]
        if not wait_until(lambda: all(c.has_map() and not c.checking for c in cards), 60):
            print(f"the maps were not made: {[c.status.text() for c in cards]}", file=sys.stderr)
            return 1
        wait_until(lambda: all(c.has_crop() for c in window.references.cards.values()), 60)
        list(window.references.cards.values())[1].spin.setValue(0.6)
        cards[1].strength_spin.setValue(0.6)
        cards[1].end.setValue(80)
        ended: list[str] = []
        window.generation_ended.connect(ended.append)
        window.generate()
        if not wait_until(lambda: bool(ended), 600) or ended != ["finished"]:
            print(f"generation failed: {ended} {window.banner.text()}", file=sys.stderr)
            return 1
        window.banner.hide()
        docs.mkdir(parents=True, exist_ok=True)
        wait_until(lambda: False, 0.5)
        save_window(window, docs / "create.png")  # the top of the column: model, two references; the result
        cards[0].map_box.clicked.emit()  # the pose map, large
        scroll = panel.parentWidget()
        while scroll is not None and not isinstance(scroll, QScrollArea):
            scroll = scroll.parentWidget()
        if scroll is not None:
            scroll.verticalScrollBar().setValue(panel.y() - 10)
        wait_until(lambda: False, 0.5)  # let the last repaints land
        save_window(window, docs / "control.png")
        print(f"saved {docs / 'create.png'} and {docs / 'control.png'}")
        window.close()
    return 0


if __name__ == "__main__":
    sys.exit(save_control_screenshot(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs")))
