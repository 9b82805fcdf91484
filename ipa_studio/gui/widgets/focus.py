"""Tab order in reading order: top to bottom, left to right, the way the panels are laid out.

Qt's default order is the order widgets were created in. Panels built later than they are shown
(the start-picture section sits first but is made after the others) and cards added while the app
runs (references, controls) then come at the end, or are skipped past: Tab jumped from the model
picker to the prompt and reached the mode buttons last. The order here follows the layouts
themselves, so it is right after every rebuild.
"""

from __future__ import annotations

from collections.abc import Iterator

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QLayout, QWidget


def reading_order(root: QWidget) -> list[QWidget]:
    """Every widget under ``root`` that Tab can reach, in layout order."""
    return [w for w in _walk_widget(root) if w is not root and _tabbable(w)]


def set_reading_tab_order(root: QWidget) -> list[QWidget]:
    """Chain the Tab order of the widgets under ``root`` in reading order; returns the chain."""
    chain = reading_order(root)
    for first, second in zip(chain, chain[1:], strict=False):
        QWidget.setTabOrder(first, second)
    return chain


def _tabbable(widget: QWidget) -> bool:
    # A spin box takes focus itself; its line edit must not be a separate stop.
    if widget.focusProxy() is not None:
        return False
    return bool(widget.focusPolicy() & Qt.FocusPolicy.TabFocus)


def _walk_widget(widget: QWidget) -> Iterator[QWidget]:
    yield widget
    if isinstance(widget, QAbstractItemView):
        # A list or table is one Tab stop; its headers, viewport and corner button are its own.
        # Chaining a table's private corner button into the order crashed Qt (QTableView's
        # updateGeometries on the next layout pass).
        return
    layout = widget.layout()
    seen: set[int] = set()
    if layout is not None:
        for child in _walk_layout(layout):
            seen.add(id(child))
            yield from _walk_widget(child)
    # Children outside any layout (a scroll area's viewport and what it shows) still count.
    for child in widget.findChildren(QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly):
        if id(child) not in seen and not child.isWindow():
            yield from _walk_widget(child)


def _walk_layout(layout: QLayout) -> Iterator[QWidget]:
    for index in range(layout.count()):
        item = layout.itemAt(index)
        if item.widget() is not None:
            yield item.widget()
        elif item.layout() is not None:
            yield from _walk_layout(item.layout())
