"""History: every image made, newest first, as a strip of thumbnails under the large view."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QKeyEvent, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem, QMenu, QWidget

from ipa_studio.gui.loader import ImageLoader
from ipa_studio.gui.qimage import thumbnail
from ipa_studio.gui.worker import THUMBNAIL_SIZE, SavedImage

ICON = 112
PATH_ROLE = Qt.ItemDataRole.UserRole
HISTORY_LIMIT = 1000
"""Older images stay on disk and in the folder; the strip shows the most recent ones."""


def _history_thumbnail(path: str) -> QImage:
    return thumbnail(QImage(path), THUMBNAIL_SIZE)


def _untinted(pixmap: QPixmap) -> QIcon:
    """An icon that looks the same selected: by default Qt tints a selected icon with the highlight
    colour, and an artist judges the colours of a picture on its thumbnail."""
    icon = QIcon()
    for mode in (QIcon.Mode.Normal, QIcon.Mode.Selected, QIcon.Mode.Active):
        icon.addPixmap(pixmap, mode)
    return icon


class GalleryPanel(QListWidget):
    """Emits ``current_changed(path or None)`` and one signal per action on an image."""

    current_changed = Signal(object)
    reuse_requested = Signal(object)
    reference_requested = Signal(object)
    copy_requested = Signal(object)
    delete_requested = Signal(object)
    open_folder_requested = Signal()

    def __init__(self, loader: ImageLoader, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("gallery")
        self.loader = loader
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListWidget.Movement.Static)
        self.setIconSize(QSize(ICON, ICON))
        self.setGridSize(QSize(ICON + 12, ICON + 12))
        self.setUniformItemSizes(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setFixedHeight(ICON + 34)
        self.setToolTip(
            "Every picture you made, newest first. Click to view; right-click to reuse its settings, "
            "use it as a reference, copy it, delete it (Delete key) or open its folder."
        )
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.currentItemChanged.connect(lambda item, _prev: self.current_changed.emit(self.path_of(item)))
        loader.loaded.connect(self._on_loaded)
        blank = QPixmap(ICON, ICON)
        blank.fill(QColor(52, 52, 56))
        self._placeholder = _untinted(blank)

    # ------------------------------------------------------------------ content
    def add_saved(self, saved: SavedImage, *, select: bool = True) -> QListWidgetItem:
        item = self._item(saved.path, _untinted(QPixmap.fromImage(saved.thumbnail)))
        self.insertItem(0, item)
        if select:
            self.setCurrentItem(item)
            self.scrollToItem(item)
        return item

    def load_history(self, folder: Path) -> int:
        """Show the PNGs already in ``folder`` (thumbnails arrive from the loader thread)."""
        self.clear()
        try:
            files = sorted(
                (p for p in folder.glob("*.png") if p.is_file()),
                key=lambda p: p.stat().st_mtime,
                reverse=True,
            )[:HISTORY_LIMIT]
        except OSError:
            files = []
        for path in files:
            self.addItem(self._item(path, self._placeholder))
            self.loader.load(
                ("history", str(path)), lambda p=str(path): _history_thumbnail(p), "reading the history"
            )
        return len(files)

    def _item(self, path: Path, icon: QIcon) -> QListWidgetItem:
        item = QListWidgetItem(icon, "")
        item.setData(PATH_ROLE, str(path))
        item.setToolTip(Path(path).name)
        item.setSizeHint(QSize(ICON + 8, ICON + 8))
        return item

    def _on_loaded(self, key: object, image: QImage, error: str) -> None:
        if not (isinstance(key, tuple) and key[0] == "history") or image.isNull():
            return
        for row in range(self.count()):
            item = self.item(row)
            if item.data(PATH_ROLE) == key[1]:
                item.setIcon(_untinted(QPixmap.fromImage(image)))
                break

    def paths(self) -> list[Path]:
        return [Path(self.item(row).data(PATH_ROLE)) for row in range(self.count())]

    @staticmethod
    def path_of(item: QListWidgetItem | None) -> Path | None:
        return Path(item.data(PATH_ROLE)) if item is not None else None

    def current_path(self) -> Path | None:
        return self.path_of(self.currentItem())

    def row_of(self, path: Path | str) -> int:
        """The row showing ``path``, or -1."""
        wanted = str(path)
        return next((row for row in range(self.count()) if self.item(row).data(PATH_ROLE) == wanted), -1)

    def remove_path(self, path: Path | str) -> None:
        """Take ``path`` out of the strip; the next picture (or the previous one) becomes current."""
        row = self.row_of(path)
        if row < 0:
            return
        was_current = row == self.currentRow()
        self.takeItem(row)
        if was_current and self.count():
            self.setCurrentRow(min(row, self.count() - 1))

    # ------------------------------------------------------------------ actions
    def _menu(self, pos: QPoint) -> None:
        item = self.itemAt(pos)
        if item is None:
            return
        path = self.path_of(item)
        menu = QMenu(self)
        menu.addAction("Reuse these settings", lambda: self.reuse_requested.emit(path))
        menu.addAction("Use as reference image", lambda: self.reference_requested.emit(path))
        menu.addAction("Copy image", lambda: self.copy_requested.emit(path))
        menu.addSeparator()
        menu.addAction("Open the outputs folder", self.open_folder_requested.emit)
        menu.addSeparator()
        menu.addAction("Delete (move to the trash)", lambda: self.delete_requested.emit(path))
        menu.exec(self.viewport().mapToGlobal(pos))

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() == Qt.Key.Key_Delete and self.currentItem() is not None:
            self.delete_requested.emit(self.current_path())
            event.accept()
            return
        super().keyPressEvent(event)
