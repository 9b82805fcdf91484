"""Training data: a folder of images with captions, read the way the paper's recipe wants it.

Three layouts are read. The official IP-Adapter repository's ``tutorial_train.py`` (github
tencent-ailab/IP-Adapter) takes ``--data_json_file``, a JSON file holding a list of
``{"image_file": "1.png", "text": "A dog"}`` objects, and ``--data_root_path``, the folder the image
paths are joined to (``os.path.join(root, image_file)``): ``scan_json_list`` reads that. Otherwise
captions come from a ``metadata.jsonl`` at the top of the folder (one ``{"file_name": ..., "text": ...}``
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
            text += f"; {len(self.unreadable)} unreadable file(s) skipped ({self.examples()})"
        if self.missing_captions:
            text += f"; {self.missing_captions} image(s) without a caption train with an empty one"
        return text

    def examples(self, limit: int = 3) -> str:
        """A few of the skipped files with their reasons, for messages ("e.g. 'a.png': no such file")."""
        shown = "; ".join(f"'{path.name}': {reason}" for path, reason in self.unreadable[:limit])
        more = len(self.unreadable) - limit
        return "e.g. " + shown + (f"; and {more} more" if more > 0 else "")


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


JSON_FORMAT = '[{"image_file": "1.png", "text": "A dog"}, ...]'


def _entry_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__ if entry is not None else 'null'}, not an object"
    if "image_file" not in entry:
        keys = ", ".join(f'"{k}"' for k in list(entry)[:4]) or "no keys"
        return f'has no "image_file" (it has {keys})'
    if not isinstance(entry["image_file"], str) or not entry["image_file"].strip():
        return '"image_file" is not a file name'
    if "text" not in entry:
        return f'"{entry["image_file"]}" has no "text"'
    if not isinstance(entry["text"], str):
        return f'the "text" of "{entry["image_file"]}" is not a string'
    return None


def scan_json_list(
    json_file: str | Path, root: str | Path | None = None, *, check_headers: bool = True
) -> FolderScan:
    """The official IP-Adapter training data: a JSON list of ``{"image_file", "text"}`` objects whose
    image paths are relative to ``root`` (default: the JSON file's folder).

    A malformed file or entry stops with the count and a few examples of what is wrong (a dataset
    with the wrong keys is a mistake to fix, not files to skip); a listed image that is missing or
    unreadable is skipped and counted, like the unreadable files of a folder.
    """
    json_file = Path(json_file)
    root = Path(root) if root is not None else json_file.parent
    if not json_file.is_file():
        raise DatasetError(f"The dataset file '{json_file}' does not exist.")
    if not root.is_dir():
        raise DatasetError(f"The image root folder '{root}' of '{json_file.name}' does not exist.")
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DatasetError(f"'{json_file}' is not a text file, so not a JSON dataset list.") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"'{json_file}' is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}."
        ) from None
    if not isinstance(data, list):
        what = "an object" if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            f"'{json_file}' holds {what}; the official IP-Adapter format is a list of images with "
            f"captions: {JSON_FORMAT}."
        )
    problems = [(i, p) for i, entry in enumerate(data) if (p := _entry_problem(entry)) is not None]
    if problems:
        shown = "; ".join(f"entry {i + 1} {p}" for i, p in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        hint = ""
        if any('"file_name"' in p for _, p in problems):
            hint = (
                f' Entries with "file_name" belong in a {METADATA_FILE} (one per line) inside the image '
                "folder; pass that folder instead."
            )
        raise DatasetError(
            f"{len(problems)} of the {len(data)} entries of '{json_file}' are not in the official "
            f"IP-Adapter format {JSON_FORMAT}: {shown}{more}.{hint}"
        )
    scan = FolderScan(root, [], source=f"'{json_file.name}'")
    for entry in data:
        path = root / entry["image_file"]
        if not path.is_file():
            scan.unreadable.append((path, "no such file"))
            continue
        problem = _header_problem(path) if check_headers else None
        if problem:
            scan.unreadable.append((path, problem))
            continue
        scan.items.append(CaptionedImage(path, entry["text"].strip()))
    if not scan.items:
        if not data:
            raise DatasetError(f"'{json_file}' is an empty list: it names no images to train on.")
        missing = sum(1 for _, reason in scan.unreadable if reason == "no such file")
        where = (
            f"{missing} of the {len(data)} images it lists are not under the root folder '{root}' "
            f"({scan.examples()}). Is the root folder (--data-root) right?"
            if missing
            else f"none of its {len(data)} images could be read ({scan.examples()})."
        )
        raise DatasetError(f"'{json_file}' gives nothing to train on: {where}")
    return scan


def scan_dataset(
    data: str | Path, root: str | Path | None = None, *, check_headers: bool = True
) -> FolderScan:
    """A folder (sidecar captions or metadata.jsonl) or an official-format ``.json`` list."""
    data = Path(data)
    if data.suffix.lower() == ".json" and not data.is_dir():
        return scan_json_list(data, root, check_headers=check_headers)
    if root is not None:
        raise DatasetError(
            f"An image root folder goes with a .json dataset list; '{data}' is not a .json file."
        )
    return scan_captioned_folder(data, check_headers=check_headers)


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
