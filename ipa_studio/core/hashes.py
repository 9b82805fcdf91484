"""Model hashes for picture metadata, as model sites read them.

``Model hash`` is A1111's short hash: the first 10 hex digits of the file's sha256 (``modules/
sd_models.py``, ``CheckpointInfo.shorthash``), the "AutoV2" hash Civitai and other sites look models up
by. A diffusers folder has no single file, so its hash is the model library's folder hash (sha256
over each file's relative name and sha256, in name order, ``models/library.py sha256_of``): stable,
recognised by IPA Studio's own library, but known to no site.

Hashing a checkpoint reads all of it (2–4 GB for SD1.5), so results are kept in a small JSON cache
keyed by path, size and modification time; a file that changes is hashed again.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SHORT_HASH_LENGTH = 10
CACHE_ENV = "IPA_STUDIO_HASH_CACHE"


def short_hash(sha256: str) -> str:
    """A1111's / Civitai's short form of a sha256."""
    return sha256[:SHORT_HASH_LENGTH].lower()


@dataclass(frozen=True)
class ModelHashes:
    """Full sha256 of the models a picture was made with (``None`` where unknown, e.g. a hub id)."""

    base: str | None = None
    adapter: str | None = None
    loras: tuple[tuple[str, str], ...] = ()
    """(name as written in the prompt, sha256 of its file), in prompt order: written as Civitai's
    ``"lora:NAME"`` entries of ``Hashes``."""
    lora_a1111: tuple[tuple[str, str], ...] = ()
    """(name, A1111's LoRA hash): for ``.safetensors`` the sha256 of the file after its header (the
    "addnet" hash, A1111 ``modules/hashes.py`` ``addnet_hash_safetensors``, which its Lora extension
    uses so that editing the metadata keeps the hash), else the file's sha256. Written, 12 digits
    long, in A1111's ``Lora hashes`` field."""
    embeddings: tuple[tuple[str, str], ...] = ()
    """(name, sha256) of the textual inversions: A1111's ``TI hashes`` (12 digits) and Civitai's
    ``"embed:NAME"``."""


def default_cache_path() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    import platformdirs

    from ipa_studio.core.settings import APP_NAME

    return platformdirs.user_cache_path(APP_NAME, appauthor=False) / "model-hashes.json"


def _signature(path: Path) -> list[list[object]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    root = path if path.is_dir() else path.parent
    return [[f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


class HashCache:
    """sha256 of model files and folders, remembered on disk between runs."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_cache_path()
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] | None = None

    def _load(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self._entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._entries = {}  # no cache yet, or a damaged one: hash again
        return self._entries

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._entries, indent=0), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            # A cache that cannot be written only costs hashing again next time.
            with contextlib.suppress(OSError):
                tmp.unlink()

    def sha256(self, path: str | os.PathLike[str]) -> str | None:
        """sha256 of a model file or folder; ``None`` when nothing is there (a hub id, a moved file)."""
        p = Path(path).expanduser()
        try:
            if not p.exists():
                return None
        except OSError:
            return None

        def compute(target: Path) -> str:
            # Imported here: the model library brings torch, which the window does not load at start.
            from ipa_studio.core.models.library import sha256_of

            return sha256_of(target)

        return self._cached(p, "", compute)

    def a1111_lora_hash(self, path: str | os.PathLike[str]) -> str | None:
        """A1111's hash of a LoRA file (see ``ModelHashes.lora_a1111``), cached like ``sha256``."""
        p = Path(path).expanduser()
        if p.suffix.lower() != ".safetensors":
            return self.sha256(p)
        # A damaged safetensors header (ValueError) has no A1111 hash either.
        return self._cached(p, "#addnet", addnet_hash, (OSError, ValueError))

    def _cached(
        self,
        p: Path,
        suffix: str,
        compute: Callable[[Path], str],
        errors: tuple[type[Exception], ...] = (OSError,),
    ) -> str | None:
        """``compute(p)``, remembered under the file's resolved path + ``suffix`` until the file's
        size or modification time changes; ``None`` when the file cannot be read (``errors``)."""
        try:
            key = str(p.resolve()) + suffix
            signature = _signature(p)
        except OSError:
            return None
        with self._lock:
            entry = self._load().get(key)
            if isinstance(entry, dict) and entry.get("signature") == signature:
                value = entry.get("sha256")
                if isinstance(value, str):
                    return value
        try:
            digest = compute(p)
        except errors:
            return None
        with self._lock:
            self._load()[key] = {"signature": signature, "sha256": digest}
            self._save()
        return digest

    def known(self, paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
        """Hashes already in the cache for ``paths`` (still current), without hashing anything."""
        out: dict[str, str] = {}
        with self._lock:
            entries = self._load()
        for path in paths:
            p = Path(path).expanduser()
            with contextlib.suppress(OSError):
                entry = entries.get(str(p.resolve()))
                if isinstance(entry, dict) and entry.get("signature") == _signature(p):
                    out[str(path)] = str(entry["sha256"])
        return out


def addnet_hash(path: Path) -> str:
    """sha256 of a ``.safetensors`` file's data after its header (8-byte length, then the header)."""
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length <= 0 or length > path.stat().st_size:
            raise ValueError("not a safetensors file")
        f.seek(8 + length)
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


_default: HashCache | None = None


def default_cache() -> HashCache:
    global _default
    if _default is None or _default.path != default_cache_path():
        _default = HashCache()
    return _default


def model_hashes(
    base: str | os.PathLike[str],
    adapter: str | os.PathLike[str] | None,
    loras: Iterable[str | os.PathLike[str]] = (),
    embeddings: Iterable[str | os.PathLike[str]] = (),
) -> ModelHashes:
    """Hashes of a request's base model, adapter, LoRA and embedding files, from the cache or
    computed (and cached). Names are the files' stems, as prompts and A1111 write them."""
    cache = default_cache()

    def named(paths: Iterable[str | os.PathLike[str]], hash_of) -> tuple[tuple[str, str], ...]:
        out = []
        for path in paths:
            digest = hash_of(path)
            if digest is not None:
                out.append((Path(path).stem, digest))
        return tuple(out)

    loras = list(loras)
    return ModelHashes(
        base=cache.sha256(base),
        adapter=cache.sha256(adapter) if adapter is not None else None,
        loras=named(loras, cache.sha256),
        lora_a1111=named(loras, cache.a1111_lora_hash),
        embeddings=named(embeddings, cache.sha256),
    )
