"""The catalog of known downloads: which repo, which files, how big, what they are for.

The data lives in ``ipa_studio/resources/catalog.json`` (package data) so it can be updated without
touching code. Sizes there are the rounded figures of the Hugging Face file pages; exact sizes and
sha256 hashes of the large files come from the hub at download time (its LFS metadata) and are checked
by ``download.download_entry``. A sha256 listed here, when known from a published source, takes
precedence over the hub's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, Literal

from ipa_studio.core.errors import IPAStudioError

Kind = Literal["base", "adapter", "image_encoder", "controlnet", "annotator"]
KINDS: tuple[str, ...] = ("base", "adapter", "image_encoder", "controlnet", "annotator")


class UnknownModelError(IPAStudioError):
    """A catalog name that is not in the catalog."""


@dataclass(frozen=True)
class CatalogEntry:
    """One known download: a single file (adapters) or a set of files forming a folder (base models,
    image encoders).

    ``files`` are paths inside the repo. Downloaded, a one-file entry becomes ``dest/<file name>`` and
    a multi-file entry the folder ``dest/<name>/`` with each file at its path relative to the files'
    common folder (``models/image_encoder/config.json`` → ``dest/image-encoder-vit-h-14/config.json``).
    """

    name: str
    kind: Kind
    repo_id: str
    files: tuple[str, ...]
    size_bytes: int
    description: str
    # Not hashed: a mapping is unhashable, and name + repo + files already identify an entry.
    sha256: Mapping[str, str] | None = field(default=None, hash=False)
    size_approximate: bool = True
    revision: str = "main"
    requires: tuple[str, ...] = ()
    """Names of other catalog entries this one needs to run (an adapter's image encoder)."""
    recommended: bool = False
    """Part of the first-run set: enough for image-prompted generation."""

    @property
    def is_single_file(self) -> bool:
        return len(self.files) == 1

    def _common_folder(self) -> PurePosixPath:
        parents = [PurePosixPath(f).parent.parts for f in self.files]
        common: list[str] = []
        for parts in zip(*parents, strict=False):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        return PurePosixPath(*common) if common else PurePosixPath()

    def local_path(self, dest_dir: str | Path) -> Path:
        """Where ``download_entry`` puts this entry under ``dest_dir`` (a file or a folder)."""
        dest_dir = Path(dest_dir)
        if self.is_single_file:
            return dest_dir / PurePosixPath(self.files[0]).name
        return dest_dir / self.name

    def local_file(self, dest_dir: str | Path, repo_file: str) -> Path:
        """The local path of one of ``files`` once downloaded under ``dest_dir``."""
        if self.is_single_file:
            return self.local_path(dest_dir)
        rel = PurePosixPath(repo_file).relative_to(self._common_folder())
        return self.local_path(dest_dir).joinpath(*rel.parts)

    def expected_sha256(self, repo_file: str) -> str | None:
        return (self.sha256 or {}).get(repo_file)


def _entry_from_json(raw: Mapping[str, Any]) -> CatalogEntry:
    kind = raw["kind"]
    if kind not in KINDS:
        raise ValueError(f"catalog entry {raw.get('name')!r} has unknown kind {kind!r}")
    sha = raw.get("sha256")
    return CatalogEntry(
        name=raw["name"],
        kind=kind,
        repo_id=raw["repo_id"],
        files=tuple(raw["files"]),
        size_bytes=int(raw["size_bytes"]),
        description=raw["description"],
        sha256=MappingProxyType(dict(sha)) if sha else None,
        size_approximate=bool(raw.get("size_approximate", True)),
        revision=raw.get("revision", "main"),
        requires=tuple(raw.get("requires", ())),
        recommended=bool(raw.get("recommended", False)),
    )


def load_catalog(text: str | None = None) -> tuple[CatalogEntry, ...]:
    """Parse catalog JSON (the bundled ``resources/catalog.json`` when ``text`` is None)."""
    if text is None:
        text = resources.files("ipa_studio").joinpath("resources", "catalog.json").read_text(encoding="utf-8")
    data = json.loads(text)
    entries = tuple(_entry_from_json(raw) for raw in data["entries"])
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("catalog names must be unique")
    return entries


@lru_cache(maxsize=1)
def _bundled() -> tuple[CatalogEntry, ...]:
    return load_catalog()


CATALOG: tuple[CatalogEntry, ...] = _bundled()


def find(name: str) -> CatalogEntry:
    """The catalog entry called ``name``; raises ``UnknownModelError`` listing the known names."""
    for entry in CATALOG:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in CATALOG)
    raise UnknownModelError(f"'{name}' is not in the model catalog. Known models: {known}.")


def recommended() -> tuple[CatalogEntry, ...]:
    """The first-run set: a base model, an adapter and its image encoder."""
    return tuple(e for e in CATALOG if e.recommended)
