"""The user's model library: every base model, adapter, image encoder and ControlNet they have.

A library is a models folder (``settings.default_models_dir()`` unless told otherwise) with an index
``library.json`` in it, plus any other folders the user adds. Each entry records what ``detect`` found
(kind, architecture, usable or the reason why not), its size, sha256 and where it came from (a local
file or folder, a catalog download, a Hugging Face repo). Models we cannot run stay listed with their
reason, so the picker can show them greyed out with an explanation instead of failing at generation.

Qt-free and synchronous: the GUI calls it from its worker thread, with ``on_progress`` /
``should_cancel`` for the long operations (hashing, downloading, converting).

Files inside the models folder belong to the library (``remove`` deletes them); files elsewhere are
only referenced (``remove`` forgets them and never deletes the user's files). Whether a file is inside
is decided from its resolved path at the moment of deleting, never from what the index says, so a
copied index or a symlink cannot turn a reference into a deletion.

Several processes may share one library (the app and a CLI, two CLIs): every read-modify-write of
``library.json`` happens under a cross-process lock on ``.library.lock``, re-reading the index inside
it, and the long work (hashing, converting, detecting) happens outside it. Partial files are written
under names that say which process writes them, and ones left by a killed process are deleted the next
time the library is opened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipa_studio.core import files as _files
from ipa_studio.core.errors import Cancelled, IPAStudioError, ModelFileError
from ipa_studio.core.models import catalog as _catalog
from ipa_studio.core.models.detect import Detection, detect
from ipa_studio.core.models.safe_load import PICKLE_SUFFIXES, SAFETENSORS_SUFFIX
from ipa_studio.core.models.scan import find_models

INDEX_NAME = "library.json"
LOCK_NAME = ".library.lock"
INDEX_VERSION = 1
MODEL_SUFFIXES = (SAFETENSORS_SUFFIX, *sorted(PICKLE_SUFFIXES))
_HASH_CHUNK = 8 << 20
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+(/.+)?$")

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]


class LibraryError(IPAStudioError):
    """A library operation cannot be done (unknown name, name taken, nothing at a path …)."""


class LibraryWriteError(LibraryError, OSError):
    """The library could not write (a full disk, a read-only folder …). Also an ``OSError``, with the
    system's error number, so a caller that lists a read-only library instead of refreshing it
    still can."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Source:
    """Where an entry came from."""

    type: str
    """"file" / "folder" (added from disk), "catalog", "hub" (a repo id) or "scan" (found in a folder)."""
    ref: str
    """The original path, catalog name or ``repo_id[/file]``."""
    converted_from: str | None = None
    """The pickle file this ``.safetensors`` was converted from, when it was."""


@dataclass(frozen=True)
class LibraryEntry:
    """One model in the library, as the model picker shows it."""

    name: str
    path: Path
    kind: str
    """"base", "adapter", "image_encoder", "controlnet", or what else detection found
    ("lora", "vae", "embedding", "unknown", "invalid")."""
    architecture: str
    usable: bool
    reason: str | None
    format: str
    size_bytes: int
    sha256: str | None
    source: Source
    added: str
    """ISO 8601 time it entered the library."""
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    owned: bool = False
    """The file lives inside the library's models folder (``remove`` deletes it)."""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        data["details"] = dict(self.details)
        return data

    @classmethod
    def from_json(cls, data: Any) -> LibraryEntry:
        """Read an index entry; raises ``ValueError`` saying what is wrong with a damaged one."""
        if not isinstance(data, Mapping):
            raise ValueError(f"it is {_json_type(data)}, not a table")
        for key, types in _ENTRY_FIELDS.items():
            if key in data or key not in _ENTRY_OPTIONAL:
                _check_type(data, key, types)
        source = data["source"]
        if not isinstance(source, Mapping):
            raise ValueError(f"its 'source' is {_json_type(source)}, not a table")
        for key in ("type", "ref"):
            _check_type(source, key, (str,), "source.")
        if "converted_from" in source:
            _check_type(source, "converted_from", (str, type(None)), "source.")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["path"] = Path(values["path"])
        values["source"] = Source(source["type"], source["ref"], source.get("converted_from"))
        values["details"] = dict(data.get("details") or {})
        return cls(**values)


# Types each index field may have (JSON's view: ints for sizes, null where a value may be absent).
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "path": (str,),
    "kind": (str,),
    "architecture": (str,),
    "usable": (bool,),
    "reason": (str, type(None)),
    "format": (str,),
    "size_bytes": (int,),
    "sha256": (str, type(None)),
    "source": (dict,),
    "added": (str,),
    "details": (dict, type(None)),
    "owned": (bool,),
}
_ENTRY_OPTIONAL = {"details", "owned"}


def _json_type(value: Any) -> str:
    names = {dict: "a table", list: "a list", str: "a text", bool: "true/false", type(None): "null"}
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _check_type(data: Mapping[str, Any], key: str, types: tuple[type, ...], prefix: str = "") -> None:
    if key not in data:
        raise ValueError(f"it has no '{prefix}{key}'")
    value = data[key]
    if isinstance(value, bool) and bool not in types:  # JSON true is not a size
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ValueError(f"its '{prefix}{key}' is {_json_type(value)}")


@dataclass(frozen=True)
class VerifyResult:
    name: str
    ok: bool
    problems: tuple[str, ...]


# ------------------------------------------------------------------------------------------- helpers


def sha256_of(
    path: Path, on_progress: ProgressFn | None = None, should_cancel: CancelFn | None = None
) -> str:
    """sha256 of a file, or of a folder (over its files' relative names and hashes, in name order)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    total = sum(f.stat().st_size for f in files)
    done = 0
    outer = hashlib.sha256()
    for f in files:
        h = hashlib.sha256()
        with f.open("rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                if should_cancel is not None and should_cancel():
                    raise Cancelled("Hashing cancelled.")
                h.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
        if path.is_file():
            return h.hexdigest()
        outer.update(f"{f.relative_to(path).as_posix()}\0{h.hexdigest()}\n".encode())
    return outer.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _files.temporary(path) as tmp:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _os_error(exc: BaseException) -> OSError | None:
    """The operating-system error behind a failed write (safetensors reports them in its own type)."""
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def _write_failed(exc: BaseException, what: str, where: Path) -> LibraryWriteError:
    """A failed write in words; the caller has already removed whatever it had half written."""
    error = _os_error(exc) or OSError(errno.EIO, str(exc))
    if _files.is_disk_full(error):
        return LibraryWriteError(
            f"There is not enough free space in '{where}' to {what}. Nothing was added and no partial "
            "file was left behind; free some space and try again.",
            error.errno,
        )
    return LibraryWriteError(
        f"Could not {what} in '{where}' ({error.strerror or error}). Nothing was added.", error.errno
    )


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _found_in(entry: LibraryEntry, folder: Path) -> bool:
    """Whether a scanned entry was found below ``folder`` (by where it was found, not where a link
    points)."""
    return _is_within(entry.path, folder) or Path(entry.source.ref).is_relative_to(folder)


def convert_to_safetensors(src: Path, dest: Path) -> Path:
    """Write the weights of a pickle checkpoint as ``.safetensors`` (read safely; atomic write).

    Only tensors are kept (training leftovers are dropped). An SD ``.ckpt``'s "state_dict" is
    unwrapped and its text encoder written in the standard layout; an adapter's nested
    ``image_proj`` / ``ip_adapter`` become the official flat prefixes.
    """
    from safetensors.torch import save_file

    from ipa_studio.core.models.convert import standardize_checkpoint
    from ipa_studio.core.models.detect import flatten_state
    from ipa_studio.core.models.safe_load import load_weights

    state = standardize_checkpoint(flatten_state(load_weights(src)))
    if not state:
        raise ModelFileError(f"'{src.name}' holds no weights to convert.")
    # safetensors refuses tensors sharing memory; a private contiguous copy of each is always accepted.
    seen: set[int] = set()
    tensors = {}
    for key, value in state.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        tensors[key] = value.clone().contiguous() if ptr in seen or not value.is_contiguous() else value
        seen.add(ptr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A recognisable temporary name: if this process is killed mid-write, the next open removes it.
    with _files.temporary(dest) as tmp:
        save_file(tensors, str(tmp), metadata={"converted_from": src.name, "format": "pt"})
        os.replace(tmp, dest)
    return dest


# ------------------------------------------------------------------------------------------- library

_cleaned: set[Path] = set()
_cleaned_lock = threading.Lock()


def _clean_once(root: Path) -> None:
    """Remove partial files that killed processes left in the models folder, once per process."""
    key = Path(os.path.abspath(root))
    with _cleaned_lock:
        if key in _cleaned:
            return
        _cleaned.add(key)
    _files.clean_orphans(root)


class ModelLibrary:
    """The index of the user's models. Cheap to create; reads ``library.json`` on each call so a CLI
    and the app can share one folder."""

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            from ipa_studio.core.settings import default_models_dir

            root = os.environ.get("IPA_STUDIO_MODELS") or default_models_dir()
        self.root = Path(root).expanduser()
        _clean_once(self.root)

    # ---------------------------------------------------------------- index I/O
    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def _damaged(self, why: str) -> LibraryError:
        return LibraryError(
            f"The model library index '{self.index_path}' is damaged ({why}). Move it away and run "
            "'ipa-studio models list' to rebuild it from the files."
        )

    def _read(self) -> dict[str, Any]:
        special = _files.special_file_kind(self.index_path)
        if special is not None:
            raise self._damaged(f"it is {special}, not a file")
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": INDEX_VERSION, "folders": [], "hidden": [], "entries": []}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise self._damaged(str(exc) or type(exc).__name__) from exc
        if not isinstance(data, dict):
            raise self._damaged(f"it holds {_json_type(data)} instead of a table")
        for key in ("folders", "hidden", "entries"):
            value = data.setdefault(key, [])
            if not isinstance(value, list):
                raise self._damaged(f"its '{key}' is {_json_type(value)}, not a list")
            if key != "entries" and not all(isinstance(v, str) for v in value):
                raise self._damaged(f"its '{key}' list holds something other than paths")
        for number, raw in enumerate(data["entries"], start=1):
            try:
                LibraryEntry.from_json(raw)
            except ValueError as exc:
                label = raw.get("name") if isinstance(raw, dict) else None
                which = f"'{label}'" if isinstance(label, str) else f"number {number}"
                raise self._damaged(f"entry {which}: {exc}") from None
        return data

    def _write(self, data: dict[str, Any]) -> None:
        data["version"] = INDEX_VERSION
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        try:
            _atomic_write_text(self.index_path, text)
        except OSError as exc:
            raise _write_failed(exc, "write the library index (it is unchanged)", self.root) from exc

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Any]]:
        """The index, read fresh under the library's lock and written back when the block ends
        without an error. Keep the block short: other processes wait for it."""
        lock = _files.FileLock.on(self.root / LOCK_NAME)
        try:
            with lock:
                data = self._read()
                yield data
                self._write(data)
        except _files.LockTimeout:
            raise LibraryError(
                f"The model library in '{self.root}' is busy: another IPA Studio has been changing it "
                f"for over {lock.timeout:.0f} seconds. Try again when it is done."
            ) from None
        except OSError as exc:  # the lock file itself could not be made (read-only folder …)
            raise _write_failed(exc, "change the model library", self.root) from exc

    def _entries(self, data: Mapping[str, Any]) -> list[LibraryEntry]:
        return [LibraryEntry.from_json(e) for e in data["entries"]]

    # ---------------------------------------------------------------- queries
    def entries(self, kind: str | None = None, *, usable_only: bool = False) -> list[LibraryEntry]:
        """The library's entries (as indexed; call ``refresh`` to pick up files added by hand)."""
        out = self._entries(self._read())
        if kind is not None:
            out = [e for e in out if e.kind == kind]
        if usable_only:
            out = [e for e in out if e.usable]
        return sorted(out, key=lambda e: (e.kind, e.name.lower()))

    def get(self, name: str) -> LibraryEntry:
        for entry in self._entries(self._read()):
            if entry.name == name:
                return entry
        known = ", ".join(e.name for e in self._entries(self._read())) or "none yet"
        raise LibraryError(f"There is no model called '{name}' in the library (models: {known}).")

    def find_path(self, path: str | Path) -> LibraryEntry | None:
        path = Path(path).expanduser().resolve()
        for entry in self._entries(self._read()):
            if entry.path.resolve() == path:
                return entry
        return None

    def folders(self) -> list[Path]:
        """The models folder first, then the extra folders the user added."""
        return [self.root, *(Path(f) for f in self._read()["folders"])]

    @staticmethod
    def inspect(path: str | Path) -> Detection:
        """What a file or folder is, before adding it (no weights are read for ``.safetensors``)."""
        return detect(Path(path).expanduser())

    def image_encoder_for(self, adapter: LibraryEntry | str | Path) -> LibraryEntry:
        """The usable image encoder whose feature width the adapter reads (ViT-H for SD1.5 adapters).

        Raises ``LibraryError`` naming the encoder to get when none fits.
        """
        if isinstance(adapter, LibraryEntry):
            details = adapter.details
            label = adapter.name
        else:
            found = self.find_path(adapter)
            details = found.details if found else detect(Path(adapter)).details
            label = Path(adapter).name
        width, hidden = details.get("encoder_width"), details.get("uses_hidden_states")
        if width is None:
            raise LibraryError(f"'{label}' is not an IP-Adapter, so it has no image encoder.")
        key = "hidden_size" if hidden else "projection_dim"
        fits = [e for e in self.entries("image_encoder", usable_only=True) if e.details.get(key) == width]
        if not fits:
            encoder = details.get("encoder")
            need = f"the {encoder} image encoder" if encoder else "an image encoder"
            hint = " ('image-encoder-vit-h-14' in the catalog)" if encoder == "ViT-H/14" else ""
            raise LibraryError(
                f"'{label}' needs {need}{hint}; the library has no usable image encoder whose "
                f"{'hidden size' if hidden else 'embedding'} is {width} wide. Add it first."
            )
        # A catalog download first: it is the exact encoder the official adapters were trained with.
        fits.sort(key=lambda e: (e.source.type != "catalog", e.name))
        return fits[0]

    # ---------------------------------------------------------------- changes
    def _unique_name(self, wanted: str, taken: Iterable[str]) -> str:
        taken = set(taken)
        name, n = wanted, 2
        while name in taken:
            name, n = f"{wanted}-{n}", n + 1
        return name

    def _entry_for(
        self,
        path: Path,
        source: Source,
        name: str,
        *,
        hash_files: bool,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        detection: Detection | None = None,
    ) -> LibraryEntry:
        found = detection or detect(path)
        sha = sha256_of(path, on_progress, should_cancel) if hash_files and found.kind != "invalid" else None
        return LibraryEntry(
            name=name,
            # The folders resolved, the name kept: a linked file (the Hugging Face cache's snapshots
            # link to content-named blobs) keeps the name and suffix that say what it is.
            path=path.parent.resolve() / path.name,
            kind=found.kind,
            architecture=found.architecture,
            usable=found.usable,
            reason=found.reason,
            format=found.format,
            size_bytes=found.size_bytes,
            sha256=sha,
            source=source,
            added=_now(),
            details={k: v for k, v in found.details.items()},
            owned=_is_within(path, self.root),
        )

    def _store(self, entry: LibraryEntry) -> LibraryEntry:
        with self._changing() as data:
            entries = [e for e in self._entries(data) if e.path.resolve() != entry.path.resolve()]
            name = self._unique_name(entry.name, (e.name for e in entries))
            entry = dataclasses.replace(entry, name=name)
            data["entries"] = [e.to_json() for e in [*entries, entry]]
            data["hidden"] = [h for h in data["hidden"] if Path(h) != entry.path]
        return entry

    def _place(self, tmp: Path, target: Path) -> None:
        """Give a finished temporary file its name, unless another process took the name meanwhile."""
        with self._changing():
            if target.exists() or target.is_symlink():
                raise LibraryError(f"'{target}' already exists in the models folder.")
            os.replace(tmp, target)

    def add(
        self,
        source: str | Path,
        *,
        name: str | None = None,
        copy: bool = False,
        convert: bool = False,
        hash_files: bool = True,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        endpoint: str | None = None,
    ) -> LibraryEntry:
        """Add a file, a folder, a catalog name or a Hugging Face repo id; return the new entry.

        Local files are referenced where they are unless ``copy`` (copied into the models folder).
        ``convert``: a pickle (``.ckpt`` / ``.bin``) is written once as ``.safetensors`` into the
        models folder and the entry points at that (the original is left alone). Catalog names and
        repo ids (``owner/repo`` or ``owner/repo/path/in/repo.safetensors``) are downloaded into the
        models folder. Models that cannot be used are still added, with the reason.
        """
        text = str(source)
        local = Path(text).expanduser()
        if local.exists():
            return self._add_local(local, name, copy, convert, hash_files, on_progress, should_cancel)
        if any(e.name == text for e in _catalog.CATALOG):
            return self.download(_catalog.find(text), name, on_progress, should_cancel, endpoint)
        if _REPO_ID.match(text) and not text.startswith((".", "/", "~")):
            return self._add_repo(text, name, on_progress, should_cancel, endpoint)
        raise LibraryError(
            f"'{text}' is neither a file or folder on this computer, nor a catalog name, nor a Hugging "
            "Face repo id (owner/name)."
        )

    def _add_local(
        self,
        path: Path,
        name: str | None,
        copy: bool,
        convert: bool,
        hash_files: bool,
        on_progress: ProgressFn | None,
        should_cancel: CancelFn | None,
    ) -> LibraryEntry:
        special = _files.special_file_kind(path)
        if special is not None:
            raise LibraryError(f"'{path}' is {special}, not a model file or folder.")
        if path.resolve() == self.root.resolve():
            raise LibraryError(
                f"'{path}' is the models folder itself, not a model. Add the model files or folders in it "
                "(or run 'ipa-studio models list', which finds them)."
            )
        found = detect(path)
        origin = Source("folder" if path.is_dir() else "file", str(path.resolve()))
        target = path
        if convert and path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES:
            if found.kind == "invalid":
                raise ModelFileError(f"'{path.name}' cannot be converted: {found.reason}.")
            target = self.root / (path.stem + SAFETENSORS_SUFFIX)
            if target.exists():
                raise LibraryError(f"'{target}' already exists; remove it first or add without converting.")
            self._write_into_root(target, lambda tmp: convert_to_safetensors(path, tmp), "convert it")
            origin = dataclasses.replace(origin, converted_from=str(path.resolve()))
            found = None
        elif copy and not _is_within(path, self.root):
            if path.is_dir() and _is_within(self.root, path):
                raise LibraryError(
                    f"'{path}' holds the models folder itself; copying it there would never end."
                )
            target = self.root / path.name
            if target.exists():
                raise LibraryError(f"'{target}' already exists in the models folder.")
            copier = shutil.copytree if path.is_dir() else shutil.copy2
            self._write_into_root(target, lambda tmp: copier(path, tmp), "copy it")
            found = None
        entry = self._entry_for(
            target,
            origin,
            name or (path.stem if path.is_file() else path.name),
            hash_files=hash_files,
            on_progress=on_progress,
            should_cancel=should_cancel,
            detection=found,
        )
        return self._store(entry)

    def _write_into_root(self, target: Path, write: Callable[[Path], Any], what: str) -> None:
        """Write ``target`` in the models folder through a temporary file (or folder) that is removed
        on any failure, named so that the next open removes it if this process is killed."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with _files.temporary(target) as tmp:
                write(tmp)
                self._place(tmp, target)
        except IPAStudioError:
            raise
        except Exception as exc:
            if _os_error(exc) is None:
                raise
            raise _write_failed(exc, what, self.root) from exc

    def download(
        self,
        item: _catalog.CatalogEntry,
        name: str | None = None,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
        endpoint: str | None = None,
        *,
        source: Source | None = None,
    ) -> LibraryEntry:
        """Download a catalog entry into the models folder (resumable) and add it."""
        from ipa_studio.core.models.download import download_entry

        path = download_entry(item, self.root, on_progress, should_cancel, endpoint)
        src = source or Source("catalog", item.name)
        # download_entry already checked every LFS file's sha256; hash the result for `verify`.
        return self._store(self._entry_for(path, src, name or item.name, hash_files=True))

    def _add_repo(
        self,
        ref: str,
        name: str | None,
        on_progress: ProgressFn | None,
        should_cancel: CancelFn | None,
        endpoint: str | None,
    ) -> LibraryEntry:
        from ipa_studio.core.models.download import list_repo_files

        owner, repo, *rest = ref.split("/", 2)
        repo_id = f"{owner}/{repo}"
        files = {f.path: f for f in list_repo_files(repo_id, endpoint=endpoint)}
        if rest:
            wanted = rest[0]
            chosen = [p for p in files if p == wanted or p.startswith(wanted.rstrip("/") + "/")]
            if not chosen:
                raise LibraryError(f"'{wanted}' is not in the repo '{repo_id}'.")
        else:
            chosen = _pick_repo_files(repo_id, files)
        kind = "base" if "model_index.json" in chosen else "adapter"
        label = name or (Path(chosen[0]).stem if len(chosen) == 1 else repo.replace("/", "-"))
        item = _catalog.CatalogEntry(
            name=label,
            kind=kind,  # type: ignore[arg-type]
            repo_id=repo_id,
            files=tuple(sorted(chosen)),
            size_bytes=sum(files[p].size for p in chosen),
            description=f"{ref} from the Hugging Face hub",
            sha256={p: files[p].sha256 for p in chosen if files[p].sha256} or None,
            size_approximate=False,
        )
        return self.download(item, name, on_progress, should_cancel, endpoint, source=Source("hub", ref))

    def deletable(self, path: str | Path) -> str | None:
        """Why ``remove`` would not delete ``path``, or None when it lies inside this library's models
        folder (judged from the resolved path now, symlinks followed, never from the index)."""
        path = Path(path)
        root = self.root.resolve()
        # A symlink is judged (and deleted) as the link itself: where it points stays untouched.
        where = path.parent.resolve() / path.name if path.is_symlink() else path.resolve()
        if where == root:
            return "it is the models folder itself"
        try:
            where.relative_to(root)
        except ValueError:
            return f"it is outside the models folder '{self.root}'"
        if where in (root / INDEX_NAME, root / LOCK_NAME):
            return "it is the library's own index"
        return None

    def remove(self, name: str, *, delete_files: bool | None = None) -> LibraryEntry:
        """Take an entry out of the library. Its files are deleted when they lie inside the models
        folder, unless ``delete_files`` is False; files anywhere else are never deleted (asking for it
        raises ``LibraryError`` before anything changes) and stay hidden from later scans."""
        with self._changing() as data:
            entries = self._entries(data)
            entry = next((e for e in entries if e.name == name), None)
            if entry is None:
                raise LibraryError(f"There is no model called '{name}' in the library.")
            refusal = self.deletable(entry.path)
            if delete_files and refusal is not None:
                raise LibraryError(
                    f"'{name}' was not removed: IPA Studio deletes only files inside its models folder, "
                    f"and {entry.path} is not one ({refusal}). Delete it yourself, or remove the entry "
                    "without deleting files."
                )
            delete = refusal is None and delete_files is not False
            data["entries"] = [e.to_json() for e in entries if e.name != name]
            if not delete:
                data["hidden"] = sorted({*data["hidden"], str(entry.path)})
        if delete:
            path = entry.path
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)  # does not follow symlinks inside the folder
        return entry

    def add_folder(self, folder: str | Path) -> list[LibraryEntry]:
        """Also look for models in ``folder`` (kept in the index); returns what it found there."""
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise LibraryError(f"'{folder}' is not a folder.")
        with self._changing() as data:
            if str(folder) not in data["folders"]:
                data["folders"].append(str(folder))
        return [e for e in self.refresh(hash_new=False) if _found_in(e, folder)]

    def remove_folder(self, folder: str | Path) -> None:
        folder = Path(folder).expanduser().resolve()
        with self._changing() as data:
            data["folders"] = [f for f in data["folders"] if Path(f) != folder]
            data["entries"] = [
                e.to_json()
                for e in self._entries(data)
                if not (e.source.type == "scan" and _found_in(e, folder))
            ]

    def refresh(self, *, hash_new: bool = True, should_cancel: CancelFn | None = None) -> list[LibraryEntry]:
        """Re-scan the folders: add models found there, drop scanned entries whose files are gone,
        re-detect entries whose files changed. Returns all entries.

        Detection and hashing run on a snapshot without the lock; the results are merged into the
        index as it is then, so entries others added or removed meanwhile are kept as they are."""
        _files.clean_orphans(self.root)
        snapshot = self._read()
        known = {e.path.resolve(): e for e in self._entries(snapshot)}
        hidden = {Path(h).resolve() for h in snapshot["hidden"]}
        updated: dict[Path, tuple[LibraryEntry, LibraryEntry]] = {}  # path → (as read, as now)
        for path, entry in known.items():
            if not path.exists() and entry.source.type != "scan":
                new = dataclasses.replace(entry, usable=False, reason="its file is missing")
            elif path.exists() and _disk_size(path) != entry.size_bytes:
                found = detect(path)
                new = dataclasses.replace(
                    entry,
                    kind=found.kind,
                    architecture=found.architecture,
                    usable=found.usable,
                    reason=found.reason,
                    size_bytes=found.size_bytes,
                    sha256=None,
                    details=dict(found.details),
                )
            elif path.exists() and entry.reason == "its file is missing":
                found = detect(path)
                new = dataclasses.replace(entry, usable=found.usable, reason=found.reason)
            else:
                continue
            updated[path] = (entry, new)
        found_new: dict[Path, LibraryEntry] = {}
        for folder in [self.root, *(Path(f) for f in snapshot["folders"])]:
            if not folder.is_dir():
                continue
            # Every model below the folder, in the places its install keeps them (scan.py).
            for found in find_models(folder, should_cancel=should_cancel):
                resolved = found.path.resolve()
                if resolved in known or resolved in hidden or resolved in found_new:
                    continue
                found_new[resolved] = self._entry_for(
                    found.path, Source("scan", str(found.path)), found.name, hash_files=hash_new
                )
        with self._changing() as data:
            current = {e.path.resolve(): e for e in self._entries(data)}
            now_hidden = {Path(h).resolve() for h in data["hidden"]}
            kept: dict[Path, LibraryEntry] = {}
            for path, entry in current.items():
                if entry.source.type == "scan" and not path.exists():
                    continue  # the file went away; it was only ever found by scanning
                before, after = updated.get(path, (None, None))
                kept[path] = after if before == entry and after is not None else entry
            for path, entry in found_new.items():
                if path in kept or path in now_hidden or not path.exists():
                    continue
                name = self._unique_name(entry.name, (e.name for e in kept.values()))
                kept[path] = dataclasses.replace(entry, name=name)
            data["entries"] = [e.to_json() for e in kept.values()]
        return self.entries()

    def verify(
        self,
        names: Iterable[str] | None = None,
        *,
        on_progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> list[VerifyResult]:
        """Check that each entry's files are still there, unchanged (size, sha256) and readable.

        The first verify of an entry added without a hash records its sha256 — into the index as it is
        when hashing ends, so entries added meanwhile are kept."""
        entries = self.entries()
        if names is not None:
            wanted = set(names)
            unknown = wanted - {e.name for e in entries}
            if unknown:
                raise LibraryError(f"No model called {', '.join(sorted(unknown))} in the library.")
            entries = [e for e in entries if e.name in wanted]
        results = []
        hashed: dict[tuple[str, str], str] = {}  # (name, path) → sha256, for entries that had none
        for entry in entries:
            problems: list[str] = []
            if not entry.path.exists():
                problems.append(f"its file is missing: {entry.path}")
            else:
                found = detect(entry.path)
                if found.kind == "invalid":
                    problems.append(found.reason or "it cannot be read")
                if found.size_bytes != entry.size_bytes:
                    problems.append(f"its size changed ({entry.size_bytes} → {found.size_bytes} bytes)")
                if found.kind != "invalid":
                    digest = sha256_of(entry.path, on_progress, should_cancel)
                    if entry.sha256 is None:
                        hashed[(entry.name, str(entry.path))] = digest
                    elif digest != entry.sha256:
                        problems.append("its contents changed (sha256 differs from when it was added)")
            results.append(VerifyResult(entry.name, not problems, tuple(problems)))
        if hashed:
            with contextlib.suppress(LibraryError), self._changing() as data:
                for raw in data["entries"]:
                    digest = hashed.get((raw["name"], raw["path"]))
                    if digest is not None and raw.get("sha256") is None:
                        raw["sha256"] = digest
        return results


def _pick_repo_files(repo_id: str, files: Mapping[str, Any]) -> list[str]:
    """The files to fetch from a repo given without a file: a diffusers SD folder, or its one weight file."""
    if "model_index.json" in files:
        chosen = ["model_index.json"]
        for part in ("unet", "vae", "text_encoder"):
            # Plain weights first, then the variant files most hub repos hold instead (the loader
            # reads them with variant="fp16"), safetensors before pickles.
            options = [
                f"{part}/{stem}{infix}{suffix}"
                for suffix in (".safetensors", ".bin")
                for infix in ("", ".fp16", ".bf16")
                for stem in ("diffusion_pytorch_model", "model", "pytorch_model")
            ]
            weights = next((o for o in options if o in files), None)
            if weights is None:
                raise LibraryError(f"'{repo_id}' has no {part} weights in a format IPA Studio reads.")
            chosen += [f"{part}/config.json", weights]
        chosen += [p for p in files if p.startswith(("tokenizer/", "scheduler/"))]
        return chosen
    weights = [p for p in files if p.endswith(SAFETENSORS_SUFFIX) and "/" not in p]
    if len(weights) == 1:
        return weights
    names = ", ".join(sorted(p for p in files if p.endswith(MODEL_SUFFIXES))[:8]) or "none"
    raise LibraryError(
        f"'{repo_id}' is not a diffusers model folder and has no single weight file at its top; name the "
        f"file, e.g. '{repo_id}/<file>.safetensors'. Weight files there: {names}."
    )
