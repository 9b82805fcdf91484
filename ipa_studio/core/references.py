"""What the image encoder sees of a reference, and references saved with their features.

Two halves, both Qt-free:

- **The encoder's input.** :func:`encoder_inputs` is the one place that turns a reference and its
  :class:`~ipa_studio.core.request.EncoderView` (centre crop, a chosen square, pad to square, tile)
  into the exact square images (e.g. 224×224, 8-bit RGB) the encoder receives; the engine feeds it
  these and nothing else, so the window can show people precisely what counts. The default view
  runs CLIP's own preprocessing unchanged, so results stay equal to diffusers' IP-Adapter.
- **The reference library.** :class:`ReferenceStore` keeps saved references on disk (the picture as
  a PNG) with the encoder features computed for them (safetensors, keyed by the picture's content
  hash, the view, the encoder's identity, number format and device), so a saved reference costs no
  encoder call again, also after a restart.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ipa_studio.core.errors import IPAStudioError, RequestError
from ipa_studio.core.images import content_hash, load_image, read_png_metadata, save_png
from ipa_studio.core.request import ENCODER_FITS, EncoderView, ImageSource

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the window lists the reference library and shows what the
# encoder sees without loading it on its own thread (the engine's thread has it anyway).

__all__ = [
    "MAX_TILES",
    "ReferenceStore",
    "SavedReference",
    "check_view",
    "default_store_dir",
    "encoder_fingerprint",
    "encoder_inputs",
    "feature_key",
    "noised",
    "normalise",
    "tile_boxes",
]

log = logging.getLogger(__name__)

MAX_TILES = 4
"""Tiles per reference; a picture longer than 4:1 keeps its middle four squares (as ComfyUI's
tiled IP-Adapter does), so the token count stays bounded."""


# --------------------------------------------------------------------------------------------------
# The encoder's input
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _processor(size: int) -> Any:
    from transformers import CLIPImageProcessor

    # CLIP's defaults at the encoder's resolution: what models.loader builds and diffusers'
    # load_ip_adapter uses; its resize and crop produce 8-bit pixels, so the square it feeds the
    # encoder is an ordinary 8-bit image.
    return CLIPImageProcessor(size=size, crop_size=size)


def _clip_square(image: Image.Image, size: int) -> Image.Image:
    """CLIP's resize (short side to ``size``, bicubic) and centre crop, stopped before rescaling."""
    import torch

    pixels = _processor(size)(image, do_rescale=False, do_normalize=False, return_tensors="pt").pixel_values
    return Image.fromarray(pixels[0].permute(1, 2, 0).to(torch.uint8).numpy(), "RGB")


def check_view(view: EncoderView, picture_size: tuple[int, int] | None = None, *, what: str = "") -> None:
    """Refuse a view that names an unknown fit or a box that is not a square inside the picture."""
    what = what or "a reference"
    if view.fit not in ENCODER_FITS:
        raise RequestError(
            f"Unknown encoder view '{view.fit}' for {what}. Choose one of: {', '.join(ENCODER_FITS)}."
        )
    if view.box is None:
        if view.fit == "crop":
            raise RequestError(f"The 'crop' view of {what} needs its square (left, top, side).")
        return
    if view.fit != "crop":
        raise RequestError(f"A crop square for {what} only goes with the 'crop' view (not '{view.fit}').")
    box = tuple(view.box)
    if len(box) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in box):
        raise RequestError(f"The crop square of {what} must be three whole numbers: left, top, side.")
    left, top, side = box
    if side < 1 or left < 0 or top < 0:
        raise RequestError(f"The crop square of {what} must have a positive side and lie inside the picture.")
    if picture_size is not None and (left + side > picture_size[0] or top + side > picture_size[1]):
        raise RequestError(
            f"The crop square of {what} ({side} px at {left}, {top}) reaches outside the picture "
            f"({picture_size[0]}×{picture_size[1]})."
        )


def tile_boxes(size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Overlapping squares (left, top, right, bottom) along the long side that together cover it.

    As many as the picture is long (ceil of long ÷ short, at most :data:`MAX_TILES`), spread evenly
    so the first starts at one end and the last ends at the other.
    """
    width, height = size
    short, long = min(width, height), max(width, height)
    count = min(MAX_TILES, math.ceil(long / short - 1e-9))
    if count <= 1:
        return [((width - short) // 2, (height - short) // 2, (width + short) // 2, (height + short) // 2)]
    covered = min(long, MAX_TILES * short)
    first = (long - covered) // 2
    starts = [first + round(i * (covered - short) / (count - 1)) for i in range(count)]
    if width >= height:
        return [(s, 0, s + short, short) for s in starts]
    return [(0, s, short, s + short) for s in starts]


def encoder_inputs(image: ImageSource, view: EncoderView | None = None, size: int = 224) -> list[Image.Image]:
    """The exact ``size``×``size`` RGB squares the image encoder receives for this reference.

    One square for "centre", "crop" and "pad", one per tile for "tile". The engine normalises these and
    nothing else, so a card showing them shows exactly what the encoder gets.
    """
    picture = load_image(image)
    view = view or EncoderView()
    check_view(view, picture.size)
    if view.fit == "pad":
        side = max(picture.size)
        square = Image.new("RGB", (side, side), (0, 0, 0))
        square.paste(picture, ((side - picture.width) // 2, (side - picture.height) // 2))
        return [_clip_square(square, size)]
    if view.fit == "tile":
        return [_clip_square(picture.crop(box), size) for box in tile_boxes(picture.size)]
    if view.box is not None:
        left, top, side = view.box
        picture = picture.crop((left, top, left + side, top + side))
    return [_clip_square(picture, size)]


def normalise(squares: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Pixel values [N, 3, size, size] for the encoder: CLIP's rescale and normalisation only."""
    return _processor(size)(
        list(squares), do_resize=False, do_center_crop=False, return_tensors="pt"
    ).pixel_values


def noised(square: Image.Image, amount: float) -> Image.Image:
    """``square`` faded towards uniform noise by ``amount`` (0 = unchanged, 1 = pure noise).

    ComfyUI_IPAdapter_plus's IPAdapterNoise "fade"; the noise is seeded from the picture, so the same
    picture always gets the same noise (the result does not change from run to run).
    """
    if amount <= 0:
        return square
    import torch

    seed = int(content_hash(square)[:15], 16)
    generator = torch.Generator("cpu").manual_seed(seed)
    pixels = torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0)
    noise = torch.rand(pixels.shape, generator=generator)
    mixed = (pixels * (1.0 - amount) + noise * amount).clamp(0, 1)
    return Image.fromarray((mixed * 255).round().to(torch.uint8).numpy(), "RGB")


# --------------------------------------------------------------------------------------------------
# Identity of the features
# --------------------------------------------------------------------------------------------------


def encoder_fingerprint(model: torch.nn.Module) -> str:
    """A short identity of an image encoder's weights, cheap enough to compute at every load.

    sha256 over the configuration and, per tensor, its name, shape, type and a strided sample of
    its values (up to 1024): two different encoders (fine-tunes change every weight) differ, the
    same weights read from another folder or format agree.
    """
    import torch

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step][:1024].to("cpu", torch.float32).contiguous().numpy()
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:32]


def view_text(view: EncoderView) -> str:
    if view.fit == "crop" and view.box is not None:
        return "crop:{},{},{}".format(*view.box)
    return view.fit


def feature_key(
    content: str, view: EncoderView, *, encoder: str, hidden: bool, dtype: torch.dtype, device: str
) -> str:
    """The name of one set of features: which picture, seen how, by which encoder, in what form.

    Device and number format belong to it because features computed in fp16 on a GPU differ (at
    rounding level) from fp32 ones on a CPU, and a saved reference must equal a fresh encoding.
    """
    parts = {
        "content": content,
        "view": view_text(view),
        "encoder": encoder,
        "output": "hidden" if hidden else "embeds",
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------------
# The reference library
# --------------------------------------------------------------------------------------------------


def default_store_dir() -> Path:
    import platformdirs

    from ipa_studio.core.settings import APP_NAME

    return platformdirs.user_data_path(APP_NAME, appauthor=False) / "references"


@dataclass(frozen=True)
class SavedReference:
    """One picture in the library: ``path`` is an ordinary PNG a request can name."""

    path: Path
    content: str
    """:func:`~ipa_studio.core.images.content_hash` of the picture (RGB, upright)."""
    name: str
    features: int
    """How many sets of encoder features are stored for it (views × encoders)."""


_NAME_KEY = "ipa-studio-reference"


class ReferenceStore:
    """A folder of saved references and their encoder features.

    Layout: ``<content>.png`` per reference (its name in a PNG text chunk) and
    ``features/<content>/<key>.safetensors`` per set of features. Every write is atomic; a damaged
    features file counts as missing (the reference is encoded again and the file replaced).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_dir()

    # --- pictures ---

    def add(self, image: ImageSource, name: str | None = None) -> SavedReference:
        """Save ``image`` in the library (once: the same pixels again return the same entry)."""
        picture = load_image(image)
        content = content_hash(picture)
        path = self._picture(content)
        if name is None:
            name = Path(image).stem if isinstance(image, str | os.PathLike) else "pasted reference"
        if not path.is_file():
            save_png(picture, path, {_NAME_KEY: name})
        return self._entry(path, content)

    def find(self, image: Image.Image) -> SavedReference | None:
        """The library entry holding these pixels, if any (``image`` already RGB and upright)."""
        content = content_hash(image)
        return self._entry(self._picture(content), content) if self.contains(content) else None

    def contains(self, content: str) -> bool:
        return self._picture(content).is_file()

    def entries(self) -> list[SavedReference]:
        """Every saved reference, newest first."""
        if not self.root.is_dir():
            return []
        pictures = [p for p in self.root.glob("*.png") if p.is_file() and len(p.stem) == 64]
        pictures.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        return [self._entry(p, p.stem) for p in pictures]

    def remove(self, content: str) -> None:
        """Forget a reference and all its features; pictures made with it keep their own copy."""
        for file in self._feature_files(content):
            with contextlib.suppress(OSError):
                file.unlink()
        with contextlib.suppress(OSError):
            self._features_dir(content).rmdir()
        with contextlib.suppress(FileNotFoundError):
            self._picture(content).unlink()

    # --- features ---

    def has_features(self, content: str, key: str) -> bool:
        return (self._features_dir(content) / f"{key}.safetensors").is_file()

    def load_features(self, content: str, key: str) -> torch.Tensor | None:
        path = self._features_dir(content) / f"{key}.safetensors"
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)["features"]
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            log.warning("saved features %s are damaged (%s); encoding again", path, exc)
            return None

    def save_features(self, content: str, key: str, features: torch.Tensor, about: dict[str, str]) -> Path:
        from safetensors.torch import save_file

        folder = self._features_dir(content)
        path = folder / f"{key}.safetensors"
        tmp = folder / f".{key}.{secrets.token_hex(6)}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"features": features.detach().to("cpu").contiguous()}, str(tmp), metadata=about)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise IPAStudioError(
                f"The features of a saved reference could not be written to {folder}: {exc.strerror or exc}."
            ) from exc
        return path

    # --- helpers ---

    def _picture(self, content: str) -> Path:
        return self.root / f"{content}.png"

    def _features_dir(self, content: str) -> Path:
        return self.root / "features" / content

    def _feature_files(self, content: str) -> Iterator[Path]:
        folder = self._features_dir(content)
        return folder.glob("*.safetensors") if folder.is_dir() else iter(())

    def _entry(self, path: Path, content: str) -> SavedReference:
        try:
            name = read_png_metadata(path).get(_NAME_KEY, content[:12])
        except IPAStudioError:
            name = content[:12]
        return SavedReference(path, content, name, sum(1 for _ in self._feature_files(content)))
