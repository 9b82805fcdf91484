"""Input the way people give it: clicks, typing and the wheel through Qt's own event path.

``QTest`` key and mouse functions and ``QTest.wheelEvent`` go through the window system interface,
as a real mouse does: focus changes, event propagation to parent widgets and "the wheel gives a
spin box focus" all happen as on a desktop. Setting values with ``setValue`` skips all of that.
"""

from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, QRect, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSpinBox,
    QApplication,
    QScrollArea,
    QWidget,
)


def centre_in_window(widget: QWidget) -> QPointF:
    return QPointF(widget.mapTo(widget.window(), widget.rect().center()))


def click(qtbot, widget: QWidget, button: Qt.MouseButton = Qt.MouseButton.LeftButton) -> None:
    target = widget.lineEdit() if isinstance(widget, QAbstractSpinBox) else widget
    qtbot.mouseClick(target, button, pos=target.rect().center())


def type_into(qtbot, box: QAbstractSpinBox, text: str, commit: Qt.Key = Qt.Key.Key_Tab) -> None:
    """Click into ``box``, select all, type ``text`` and leave with Tab (or Enter)."""
    box.window().activateWindow()
    click(qtbot, box)
    qtbot.waitUntil(box.hasFocus, timeout=2000)
    qtbot.keyClick(box, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(box, text)
    qtbot.keyClick(box, commit)


def wheel(widget: QWidget, notches: int = -1) -> None:
    """Turn the wheel ``notches`` (negative = towards the person, scrolling down) over ``widget``."""
    window = widget.window()
    QTest.wheelEvent(window.windowHandle(), centre_in_window(widget), QPoint(0, 120 * notches))
    QApplication.processEvents()


def scroll_area_of(widget: QWidget) -> QScrollArea | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    return parent


def clipped_widgets(root: QWidget) -> list[str]:
    """Visible widgets that do not fit inside their parents (cut off), or that got less room than
    their minimum size (text cut inside them). Inside a scroll area only the direction it scrolls
    may cut; a scroll area that scrolls sideways is reported, since people do not look there."""
    problems = []
    for widget in [root, *root.findChildren(QWidget)]:
        if not widget.isVisibleTo(root) or widget.isWindow() and widget is not root:
            continue
        if _inside_foreign(widget, root):
            continue
        name = _describe(widget)
        hint = widget.minimumSizeHint()
        policy = widget.sizePolicy()
        ignored = policy.horizontalPolicy() == policy.Policy.Ignored
        width = QWidget.width(widget)  # (a panel may have a child box called "width")
        if not ignored and hint.width() > 0 and width < min(hint.width(), widget.maximumWidth()):
            problems.append(f"{name}: {width} px wide, needs {hint.width()}")
        rect = QRect(widget.mapTo(root, QPoint(0, 0)), QWidget.size(widget))
        parent = widget.parentWidget()
        scrolled = False  # inside a scroll area's viewport: up and down are the scroll area's business
        while parent is not None and parent is not root.parentWidget():
            area = QRect(parent.mapTo(root, QPoint(0, 0)), QWidget.size(parent))
            scroll = parent.parentWidget()
            scrolled = scrolled or (isinstance(scroll, QAbstractScrollArea) and parent is scroll.viewport())
            if scrolled:
                area = QRect(area.x(), rect.y(), area.width(), rect.height())
            if not area.contains(rect) and not rect.isEmpty():
                problems.append(f"{name} is cut off by {_describe(parent)}: {_r(rect)} outside {_r(area)}")
                break
            if parent is root:
                break
            parent = parent.parentWidget()
        if isinstance(widget, QAbstractScrollArea) and widget.horizontalScrollBar().isVisible():
            if not type(widget).__name__.startswith("Q") or isinstance(widget, QScrollArea):
                problems.append(f"{name} scrolls sideways")
    return problems


def _inside_foreign(widget: QWidget, root: QWidget) -> bool:
    """Qt's own inner parts (a spin box's line edit, scroll bars, tab-bar arrows) and what a
    graphics or list view draws are the toolkit's business, not the layout's."""
    parent = widget.parentWidget()
    while parent is not None and parent is not root:
        if type(parent).__module__.startswith("PySide6") and type(parent).__name__ in (
            "QTabBar",
            "QScrollBar",
            "QComboBox",
            "QListWidget",
            "QGraphicsView",
        ):
            return True
        parent = parent.parentWidget()
    return widget.objectName().startswith("qt_") or type(widget).__name__ in ("QScrollBar", "QSizeGrip")


def _describe(widget: QWidget) -> str:
    text = getattr(widget, "text", None)
    label = ""
    if callable(text):
        try:
            label = str(text())[:40]
        except TypeError:
            label = ""
    return f"{type(widget).__name__}({widget.objectName() or label!r})"


def _r(rect: QRect) -> str:
    return f"[{rect.x()},{rect.y()} {rect.width()}×{rect.height()}]"
