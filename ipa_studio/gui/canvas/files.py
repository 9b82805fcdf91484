"""Getting a start picture from wherever people have it, as a file the request can name.

A request names its init image and mask by path, so a picture that only exists on the clipboard or
in a browser drag is saved first (next to pasted reference images, in the outputs folder): the PNGs
made from it then record a path, and "reuse settings" finds the picture again.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QMimeData
from PySide6.QtGui import QImage

from ipa_studio.core.errors import IPAStudioError
from ipa_studio.gui.canvas.mask import MaskLayer, write_png_atomic

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.gif *.tif *.tiff);;All files (*)"
MASK_FILTER = "PNG mask (*.png);;Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"

_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def image_size(path: str | Path) -> tuple[int, int] | None:
    """The upright size of the picture at ``path`` from its header alone (no decoding), or None."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return (height, width) if orientation in _ROTATED else (width, height)


def save_pasted(image: QImage, folder: Path, stem: str = "pasted") -> Path:
    """Save a picture that has no file yet; raises ``IPAStudioError`` saying why it could not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or exc
        raise IPAStudioError(f"The pasted picture could not be saved in {folder}: {reason}.") from exc
    path = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{int(time.time() * 1000) % 1000:03d}.png"
    # Quality 90 = light compression: fast enough for a big screenshot, still lossless.
    if not image.save(str(path), "PNG", 90):
        raise IPAStudioError(f"The pasted picture could not be saved in {folder}.")
    return path


def picture_from_mime(mime: QMimeData, folder: Path) -> str:
    """The path of the picture a drop or paste carries (saved to ``folder`` when it has no file).

    Raises ``IPAStudioError`` with a message for people when there is no usable picture.
    """
    local = [url.toLocalFile() for url in mime.urls() if url.isLocalFile()]
    if local:
        path = Path(local[0])
        if path.is_dir():
            raise IPAStudioError(f"'{path.name}' is a folder; drop a picture file instead.")
        return str(path)
    if mime.hasImage():
        image = QImage(mime.imageData())
        if not image.isNull():
            return str(save_pasted(image, folder))
    if mime.urls():
        raise IPAStudioError(
            "Pictures from web addresses cannot be used directly: save the picture to a file first, "
            "then drop the file."
        )
    raise IPAStudioError("There is no picture to use: copy or drag a picture file or an image.")


def save_mask_for_request(layer: MaskLayer, folder: Path) -> Path:
    """Write the mask where requests can name it, under a name made from its content.

    Equal masks get the same file, so generating again with an unchanged mask writes nothing, and
    a mask reopened from a picture's settings keeps the path it was saved under.
    """
    pixels = layer.pixels()
    digest = hashlib.sha256(f"{layer.width}x{layer.height}\0".encode())
    digest.update(pixels.tobytes())
    path = folder / f"mask-{digest.hexdigest()[:16]}.png"
    if path.is_file():
        return path
    try:
        return write_png_atomic(layer.to_pil(), path)
    except OSError as exc:
        raise IPAStudioError(f"The mask could not be saved in {folder}: {exc.strerror or exc}.") from exc
