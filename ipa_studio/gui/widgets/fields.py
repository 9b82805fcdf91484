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


class _WheelNeedsFocus:
    """The wheel and display rules shared by every value widget (mixed in before the Qt class)."""

    def _take_focus_by_click_or_tab(self) -> None:
        # StrongFocus = Tab and click; the default of spin boxes and list boxes (WheelFocus) would
        # let the wheel itself give them focus, and then take the scroll.
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # type: ignore[attr-defined]

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if self.hasFocus():  # type: ignore[attr-defined]
            super().wheelEvent(event)  # type: ignore[misc]
        else:
            event.ignore()

    def _show(self, value: float, *, whole: bool) -> None:
        was = self.blockSignals(True)  # type: ignore[attr-defined]
        try:
            shown = _clamped(value, self.minimum(), self.maximum())  # type: ignore[attr-defined]
            self.setValue(round(shown) if whole else shown)  # type: ignore[attr-defined]
        finally:
            self.blockSignals(was)  # type: ignore[attr-defined]


class SpinBox(_WheelNeedsFocus, QSpinBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._take_focus_by_click_or_tab()
        self.setKeyboardTracking(False)

    def show_value(self, value: float) -> None:
        """Show ``value`` (clamped to the range) without emitting ``valueChanged``."""
        self._show(value, whole=True)


class DoubleSpinBox(_WheelNeedsFocus, QDoubleSpinBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._take_focus_by_click_or_tab()
        self.setKeyboardTracking(False)

    def show_value(self, value: float) -> None:
        """Show ``value`` (clamped to the range) without emitting ``valueChanged``."""
        self._show(value, whole=False)


class Slider(_WheelNeedsFocus, QSlider):
    def __init__(
        self, orientation: Qt.Orientation = Qt.Orientation.Horizontal, parent: QWidget | None = None
    ) -> None:
        super().__init__(orientation, parent)
        self._take_focus_by_click_or_tab()

    def show_value(self, value: float) -> None:
        """Show ``value`` (rounded, clamped to the range) without emitting ``valueChanged``."""
        self._show(value, whole=True)


class ComboBox(_WheelNeedsFocus, QComboBox):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._take_focus_by_click_or_tab()


VALUE_WIDGETS = (SpinBox, DoubleSpinBox, Slider, ComboBox)


def _clamped(value: float, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        return low
    return min(max(value, low), high)
