"""What every docs screenshot script shares: how a window becomes a small PNG in docs/."""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from PySide6.QtWidgets import QWidget

from ipa_studio.gui.qimage import qimage_to_pil


def save_quantized(image: Image.Image, path: Path) -> None:
    # 256 colours without dithering: the UI looks the same and the noise pictures of the tiny
    # models shrink from ~0.9 MB to ~0.4 MB in the repository.
    image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True
    )


def save_window(window: QWidget, path: Path) -> None:
    """``window`` as it is drawn now, saved at ``path``."""
    save_quantized(qimage_to_pil(window.grab().toImage()), path)
