"""Values people type stick, and the wheel scrolls the panel instead of changing what it passes over.

Every number field is driven as a person does it: click into it, select all, type, leave with Tab
or Enter. Every value widget of the control column gets a wheel turn while it has no focus.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractSlider, QAbstractSpinBox, QComboBox, QScrollBar, QWidget

from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.metadata import request_from_metadata
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.widgets.fields import VALUE_WIDGETS
from tests.gui.people import click, scroll_area_of, type_into, wheel
from tests.gui.test_control import ready
from tests.gui.test_generation import drop_files, outputs, run_job

ENTER = Qt.Key.Key_Return
TAB = Qt.Key.Key_Tab


@pytest.fixture
def busy_window(
    window: MainWindow, qtbot, reference_files, tmp_path: Path, tiny_controlnet: Path
) -> MainWindow:
    """The window at a laptop size with everything that has a value on show: two references, a
    start picture in Inpaint mode, a control with its ControlNet."""
    window.resize(1366, 768)
    drop_files(window, reference_files, qtbot)
    start = tmp_path / "start.png"
    make_reference_image(3, size=(64, 64)).save(start)
    window.canvas.set_init(start)
    window.init_panel.mode_buttons["inpaint"].click()
    uid = window.control.add_control(reference_files[0])
    window.control.set_model(uid, tiny_controlnet)
    qtbot.waitUntil(lambda: ready(window.control.cards[uid]), timeout=60_000)
    window.view_tabs.setCurrentWidget(window.result_page)
    qtbot.wait(50)
    return window


def number_fields(w: MainWindow) -> list[tuple[str, QAbstractSpinBox, str, Callable[[], object], object]]:
    """(name, box, what is typed, what the state holds afterwards, the value expected there)."""
    s, card = w.settings_panel, next(iter(w.control.cards.values()))
    ref = next(iter(w.references.cards.values()))
    uid = ref.uid
    control = card.uid
    weight = lambda: next(r.weight for r in w.state.references if r.uid == uid)  # noqa: E731
    item = lambda: w.state.control(control)  # noqa: E731
    return [
        ("λ", w.balance.spin, "0.35", lambda: w.state.scale, 0.35),
        ("reference weight 0.8", ref.spin, "0.8", weight, 0.8),
        ("reference weight 0.25", ref.spin, "0.25", weight, 0.25),
        ("steps", s.steps, "42", lambda: w.state.steps, 42),
        ("guidance", s.guidance, "12.5", lambda: w.state.guidance, 12.5),
        ("seed", s.seed, "123456789012", lambda: w.state.seed, 123456789012),
        ("width", s.width_box, "768", lambda: w.state.width, 768),
        ("width, not a multiple of 8", s.width_box, "515", lambda: w.state.width, 512),
        ("height", s.height_box, "640", lambda: w.state.height, 640),
        ("number of pictures", s.num_images, "3", lambda: w.state.num_images, 3),
        ("strength", w.init_panel.strength_spin, "0.35", lambda: w.state.strength, 0.35),
        ("mask padding", w.init_panel.padding, "48", lambda: w.state.mask_padding, 48),
        ("edge blend", w.init_panel.blur, "12", lambda: w.state.mask_blur, 12),
        ("control strength", card.strength_spin, "0.45", lambda: item().scale, 0.45),
        ("control start", card.start, "20", lambda: item().start, 0.2),
        ("control end", card.end, "80", lambda: item().end, 0.8),
        ("control detail", card.resolution, "768", lambda: item().resolution, 768),
        ("brush size", w.canvas.size_spin, "120", lambda: w.canvas.canvas.brush.size, 120),
        (
            "brush hardness",
            w.canvas.hardness_spin,
            "35",
            lambda: round(w.canvas.canvas.brush.hardness, 2),
            0.35,
        ),
    ]


@pytest.mark.parametrize("commit", [TAB, ENTER], ids=["Tab", "Enter"])
def test_every_typed_number_is_the_number_used(busy_window: MainWindow, qtbot, commit: Qt.Key) -> None:
    w = busy_window
    w.init_panel.only_masked.click()  # the padding box is only editable with "masked area only"
    wrong = []
    for name, box, text, held, expected in number_fields(w):
        on_canvas = box in (w.canvas.size_spin, w.canvas.hardness_spin)
        w.view_tabs.setCurrentWidget(w.canvas if on_canvas else w.result_page)
        scroll = scroll_area_of(box)
        if scroll is not None:
            scroll.ensureWidgetVisible(box)
        qtbot.waitUntil(box.isVisible, timeout=2000)
        type_into(qtbot, box, text, commit)
        got = held()
        if got != pytest.approx(expected):
            wrong.append(f"{name}: typed {text!r}, the window uses {got!r} (box shows {box.text()!r})")
        elif expected != 512 and box.value() != pytest.approx(float(text) if "." in text else int(text)):
            wrong.append(f"{name}: typed {text!r}, the box shows {box.text()!r}")
    assert not wrong, "\n".join(wrong)


def test_a_typed_weight_is_the_weight_the_saved_picture_records(window: MainWindow, qtbot, reference_files):
    drop_files(window, reference_files[:1], qtbot)
    card = next(iter(window.references.cards.values()))
    type_into(qtbot, card.spin, "0.8")
    type_into(qtbot, window.balance.spin, "0.35", ENTER)
    assert run_job(window, qtbot) == "finished", window.banner.text()
    request = request_from_metadata(read_png_metadata(outputs(window)[0]))
    assert [r.weight for r in request.references] == [0.8]
    assert request.scale == 0.35


def test_arrow_keys_still_step_at_once(window: MainWindow, qtbot) -> None:
    box = window.settings_panel.steps
    before = window.state.steps
    click(qtbot, box)
    qtbot.keyClick(box, Qt.Key.Key_Up)
    assert window.state.steps == before + 1


def column_value_widgets(w: MainWindow) -> list[QWidget]:
    column = w.findChild(QWidget, "controlColumn")
    found = [
        x
        for x in column.findChildren(QWidget)
        if isinstance(x, (QAbstractSpinBox, QAbstractSlider, QComboBox))
    ]
    return [x for x in found if x.isVisibleTo(column) and x.isEnabled() and not isinstance(x, QScrollBar)]


def _value(widget: QWidget) -> object:
    if isinstance(widget, QComboBox):
        return widget.currentIndex()
    return widget.value()


def test_the_wheel_scrolls_the_panel_and_changes_no_value_it_passes(busy_window: MainWindow, qtbot) -> None:
    w = busy_window
    w.init_panel.only_masked.click()  # the padding box takes part too
    widgets = column_value_widgets(w)
    s, card = w.settings_panel, next(iter(w.control.cards.values()))
    ref = next(iter(w.references.cards.values()))
    must = {
        "λ slider": w.balance.slider,
        "λ box": w.balance.spin,
        "weight slider": ref.slider,
        "weight box": ref.spin,
        "steps": s.steps,
        "guidance": s.guidance,
        "seed": s.seed,
        "width": s.width_box,
        "height": s.height_box,
        "pictures": s.num_images,
        "size": s.size_preset,
        "sampler": s.scheduler,
        "strength slider": w.init_panel.strength_slider,
        "strength box": w.init_panel.strength_spin,
        "padding": w.init_panel.padding,
        "edge blend": w.init_panel.blur,
        "control strength slider": card.strength_slider,
        "control strength box": card.strength_spin,
        "control start": card.start,
        "control end": card.end,
        "control detail": card.resolution,
        "preprocessor": card.preprocessor,
        "ControlNet": card.model,
        "base model": w.picker.base,
        "adapter": w.picker.adapter,
    }
    missing = [name for name, x in must.items() if x not in widgets]
    assert not missing, f"not on show in the column: {missing}"
    scroll = scroll_area_of(w.balance)
    bar = scroll.verticalScrollBar()
    assert bar.maximum() > 0, "at 1366 × 768 the column must be taller than the window"
    w.generate_panel.generate.setFocus()  # focus outside the column, as after pressing Generate
    changed, stuck = [], []
    for widget in widgets:
        scroll.ensureWidgetVisible(widget, 0, 120)
        qtbot.wait(1)
        notches = -1 if bar.value() < bar.maximum() else 1
        before_value, before_scroll = _value(widget), bar.value()
        wheel(widget, notches)
        if _value(widget) != before_value:
            changed.append(
                f"{type(widget).__name__} {widget.toolTip()[:50]!r}: {before_value} → {_value(widget)}"
            )
        if bar.value() == before_scroll:
            stuck.append(f"{type(widget).__name__} {widget.toolTip()[:50]!r}")
    assert not changed, "the wheel changed values while scrolling:\n" + "\n".join(changed)
    assert not stuck, "the panel did not scroll under:\n" + "\n".join(stuck)


def test_a_focused_box_takes_the_wheel(window: MainWindow, qtbot) -> None:
    """Once someone clicked into a box, the wheel is theirs to step it with, as everywhere else."""
    box = window.settings_panel.steps
    scroll_area_of(box).ensureWidgetVisible(box)
    before = window.state.steps
    click(qtbot, box)
    qtbot.waitUntil(box.hasFocus)
    wheel(box, 1)
    assert window.state.steps == before + 1


def test_every_value_widget_follows_the_one_policy(busy_window: MainWindow) -> None:
    """A new box or slider cannot forget the rules: every one in the window is of the policy's classes."""
    kinds = (QAbstractSpinBox, QAbstractSlider, QComboBox)
    strays = [
        f"{type(x).__name__} {x.toolTip()[:60]!r}"
        for kind in kinds
        for x in busy_window.findChildren(kind)
        if not isinstance(x, (QScrollBar, *VALUE_WIDGETS))
    ]
    assert not strays, "value widgets outside the input policy:\n" + "\n".join(strays)
