"""The value widgets of the window, with one input policy for all of them.

* **The wheel belongs to the scrolling panel** unless the widget has keyboard focus: a box or a
  slider that passes under the pointer while someone scrolls the control column must not change
  (a weight went 1.00 → 0.25 that way). Without focus the wheel event is ignored, so Qt hands it on
  to the scroll area; once clicked or tabbed into, the wheel steps the value as usual. The widgets
  therefore take focus by click or Tab only, never by the wheel.
* **Typed text is committed once**, when the person is done (Enter, Tab, clicking elsewhere), not
  at every keystroke: a box that reported "0" while "0.35" was being typed had the 0 written back
  into it by the panel, and what people typed became 0.00. Arrow keys and the step buttons still
  commit at once.
* **Showing a value never raises**: ``show_value`` clamps to the widget's range, so a value from an
  old settings file or another tool (a seed beyond 2**31, steps of a billion) cannot stop the window
  from opening with an ``OverflowError``.

Every spin box, slider and list box in the window is one of these classes; a test holds to that.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QSlider, QSpinBox, QWidget


def _wheel_needs_focus(widget: QWidget) -> None:
    # StrongFocus = Tab and click; the default of spin boxes and list boxes (WheelFocus) would let
    # the wheel itself give them focus, and then take the scroll.
    widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)


class SpinBox(QSpinBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        _wheel_needs_focus(self)
        self.setKeyboardTracking(False)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()

    def show_value(self, value: float) -> None:
        """Show ``value`` (clamped to the range) without emitting ``valueChanged``."""
        was = self.blockSignals(True)
        try:
            self.setValue(round(_clamped(value, self.minimum(), self.maximum())))
        finally:
            self.blockSignals(was)


class DoubleSpinBox(QDoubleSpinBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        _wheel_needs_focus(self)
        self.setKeyboardTracking(False)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()

    def show_value(self, value: float) -> None:
        """Show ``value`` (clamped to the range) without emitting ``valueChanged``."""
        was = self.blockSignals(True)
        try:
            self.setValue(_clamped(value, self.minimum(), self.maximum()))
        finally:
            self.blockSignals(was)


class Slider(QSlider):
    def __init__(
        self, orientation: Qt.Orientation = Qt.Orientation.Horizontal, parent: QWidget | None = None
    ) -> None:
        super().__init__(orientation, parent)
        _wheel_needs_focus(self)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()

    def show_value(self, value: float) -> None:
        """Show ``value`` (rounded, clamped to the range) without emitting ``valueChanged``."""
        was = self.blockSignals(True)
        try:
            self.setValue(round(_clamped(value, self.minimum(), self.maximum())))
        finally:
            self.blockSignals(was)


class ComboBox(QComboBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        _wheel_needs_focus(self)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if self.hasFocus():
            super().wheelEvent(event)
        else:
            event.ignore()


VALUE_WIDGETS = (SpinBox, DoubleSpinBox, Slider, ComboBox)


def _clamped(value: float, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return low
    return min(max(value, low), high)
