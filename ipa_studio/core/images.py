"""Robust image input and output.

People drop whatever they have: phone photos stored sideways with an EXIF rotation flag, CMYK JPEGs
from print work, 16-bit PNGs from scanners, palette GIFs, PNGs with transparency, and sometimes files
that are not images at all. Everything that enters the pipeline goes through :func:`load_image` or
:func:`load_mask`, which either return a plain 8-bit image or raise :class:`ImageInputError` with a
message that names the file and the role it was meant to play.

Results leave through :func:`save_png`, which writes atomically so a crash or a full disk never
leaves a half-written PNG where a good one (or nothing) used to be.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

from ipa_studio.core import files as _files
from ipa_studio.core.errors import ImageInputError, IPAStudioError
from ipa_studio.core.request import ImageSource

__all__ = [
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_PIXELS",
    "content_hash",
    "encoder_crop",
    "load_image",
    "load_mask",
    "read_png_metadata",
    "save_png",
]

DEFAULT_MAX_PIXELS = 64_000_000
"""64 megapixels: larger than any camera photo people use as a reference, far below what a
decompression bomb expands to. SD1.5 works at 512 px, so nothing useful is lost by refusing more."""

DEFAULT_MAX_ASPECT = 100
"""Longest side over shortest side. The image encoder scales the short side to 224 px before it
crops, so a 1×3,000,000 strip (3 megapixels, well under the pixel limit) would grow to 224×672 million
pixels — gigabytes — inside the resize. Panoramas stay far below 100:1."""

# Modes Pillow stores with more than 8 bits per channel; they need scaling, not clipping.
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_image(
    source: ImageSource,
    *,
    what: str = "reference image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Load ``source`` (a path or an image in memory) as an 8-bit RGB image, upright.

    EXIF orientation is applied; transparency is composited on white (what people see in a viewer);
    CMYK is converted through its embedded ICC profile when it has one; 16-bit and 32-bit greyscale
    is scaled down to 8 bits. Images over ``max_pixels`` are refused before they are decoded.

    ``what`` names the role of the image in error messages ("reference image", "init image", ...).
    """
    image = _open_upright(source, what=what, max_pixels=max_pixels)
    return _to_rgb(image, source=source, what=what)


def load_mask(
    source: ImageSource,
    *,
    size: tuple[int, int] | None = None,
    what: str = "mask",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Load an inpainting mask as a mode ``"L"`` image: white = repaint, black = keep.

    Which channel is the mask:

    * An image whose alpha channel *varies* (strokes painted on a transparent layer, the usual way
      an editor exports a mask) uses the alpha: opaque = repaint, transparent = keep. The colour
      under the alpha is ignored, because painted strokes may be any colour.
    * Any other image (no alpha, or an alpha that is the same everywhere) uses its brightness.

    With ``size`` (width, height) the mask is stretched to that size with bilinear filtering, so its
    edges stay soft; it is meant to be the size of the init image it belongs to.
    """
    image = _open_upright(source, what=what, max_pixels=max_pixels)
    alpha = _varying_alpha(image)
    if alpha is not None:
        mask = alpha
    elif image.mode in _WIDE_MODES:
        mask = _wide_to_l(image)
    else:
        try:
            # Dropping alpha first keeps a fully transparent (constant-alpha) image's colours.
            base = image.convert("RGBA").convert("RGB") if image.mode in _ALPHA_MODES else image
            mask = base.convert("L")
        except (ValueError, OSError) as exc:
            raise ImageInputError(
                f"{_subject(source, what)} uses the colour mode {image.mode!r}, which cannot be turned "
                f"into a mask ({exc})."
            ) from exc
    if size is not None:
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"mask size must be positive, got {size!r}")
        if mask.size != (width, height):
            mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    return mask


def _open_upright(source: ImageSource, *, what: str, max_pixels: int) -> Image.Image:
    """Open and decode ``source`` fully, apply EXIF orientation, and enforce the size limit."""
    if isinstance(source, Image.Image):
        _check_size(source.size, source=source, what=what, max_pixels=max_pixels)
        try:
            # An image handed over straight from Image.open is still lazy: decode it here, where a
            # damaged file can be reported as such.
            source.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageInputError(
                f"{_subject(source, what)} could not be read: its data is damaged or incomplete ({exc})."
            ) from exc
        return _exif_upright(source, source=source, what=what)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a path or a PIL image, got {type(source).__name__}")

    path = Path(source).expanduser()
    subject = _subject(source, what)
    if not path.exists():
        raise ImageInputError(f"{subject} could not be found: there is no file at {path.absolute()}.")
    if path.is_dir():
        raise ImageInputError(f"{subject} could not be read: {path} is a folder, not an image file.")
    special = _files.special_file_kind(path)
    if special is not None:
        # Opening a FIFO waits for a writer forever; a device never ends. Refuse before opening.
        raise ImageInputError(f"{subject} could not be read: {path} is {special}, not an image file.")
    try:
        with Image.open(path) as opened:
            # Image.open reads only the header, so the size check runs before any pixel is decoded.
            _check_size(opened.size, source=source, what=what, max_pixels=max_pixels)
            opened.load()
            # exif_transpose returns a new in-memory image (a copy when there is nothing to rotate),
            # so nothing returned still refers to the closed file.
            return _exif_upright(opened, source=source, what=what)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow's own guard, which fires when max_pixels is above Pillow's limit.
        raise ImageInputError(
            f"{subject} could not be read: it is far too large to open safely ({exc})."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(
            f"{subject} could not be read: it is not an image file{_not_image_hint(path)}."
        ) from exc
    except PermissionError as exc:
        raise ImageInputError(
            f"{subject} could not be read: permission denied ({exc.strerror or exc})."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated or corrupt data as OSError, and some plugins as SyntaxError.
        raise ImageInputError(
            f"{subject} could not be read: the file is damaged or incomplete ({exc})."
        ) from exc


def _check_size(size: tuple[int, int], *, source: ImageSource, what: str, max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{_subject(source, what)} has no pixels ({width}×{height}).")
    if width * height > max_pixels:
        raise ImageInputError(
            f"{_subject(source, what)} is too large: {width}×{height} pixels "
            f"({width * height / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f}). "
            "Scale it down in an image editor and try again."
        )
    ratio = max(width, height) / min(width, height)
    if ratio > DEFAULT_MAX_ASPECT:
        raise ImageInputError(
            f"{_subject(source, what)} is {width}×{height} pixels: one side is {ratio:,.0f} times the "
            f"other, and the limit is {DEFAULT_MAX_ASPECT}:1 (scaling such a strip for the model would "
            "take gigabytes). Crop it to the part that matters and try again."
        )


def _exif_upright(image: Image.Image, *, source: ImageSource, what: str) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # A damaged EXIF block (they fail in many different ways) should not cost the user their
        # image: keep it as stored.
        return image.copy()


def _to_rgb(image: Image.Image, *, source: ImageSource, what: str) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _WIDE_MODES:
        return _wide_to_l(image).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            # Palette/greyscale transparency (a tRNS colour key) also becomes real alpha here.
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageInputError(
            f"{_subject(source, what)} uses the colour mode {mode!r}, which IPA Studio cannot convert "
            f"to RGB ({exc}). Save it as an ordinary RGB PNG or JPEG and try again."
        ) from exc


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """CMYK → sRGB, through the embedded ICC profile when there is one.

    Pillow's plain conversion ignores ink behaviour and gives washed-out colours for real print
    files; with the file's own profile the result matches what a colour-managed viewer shows.
    """
    icc = image.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, src, dst, outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: the plain conversion below is still a usable picture
    return image.convert("RGB")


def _wide_to_l(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float greyscale to 8 bits (proportionally, never by clipping).

    Integer data is taken as 16-bit (0..65535), which is what Pillow produces for 16-bit PNG and
    TIFF files; values above that (true 32-bit data) are scaled by the image's own maximum.
    Float data is taken as 0..1 when it fits there, else as 0..255.
    """
    data = np.asarray(image)
    if image.mode == "F":
        values = data.astype(np.float64)
        peak = float(values.max()) if values.size else 0.0
        scaled = values * 255.0 if peak <= 1.0 else values
    else:
        values = data.astype(np.float64)
        peak = float(values.max()) if values.size else 0.0
        full_scale = 65535.0 if peak <= 65535.0 else peak
        scaled = values * (255.0 / full_scale)
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _varying_alpha(image: Image.Image) -> Image.Image | None:
    """The alpha channel as an "L" image if the image has one that is not constant, else None."""
    if image.mode in _ALPHA_MODES:
        alpha = image.convert("RGBA").getchannel("A")
    elif "transparency" in image.info and image.mode in {"P", "L", "RGB"}:
        alpha = image.convert("RGBA").getchannel("A")
    else:
        return None
    low, high = alpha.getextrema()
    return alpha if low != high else None


def _subject(source: ImageSource, what: str) -> str:
    """ "The reference image 'cat.png'" or "The reference image (in memory)"."""
    if isinstance(source, Image.Image):
        return f"The {what} (an image in memory, {source.width}×{source.height})"
    return f"The {what} '{Path(source).name}'"


def _not_image_hint(path: Path) -> str:
    """Say what the file seems to be instead, in words a person can act on."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return ""
    if not head:
        return " (the file is empty)"
    name_says = f", although its name ends in {path.suffix}" if path.suffix else ""
    if b"\0" not in head and _decodes_as_text(head):
        looks_like = "it contains text"
    else:
        looks_like = "its data is in none of the formats IPA Studio reads, such as PNG, JPEG, WebP or TIFF"
    return f" ({looks_like}{name_says})"


def _decodes_as_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The 512-byte window may cut a multi-byte character in two at its end.
        return exc.start >= len(head) - 3
    return True


# --------------------------------------------------------------------------------------------------
# Saving and metadata
# --------------------------------------------------------------------------------------------------

# Modes the PNG writer accepts as they are; anything else is converted first.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def save_png(image: Image.Image, path: str | os.PathLike[str], metadata: Mapping[str, str]) -> Path:
    """Write ``image`` as a PNG with ``metadata`` as text chunks, atomically; return the path.

    The PNG is written to a temporary file in the destination folder and moved over ``path`` with
    ``os.replace`` only once it is complete and flushed to disk, so readers see either the old file
    or the new one, never a partial write. On any failure the temporary file is removed and an
    existing file at ``path`` is left untouched.
    """
    path = Path(path).expanduser()
    if image.mode not in _PNG_MODES:
        image = image.convert("RGBA" if image.mode in _ALPHA_MODES else "RGB")
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        # add_text switches to an iTXt chunk by itself when the value is not Latin-1.
        info.add_text(str(key), str(value))

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Partial files a killed run left here (their names say which process wrote them).
        _files.clean_orphans(path.parent)
        # A temporary name that is removed on any failure, on SIGTERM once the CLI or app asked for
        # it, and by the next save into this folder if the process was killed outright.
        with _files.temporary(path) as tmp:
            # os.open with 0o666 lets the umask decide the final permissions, as for a normal file
            # (tempfile.mkstemp would leave every output readable only by its owner).
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            fd = os.open(tmp, flags, 0o666)
            with os.fdopen(fd, "wb") as f:
                image.save(f, format="PNG", pnginfo=info)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise IPAStudioError(f"The image could not be saved to {path}: {reason}.") from exc
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); harmless to skip where folders cannot be opened."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_png_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The text chunks of a PNG file (tEXt, zTXt and iTXt) as a plain dict.

    Other image formats have no such chunks and give an empty dict; a file that cannot be read as an
    image raises :class:`ImageInputError`.
    """
    path = Path(path).expanduser()
    subject = _subject(path, "image")
    if not path.is_file():
        raise ImageInputError(f"{subject} could not be found: there is no file at {path.absolute()}.")
    try:
        with Image.open(path) as image:
            if not isinstance(image, PngImagePlugin.PngImageFile):
                return {}
            # .text reads to the end of the file, so chunks written after the pixels are included.
            return {str(k): str(v) for k, v in image.text.items()}
    except UnidentifiedImageError as exc:
        raise ImageInputError(
            f"{subject} could not be read: it is not an image file{_not_image_hint(path)}."
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageInputError(
            f"{subject} could not be read: the file is damaged or incomplete ({exc})."
        ) from exc


def content_hash(image: Image.Image) -> str:
    """SHA-256 over mode, size, palette and pixel data: equal pixels give equal keys.

    Used as the image-embedding cache key, so it deliberately ignores file names, metadata and
    encoding: the same picture loaded twice, or pasted once and opened once, hits the same entry.
    """
    digest = hashlib.sha256()
    digest.update(f"{image.mode}\0{image.width}x{image.height}\0".encode())
    if image.mode in {"P", "PA"}:
        palette = image.getpalette()
        if palette is not None:
            digest.update(bytes(palette))
    digest.update(image.tobytes())
    return digest.hexdigest()


def encoder_crop(image: ImageSource, size: int = 224) -> Image.Image:
    """The square the image encoder sees: short side scaled to ``size`` (bicubic), centre cut out.

    The same geometry as the ``CLIPImageProcessor`` the engine uses (truncated long side, floor
    centring), so the GUI can show people exactly which part of a reference counts; pixel values
    agree to rounding. Anything outside the square has no effect on the result.
    """
    image = load_image(image)
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))
