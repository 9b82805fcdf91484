"""PIL ↔ QImage without surprises: every QImage made here owns its pixels.

``QImage(bytes, ...)`` only borrows the buffer; if the bytes object is freed while the image lives
(for example after the image crossed to another thread in a signal), Qt reads freed memory. Hence
the ``.copy()``. QImage (unlike QPixmap) may be created on any thread, which is what lets the
worker convert previews and results before they reach the GUI thread.
"""

from __future__ import annotations

from PIL import Image
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QImage


def pil_to_qimage(image: Image.Image) -> QImage:
    if image.mode == "RGBA":
        data = image.tobytes()
        fmt, channels = QImage.Format.Format_RGBA8888, 4
    else:
        image = image if image.mode == "RGB" else image.convert("RGB")
        data = image.tobytes()
        fmt, channels = QImage.Format.Format_RGB888, 3
    width, height = image.size
    return QImage(data, width, height, width * channels, fmt).copy()


def qimage_to_pil(qimage: QImage) -> Image.Image:
    """RGBA copy of ``qimage`` (alpha kept, so load_image can composite it on white)."""
    rgba = qimage.convertToFormat(QImage.Format.Format_RGBA8888)
    width, height, stride = rgba.width(), rgba.height(), rgba.bytesPerLine()
    buffer = bytes(rgba.constBits())[: stride * height]
    return Image.frombuffer("RGBA", (width, height), buffer, "raw", "RGBA", stride, 1).copy()


def thumbnail(qimage: QImage, size: int) -> QImage:
    """Fit within ``size``×``size``, smooth. Safe on any thread."""
    if qimage.isNull():
        return qimage
    return qimage.scaled(
        QSize(size, size), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
