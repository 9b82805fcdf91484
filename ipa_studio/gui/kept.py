"""Copies of the pictures a saved result was made from, so it can always be made again.

A saved PNG records its request, and a request names its reference images (and their region
masks), start picture and negative image by path. A reference that is later moved, renamed, edited
or deleted would make the picture impossible to remake, so before a job runs every such file is
copied into the outputs folder, under the hash of its bytes (``references/kept/<hash>/<name>``):
the request, and so the PNG, names the copy. Equal files share one copy, and its own name stays
readable on the reference card.

Pictures already inside the outputs folder (history, pasted and kept pictures, painted masks) stay
where they are. Runs on the worker thread: hashing a large photo must not stall the window.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import replace
from pathlib import Path

from ipa_studio.core.request import GenerationRequest

KEPT_FOLDER = Path("references") / "kept"
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def keep_copy(path: str | Path, outputs_dir: Path) -> Path:
    """The kept copy of the file at ``path`` (made now when there is none yet).

    Raises ``OSError`` when the file cannot be read or the copy cannot be written.
    """
    source = Path(path)
    outputs = Path(outputs_dir)
    if _inside(source, outputs):
        return source
    digest = file_digest(source)
    folder = outputs / KEPT_FOLDER / digest[:16]
    if folder.is_dir():
        for existing in folder.iterdir():
            if existing.is_file() and not existing.name.startswith("."):
                return existing
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    tmp = folder / f".{source.name}.{secrets.token_hex(4)}.tmp"
    try:
        with source.open("rb") as src, tmp.open("xb") as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)
        os.replace(tmp, target)  # never a half-copied file under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return target


def keep_inputs(request: GenerationRequest, outputs_dir: Path) -> tuple[GenerationRequest, list[str]]:
    """``request`` naming kept copies of its reference images and start picture, and notes on
    any that could not be kept (the original is then used and named, as before)."""
    notes: list[str] = []

    def kept(image: object) -> object:
        if not isinstance(image, (str, Path)):
            return image
        try:
            return str(keep_copy(image, outputs_dir))
        except OSError as exc:
            notes.append(
                f"No copy of {Path(image).name} could be kept with the picture ({exc.strerror or exc}); "
                "it is remade from the original file only while that stays where it is."
            )
            return image

    references = tuple(
        replace(r, image=kept(r.image), mask=kept(r.mask) if r.mask is not None else None)
        for r in request.references
    )
    init = request.init
    if init is not None:
        init = replace(init, image=kept(init.image))
    negative = request.negative_image
    if negative is not None and negative.image is not None:
        negative = replace(negative, image=kept(negative.image))
    return request.replace(references=references, init=init, negative_image=negative), notes


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError):
        return False
    return True
