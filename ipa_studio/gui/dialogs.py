"""File dialogs that open where the person was last time, for each kind of file.

References tend to live in one folder, poses in another, models in a third: every dialog remembers
the folder it was last used in, by kind ("reference", "mask", "model file" …), across restarts (the
window binds the settings' ``dialog_folders`` here). A kind never used yet starts where such files
usually are: pictures in the Pictures folder, models in the models folder.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QStandardPaths
from PySide6.QtWidgets import QFileDialog, QWidget

_folders: dict[str, str] = {}


def bind(folders: dict[str, str]) -> None:
    """Remember folders in ``folders`` (the settings' dict, saved with them) from now on."""
    global _folders
    _folders = folders


def folder_for(kind: str, fallback: str | Path | None = None) -> str:
    """Where a dialog of ``kind`` opens: the folder used last, else ``fallback``, else Pictures."""
    remembered = _folders.get(kind, "")
    if remembered and Path(remembered).is_dir():
        return remembered
    if fallback and Path(fallback).expanduser().exists():
        return str(Path(fallback).expanduser())
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    return pictures if pictures and Path(pictures).is_dir() else str(Path.home())


def _remember(kind: str, chosen: str, *, is_folder: bool = False) -> None:
    if chosen:
        path = Path(chosen)
        _folders[kind] = str(path if is_folder else path.parent)


def open_file(
    parent: QWidget, kind: str, title: str, filters: str, fallback: str | Path | None = None
) -> str:
    path, _ = QFileDialog.getOpenFileName(parent, title, folder_for(kind, fallback), filters)
    _remember(kind, path)
    return path


def open_files(
    parent: QWidget, kind: str, title: str, filters: str, fallback: str | Path | None = None
) -> list[str]:
    paths, _ = QFileDialog.getOpenFileNames(parent, title, folder_for(kind, fallback), filters)
    if paths:
        _remember(kind, paths[0])
    return list(paths)


def open_folder(
    parent: QWidget,
    kind: str,
    title: str,
    fallback: str | Path | None = None,
    *,
    current: str | Path | None = None,
) -> str:
    """A folder chosen by the person; the next dialog of ``kind`` opens where it lies.

    ``current``: the folder a setting names now ("where pictures are saved"), shown first.
    """
    start = str(current) if current and Path(current).is_dir() else folder_for(kind, fallback)
    path = QFileDialog.getExistingDirectory(parent, title, start)
    if path:
        _folders[kind] = str(Path(path).parent)
    return path


def save_file(
    parent: QWidget, kind: str, title: str, name: str, filters: str, fallback: str | Path | None = None
) -> str:
    """A file name to save under, offered as ``name`` in the folder of ``kind``."""
    start = str(Path(folder_for(kind, fallback)) / name)
    path, _ = QFileDialog.getSaveFileName(parent, title, start, filters)
    _remember(kind, path)
    return path
