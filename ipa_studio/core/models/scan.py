"""Finding the models in folders people already have: ComfyUI, A1111 / Forge, InvokeAI, the Hugging
Face cache, IPA Studio's own models folder, or any folder.

``find_models(folder)`` walks a folder and returns the model files and model folders in it, in place
(nothing is copied or renamed), without reading any weights: which *kind* each one is, and whether IPA
Studio can run it, is ``detect``'s job. It knows the layouts of the big installs so it looks only where
they keep models (not in their outputs, virtual environments or custom-node code) and names what it
finds after the folder people know:

* ComfyUI (its ``folder_paths.py``): ``models/checkpoints``, ``models/diffusers``, ``models/loras``,
  ``models/controlnet``, ``models/clip_vision``, ``models/embeddings``, ``models/vae``, and
  ``models/ipadapter`` (registered by ComfyUI_IPAdapter_plus);
* A1111 / Forge: ``models/Stable-diffusion``, ``models/Lora``, ``models/LyCORIS``,
  ``models/ControlNet``, ``models/VAE``, ``models/ipadapter``, ``embeddings/`` and each extension's
  ``models/`` (``extensions/sd-webui-controlnet/models``);
* InvokeAI: its ``models/`` folder (``models/<base>/<type>/…``: ``sd-1/main``, ``sd-1/lora`` …);
* the Hugging Face cache (huggingface_hub's cache layout):
  ``models--owner--name/snapshots/<revision>/…``, the snapshot ``refs/main`` names, as ``owner/name``;
* anything else: every weight file and model folder below it.

Symbolic links are followed (models are often linked between installs), each real folder once, so a
link loop cannot make a scan run forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ipa_studio.core.errors import Cancelled
from ipa_studio.core.settings import PORTABLE_MARKER as IPA_STUDIO_MARKER

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MAX_DEPTH = 8
# Folders that hold no models in any install, and can be huge.
_NEVER = {
    ".git",
    "__pycache__",
    "node_modules",
    "venv",
    ".venv",
    "env",
    "blobs",  # Hugging Face cache: content-addressed copies of the snapshot files
    ".locks",
    "output",
    "outputs",
    "input",
    "temp",
    "tmp",
    "annotators",  # pose / depth preprocessor weights (IPA Studio's, sd-webui-controlnet's)
}

# (install, folder relative to its root, the kind people store there)
COMFYUI_FOLDERS = (
    ("models/checkpoints", "base"),
    ("models/diffusers", "base"),
    ("models/loras", "lora"),
    ("models/controlnet", "controlnet"),
    ("models/clip_vision", "image_encoder"),
    ("models/ipadapter", "adapter"),
    ("models/embeddings", "embedding"),
    ("models/vae", "vae"),
)
A1111_FOLDERS = (
    ("models/Stable-diffusion", "base"),
    ("models/Lora", "lora"),
    ("models/LyCORIS", "lora"),
    ("models/ControlNet", "controlnet"),
    ("models/VAE", "vae"),
    ("models/ipadapter", "adapter"),
    ("embeddings", "embedding"),
)
# IPA Studio's own default layout (the repository's models/ folder), named like ComfyUI's.
IPA_STUDIO_FOLDERS = (
    ("checkpoints", "base"),
    ("ipadapter", "adapter"),
    ("clip_vision", "image_encoder"),
    ("controlnet", "controlnet"),
    ("loras", "lora"),
    ("embeddings", "embedding"),
    ("vae", "vae"),
)

CancelFn = Callable[[], bool]


@dataclass(frozen=True)
class Install:
    """What a folder is: which program's models live there, and where exactly."""

    name: str
    """"ComfyUI", "A1111 / Forge", "InvokeAI", "Hugging Face cache", "IPA Studio" or "folder"."""
    root: Path
    folders: tuple[tuple[Path, str | None], ...]
    """(folder to walk, the kind people keep there or None)."""


@dataclass(frozen=True)
class Found:
    path: Path
    """The file or folder, where it is (a link keeps its own name)."""
    name: str
    """A name for the library: the file's stem, a folder's name, or ``owner/name`` in the HF cache."""
    install: str
    folder_kind: str | None
    """The kind of the folder it was found in (``loras`` → "lora"), None outside known folders."""


# -------------------------------------------------------------------------------------- layouts


def recognise(folder: str | Path) -> Install:
    """Which install ``folder`` is (its root, or its ``models`` folder), and where its models are."""
    folder = Path(folder).expanduser()
    if (folder / IPA_STUDIO_MARKER).is_file():
        return _install("IPA Studio", folder, IPA_STUDIO_FOLDERS, include_root=True)
    for root in (folder, folder.parent):
        if (root / "models" / "checkpoints").is_dir() and (
            (root / "comfy").is_dir() or (root / "models" / "clip_vision").is_dir()
        ):
            return _install("ComfyUI", root, COMFYUI_FOLDERS)
        if (root / "models" / "Stable-diffusion").is_dir():
            folders = [*A1111_FOLDERS]
            extensions = root / "extensions"
            if extensions.is_dir():
                folders += [
                    (str(e.relative_to(root) / "models"), "controlnet")
                    for e in sorted(extensions.iterdir())
                    if (e / "models").is_dir()
                ]
            return _install("A1111 / Forge", root, tuple(folders))
        if (root / "invokeai.yaml").is_file() or (root / "models" / "sd-1").is_dir():
            return Install("InvokeAI", root, ((root / "models", None),))
    if any(folder.glob("models--*--*")):
        return Install("Hugging Face cache", folder, ((folder, None),))
    if (folder / "hub").is_dir() and any((folder / "hub").glob("models--*")):
        return Install("Hugging Face cache", folder / "hub", ((folder / "hub", None),))
    return Install("folder", folder, ((folder, None),))


def _install(
    name: str, root: Path, folders: tuple[tuple[str, str], ...], *, include_root: bool = False
) -> Install:
    found: list[tuple[Path, str | None]] = [
        (root / rel, kind) for rel, kind in folders if (root / rel).is_dir()
    ]
    if include_root:
        found.append((root, None))  # files left at the top (downloads) count too
    return Install(name, root, tuple(found))


# -------------------------------------------------------------------------------------- walking


def find_models(folder: str | Path, *, should_cancel: CancelFn | None = None) -> list[Found]:
    """Every model file and model folder in ``folder`` (see the module docstring), in name order."""
    install = recognise(folder)
    seen_dirs: set[Path] = set()
    seen: set[Path] = set()
    out: list[Found] = []
    known = {p.resolve() for p, _ in install.folders if p != install.root}
    # A link back up (to the install or its models folder) must not lead into the folders the
    # install keeps other things in.
    above = {install.root.resolve(), (install.root / "models").resolve()}
    for base, kind in install.folders:
        if install.name == "Hugging Face cache":
            walker = _hf_cache(base, seen_dirs, should_cancel)
        else:
            # The root of IPA Studio's folder is walked last and without its kind folders again.
            skip = known if base == install.root else above - {base.resolve()}
            walker = _walk(base, 0, seen_dirs, skip, should_cancel)
        for path, name in walker:
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            out.append(Found(path, name, install.name, kind))
    return sorted(out, key=lambda f: (str(f.path.parent), f.name.lower()))


def _check(should_cancel: CancelFn | None) -> None:
    if should_cancel is not None and should_cancel():
        raise Cancelled("Scan cancelled.")


def is_model_folder(path: Path) -> bool:
    """A folder that is one model: a diffusers pipeline, or a component with its config (an image
    encoder, a ControlNet). One whose weights are missing still counts, so it is listed with that
    reason rather than silently skipped."""
    return any((path / name).is_file() for name in ("model_index.json", "config.json", "unet/config.json"))


def is_weight_file(path: Path) -> bool:
    return path.suffix.lower() in WEIGHT_SUFFIXES and not path.name.startswith(".")


def _walk(
    folder: Path, depth: int, seen_dirs: set[Path], skip: set[Path], should_cancel: CancelFn | None
) -> Iterator[tuple[Path, str]]:
    _check(should_cancel)
    try:
        real = folder.resolve()
        if real in seen_dirs or real in skip or depth > MAX_DEPTH:
            return
        seen_dirs.add(real)
        children = sorted(folder.iterdir(), key=lambda p: p.name.lower())
    except OSError:  # unreadable folder or a dangling link: nothing to list there
        return
    for child in children:
        if child.name.startswith(".") or child.name in _NEVER:
            continue
        try:
            is_dir, is_file = child.is_dir(), child.is_file()
        except OSError:
            continue
        if is_dir:
            if is_model_folder(child):
                yield child, child.name
            else:
                yield from _walk(child, depth + 1, seen_dirs, skip, should_cancel)
        elif is_file and is_weight_file(child) and not _is_part_of_folder_model(child):
            yield child, child.stem


def _is_part_of_folder_model(path: Path) -> bool:
    # A weights file of a diffusers/transformers folder found on its own (the walk never enters model
    # folders, but a link may point straight at one).
    return (path.parent / "config.json").is_file() and path.stem.split(".")[0] in (
        "diffusion_pytorch_model",
        "model",
        "pytorch_model",
    )


def _hf_cache(hub: Path, seen_dirs: set[Path], should_cancel: CancelFn | None) -> Iterator[tuple[Path, str]]:
    for repo in sorted(hub.glob("models--*")):
        _check(should_cancel)
        snapshot = _newest_snapshot(repo)
        if snapshot is None:
            continue
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        if is_model_folder(snapshot):
            yield snapshot, repo_id
            continue
        short = repo_id.split("/", 1)[-1]
        for path, name in _walk(snapshot, 0, seen_dirs, set(), should_cancel):
            rel = path.relative_to(snapshot).as_posix()
            yield path, f"{short}/{rel}" if path.is_dir() else name


def _newest_snapshot(repo: Path) -> Path | None:
    """The snapshot ``refs/main`` points at, else the most recently changed one."""
    snapshots = repo / "snapshots"
    try:
        ref = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        ref = ""
    if ref and (snapshots / ref).is_dir():
        return snapshots / ref
    try:
        candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)
