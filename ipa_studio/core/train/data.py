"""Training data: a folder of images with captions, read the way the paper's recipe wants it.

Captions come from a ``metadata.jsonl`` at the top of the folder (one ``{"file_name": ..., "text": ...}``
object per line, the Hugging Face ``imagefolder`` convention; ``"caption"`` is accepted for ``"text"``)
or, without one, from a sidecar ``.txt`` next to each image (``cat.png`` + ``cat.txt``).

Web-scale folders always hold some files that are not images, are truncated or are too large. Such a
file is skipped and counted, never fatal: the scan drops files whose header cannot be read, and a file
that only fails when fully decoded is replaced in its batch by the next readable one, so every process
still sees full batches (an uneven batch on one GPU would stall the others in the gradient all-reduce).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ipa_studio.core.errors import IPAStudioError
from ipa_studio.core.images import load_image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
METADATA_FILE = "metadata.jsonl"


class DatasetError(IPAStudioError):
    """The training or evaluation folder cannot be used as a whole (empty, malformed metadata)."""


@dataclass(frozen=True)
class CaptionedImage:
    path: Path
    caption: str


@dataclass
class FolderScan:
    """What a folder holds: usable (image, caption) items and what was left out, with reasons."""

    folder: Path
    items: list[CaptionedImage]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    missing_captions: int = 0
    source: str = "sidecar .txt files"

    def describe(self) -> str:
        text = f"{len(self.items)} images with captions from {self.source} in '{self.folder}'"
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable file(s) skipped"
        if self.missing_captions:
            text += f"; {self.missing_captions} image(s) without a caption train with an empty one"
        return text


def _header_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an image, from its header only (a full decode of millions of files at
    start-up would take longer than many training runs)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    if width < 1 or height < 1:
        return "no pixels"
    return None


def _caption_from_metadata(record: dict[str, Any]) -> str | None:
    for key in ("text", "caption"):
        value = record.get(key)
        if isinstance(value, str):
            return value
    return None


def _scan_metadata(folder: Path, meta: Path) -> list[tuple[Path, str | None]]:
    items = []
    with meta.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{meta}, line {number}: not valid JSON ({exc.msg}).") from None
            if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
                raise DatasetError(f'{meta}, line {number}: needs a "file_name" and a "text" entry.')
            items.append((folder / record["file_name"], _caption_from_metadata(record)))
    return items


def _scan_sidecars(folder: Path) -> list[tuple[Path, str | None]]:
    items = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8", errors="replace").strip() if sidecar.is_file() else None
        items.append((path, caption))
    return items


def scan_captioned_folder(folder: str | Path, *, check_headers: bool = True) -> FolderScan:
    """List the (image, caption) pairs of ``folder``; unreadable files are set aside with a reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"The image folder '{folder}' does not exist or is not a folder.")
    meta = folder / METADATA_FILE
    if meta.is_file():
        candidates = _scan_metadata(folder, meta)
        source = METADATA_FILE
    else:
        candidates = _scan_sidecars(folder)
        source = "sidecar .txt files"
    scan = FolderScan(folder, [], source=source)
    for path, caption in candidates:
        if not path.is_file():
            scan.unreadable.append((path, "no such file"))
            continue
        problem = _header_problem(path) if check_headers else None
        if problem:
            scan.unreadable.append((path, problem))
            continue
        if caption is None:
            scan.missing_captions += 1
        scan.items.append(CaptionedImage(path, caption or ""))
    if not scan.items:
        raise DatasetError(
            f"'{folder}' holds no readable images with captions. Put images there with a .txt caption "
            f"next to each (cat.png + cat.txt), or a {METADATA_FILE} with one "
            '{"file_name": "cat.png", "text": "a cat"} per line.'
        )
    return scan


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Paper §4.1.2: the shortest side resized to ``size``, then the centre ``size`` × ``size`` square.

    Bilinear with antialiasing (Pillow's resize), as torchvision's ``Resize`` in the official scripts.
    """
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    image = image.resize(new, Image.Resampling.BILINEAR)
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_model_pixels(image: Image.Image) -> torch.Tensor:
    """RGB image → [3, H, W] float in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class CaptionedImageDataset(Dataset):
    """Samples: ``pixels`` for the VAE, ``clip_pixels`` for the image encoder, the caption, and the
    paths of unreadable files passed over to find a readable one."""

    def __init__(self, items: Sequence[CaptionedImage], resolution: int, clip_processor: Any) -> None:
        if not items:
            raise DatasetError("No images to train on.")
        self.items = list(items)
        self.resolution = resolution
        self.clip_processor = clip_processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        skipped: list[str] = []
        for offset in range(len(self.items)):
            item = self.items[(index + offset) % len(self.items)]
            try:
                image = load_image(item.path, what="training image")
            except IPAStudioError:
                skipped.append(str(item.path))
                continue
            # The image prompt is the training image itself, prepared as at inference (CLIP's own
            # resize and crop of the whole picture), while the VAE sees the paper's square crop.
            clip = self.clip_processor(images=image, return_tensors="pt").pixel_values[0]
            pixels = to_model_pixels(resize_center_crop(image, self.resolution))
            return {"pixels": pixels, "clip_pixels": clip, "caption": item.caption, "skipped": skipped}
        raise DatasetError("None of the training images could be read.")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixels": torch.stack([s["pixels"] for s in samples]),
        "clip_pixels": torch.stack([s["clip_pixels"] for s in samples]),
        "captions": [s["caption"] for s in samples],
        "skipped": [p for s in samples for p in s["skipped"]],
    }


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one process: a fresh permutation per epoch from ``seed + epoch``, sliced per process.

    Each epoch is cut to a whole number of global batches, so all processes run the same number of
    steps. The permutation depends only on (seed, epoch), so resuming at (epoch, batch) replays the
    exact order an uninterrupted run would have used, with no need to store sampler state.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if batch_size < 1:
            raise DatasetError("The batch size must be at least 1.")
        if size < batch_size * world:
            raise DatasetError(
                f"There are {size} readable images, fewer than one batch ({batch_size} per device × "
                f"{world} device(s)). Add images or lower --batch-size."
            )
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.epoch = 0
        self.start = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // (self.batch_size * self.world)

    def set_position(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        per_step = self.batch_size * self.world
        for b in range(self.start, self.batches_per_epoch):
            first = b * per_step + self.rank * self.batch_size
            yield order[first : first + self.batch_size].tolist()
