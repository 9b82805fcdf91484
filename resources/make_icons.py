"""Render the app icon, resources/ipa-studio.svg, into every size the platforms ask for.

    python3 resources/make_icons.py

writes resources/icons/ipa-studio-<N>.png (16 … 1024 px), resources/icons/ipa-studio.ico (Windows:
window, installer, Start menu), resources/icons/ipa-studio.icns (macOS app bundle), and the copy the
app itself loads for its window, ipa_studio/resources/icons/ipa-studio.png (the installed package
cannot reach this folder). Each size is rendered from the vector source, not scaled down from a big
bitmap, so the small ones stay sharp. Run it again after editing the SVG and commit the results.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "ipa-studio.svg"
OUT = HERE / "icons"
APP_COPY = HERE.parent / "ipa_studio" / "resources" / "icons" / "ipa-studio.png"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512, 1024)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)  # 256 is the largest a .ico holds


def render(size: int) -> Image.Image:
    """The SVG drawn at ``size`` × ``size`` pixels, with transparency."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(SOURCE))
    if not renderer.isValid():
        raise SystemExit(f"{SOURCE} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return Image.open(io.BytesIO(bytes(data))).convert("RGBA")


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (QImage needs it)
    OUT.mkdir(parents=True, exist_ok=True)
    images = {size: render(size) for size in PNG_SIZES}
    for size, image in images.items():
        image.save(OUT / f"ipa-studio-{size}.png", optimize=True)
    ico = [images[s] for s in ICO_SIZES]
    ico[-1].save(OUT / "ipa-studio.ico", sizes=[(s, s) for s in ICO_SIZES], append_images=ico[:-1])
    images[1024].save(OUT / "ipa-studio.icns", append_images=[images[s] for s in (16, 32, 64, 128, 256, 512)])
    APP_COPY.parent.mkdir(parents=True, exist_ok=True)
    images[256].save(APP_COPY, optimize=True)
    print(f"wrote {len(images)} PNG sizes, ipa-studio.ico and ipa-studio.icns in {OUT}, and {APP_COPY}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
