"""The LoRA list, the Fast preset, embeddings in the prompts and the precision setting, driven as a
person drives them: menu keys, clicks, slider drags, typing, Tab."""

from __future__ import annotations

from pathlib import Path

import pytest
from diffusers import UNet2DConditionModel
from PySide6.QtCore import QPoint, Qt, QTimer
from PySide6.QtWidgets import QApplication, QMenu, QStyle, QStyleOptionSlider

from ipa_studio.core.request import LoraSpec
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.panels import loras as loras_panel
from tests.fixtures.fewstep_loras import kohya_style_lora, write_lcm_lora
from tests.gui.conftest import tiny_settings
from tests.gui.people import click, type_into


@pytest.fixture(scope="module")
def lora_files(tiny_sd15, tmp_path_factory) -> dict[str, Path]:
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    folder = tmp_path_factory.mktemp("loras")
    return {
        "lcm": write_lcm_lora(unet, folder / "lcm-lora-sdv1-5.safetensors"),
        "style": kohya_style_lora(unet, folder / "watercolor.safetensors"),
    }


def choose_from_menu(qtbot, button, pick_last: bool = True) -> None:
    """Open ``button``'s menu with a click and take its last item with the keyboard (Up, Enter)."""

    def pick() -> None:
        menu = QApplication.activePopupWidget()
        assert isinstance(menu, QMenu), "the menu did not open"
        qtbot.keyClick(menu, Qt.Key.Key_Up)
        qtbot.keyClick(menu, Qt.Key.Key_Return)

    QTimer.singleShot(300, pick)
    click(qtbot, button)  # an instant-popup menu: the click returns once an item was chosen


def add_lora_file(qtbot, window: MainWindow, path: Path, monkeypatch) -> loras_panel.LoraRow:
    monkeypatch.setattr(loras_panel.dialogs, "open_file", lambda *a, **k: str(path))
    lora_list = window.picker.loras
    before = set(lora_list.rows)
    choose_from_menu(qtbot, lora_list.add_button)
    qtbot.waitUntil(lambda: len(lora_list.rows) == len(before) + 1, timeout=5000)
    uid = (set(lora_list.rows) - before).pop()
    row = lora_list.rows[uid]
    qtbot.waitUntil(lambda: row.kind.text() != "Looking at it…", timeout=10_000)
    return row


def drag_slider(qtbot, slider, fraction: float) -> None:
    """Press on the slider's handle and drag it to ``fraction`` of the groove, as with a mouse."""
    opt = QStyleOptionSlider()
    slider.initStyleOption(opt)
    style = slider.style()
    handle = style.subControlRect(
        QStyle.ComplexControl.CC_Slider, opt, QStyle.SubControl.SC_SliderHandle, slider
    )
    groove = style.subControlRect(
        QStyle.ComplexControl.CC_Slider, opt, QStyle.SubControl.SC_SliderGroove, slider
    )
    start = handle.center()
    end = QPoint(groove.left() + round(fraction * groove.width()), start.y())
    qtbot.mousePress(slider, Qt.MouseButton.LeftButton, pos=start)
    for k in range(1, 11):
        qtbot.mouseMove(slider, QPoint(start.x() + (end.x() - start.x()) * k // 10, start.y()))
    qtbot.mouseRelease(slider, Qt.MouseButton.LeftButton, pos=end)


def test_lora_list_fast_preset_strengths_and_reuse(
    qtbot, make_window, tmp_path, tiny_models, lora_files, monkeypatch
):
    window = make_window(tiny_settings(tmp_path, tiny_models, prompt="a fox"), check_network=False)
    state, lora_list = window.state, window.picker.loras
    assert lora_list.count.text() == "none" and lora_list.fast.isHidden()

    # An ordinary LoRA: listed with its kind, no Fast preset offered.
    style = add_lora_file(qtbot, window, lora_files["style"], monkeypatch)
    assert style.name.text() == "watercolor" and "kohya" in style.kind.text()
    assert lora_list.fast.isHidden()

    # The LCM-LoRA: recognised, and its Fast preset offered; one click sets sampler, steps, guidance.
    lcm = add_lora_file(qtbot, window, lora_files["lcm"], monkeypatch)
    assert lcm.kind.text().startswith("LCM few-step")
    qtbot.waitUntil(lora_list.fast.isVisible, timeout=2000)
    assert "LCM sampler, 4 steps, guidance 1." in lora_list.fast.label.text()
    assert (state.scheduler, state.steps) != ("lcm", 4)
    click(qtbot, lora_list.fast.use)
    assert (state.scheduler, state.steps, state.guidance) == ("lcm", 4, 1.0)
    panel = window.settings_panel
    assert (
        panel.scheduler.currentText() == "LCM" and panel.steps.value() == 4 and panel.guidance.value() == 1.0
    )
    assert lora_list.fast.isHidden()

    # Strength: drag the slider, then type an exact value; the text strength follows until typed.
    drag_slider(qtbot, lcm.slider, 0.75)  # -2 … 2: three quarters is 1.0
    moved = state.lora(lcm.uid).strength
    assert 0.8 <= moved <= 1.2 and lcm.strength.value() == pytest.approx(moved)
    type_into(qtbot, lcm.strength, "0.65")
    assert state.lora(lcm.uid).strength == 0.65 and lcm.slider.value() == 65
    assert lcm.text_strength.value() == 0.65 and state.lora(lcm.uid).text_strength is None
    type_into(qtbot, lcm.text_strength, "0.3")
    assert state.lora(lcm.uid).text_strength == 0.3
    type_into(qtbot, lcm.strength, "0.7")
    assert lcm.text_strength.value() == 0.3  # given a value of its own, it stays

    # Off: kept in the list, not applied; its boxes grey out.
    click(qtbot, style.enabled)
    assert not state.lora(style.uid).enabled and not style.slider.isEnabled()
    assert lora_list.count.text() == "1 on"
    request = state.build_request()
    assert request.loras == (
        LoraSpec(str(lora_files["style"]), 1.0, None, False),
        LoraSpec(str(lora_files["lcm"]), 0.7, 0.3, True),
    )

    # Remove one, then Reuse the earlier request: the list, strengths and on/off come back.
    click(qtbot, style.remove)
    assert [i.name for i in state.loras] == ["lcm-lora-sdv1-5"] and style.uid not in lora_list.rows
    notes = state.apply_request(request.replace(loras=(*request.loras, LoraSpec("/gone/x.safetensors"))))
    assert any("The LoRA x could not be found" in n for n in notes)
    assert [(i.name, i.strength, i.text_strength, i.enabled) for i in state.loras] == [
        ("watercolor", 1.0, None, False),
        ("lcm-lora-sdv1-5", 0.7, 0.3, True),
    ]
    rows = [lora_list.rows[i.uid] for i in state.loras]
    qtbot.waitUntil(lambda: all(r.kind.text() != "Looking at it…" for r in rows), timeout=10_000)
    assert rows[1].strength.value() == 0.7 and rows[1].text_strength.value() == 0.3
    assert not rows[0].enabled.isChecked()


def test_a_file_that_is_not_a_lora_says_why(
    qtbot, make_window, tmp_path, tiny_models, tiny_adapters, monkeypatch
):
    window = make_window(tiny_settings(tmp_path, tiny_models, prompt="a fox"), check_network=False)
    row = add_lora_file(qtbot, window, tiny_adapters[("global", "safetensors")], monkeypatch)
    assert row.kind.text().startswith("⚠")
    with pytest.raises(Exception, match="cannot be used"):
        window.state.build_request()


def test_embeddings_complete_after_a_bracket_and_go_into_the_request(
    qtbot, make_window, tmp_path, tiny_models
):
    window = make_window(tiny_settings(tmp_path, tiny_models, prompt="a fox"), check_network=False)
    state = window.state
    files = {}
    for name in ("EasyNegative", "bad-hands-5", "StyleArt"):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(b"")  # only the name matters to the window
        files[name] = str(path)
    state.set_embedding_files(files)
    box = window.prompt.negative
    click(qtbot, box)
    qtbot.keyClicks(box, "blurry, <ea")
    popup = box.completer.popup()
    qtbot.waitUntil(popup.isVisible, timeout=2000)
    assert box.completer.currentCompletion() == "EasyNegative"
    qtbot.keyClick(popup, Qt.Key.Key_Return)
    assert box.toPlainText() == "blurry, EasyNegative"
    assert state.negative_prompt == "blurry, EasyNegative"
    # A "<" followed by a space is not a name being typed.
    qtbot.keyClicks(box, " < x")
    assert not popup.isVisible()
    assert state.build_request().embeddings == (files["EasyNegative"],)

    # The menu writes a name into the prompt.
    def pick() -> None:
        menu = QApplication.activePopupWidget()
        qtbot.keyClick(menu, Qt.Key.Key_Down)  # "Into the prompt"
        qtbot.keyClick(menu, Qt.Key.Key_Right)
        sub = QApplication.activePopupWidget()
        qtbot.keyClick(sub, Qt.Key.Key_Up)  # the last name: StyleArt
        qtbot.keyClick(sub, Qt.Key.Key_Return)

    QTimer.singleShot(300, pick)
    click(qtbot, window.prompt.embeddings)
    assert state.prompt == "a fox, StyleArt"
    assert state.build_request().embeddings == (files["EasyNegative"], files["StyleArt"])


def test_precision_setting_restarts_the_engine_in_that_format(qtbot, make_window, tmp_path, tiny_models):
    import torch

    window = make_window(tiny_settings(tmp_path, tiny_models, prompt="a fox"), check_network=False)
    combo = window.settings_panel.precision
    assert combo.currentData() == "auto"
    with qtbot.waitSignal(window.worker.engine_ready, timeout=60_000) as ready:
        click(qtbot, combo)  # the list opens
        qtbot.waitUntil(combo.view().isVisible, timeout=2000)
        qtbot.keyClick(combo.view(), Qt.Key.Key_Down)  # fp32
        qtbot.keyClick(combo.view(), Qt.Key.Key_Return)
    assert window.settings.precision == "fp32"
    assert ready.args[0].endswith("· fp32") and window.worker.engine.dtype is torch.float32
    qtbot.waitUntil(lambda: window.device_label.text().endswith("· fp32"), timeout=5000)


def test_generate_with_a_lora_and_reuse_brings_it_back(
    qtbot, make_window, tmp_path, tiny_models, lora_files, monkeypatch
):
    """Add the LCM-LoRA, take its Fast preset, Generate; the picture's settings put the LoRA and its
    strength back after the list was emptied. (The library offers only LoRAs that fit a full-size
    SD1.5, which the tiny one does not, so it comes from a file here.)"""
    from tests.gui.test_generation import outputs, run_job

    window = make_window(
        tiny_settings(tmp_path, tiny_models, prompt="a fox", seed_locked=True), check_network=False
    )
    state, lora_list = window.state, window.picker.loras
    row = add_lora_file(qtbot, window, lora_files["lcm"], monkeypatch)
    qtbot.waitUntil(lora_list.fast.isVisible, timeout=5000)
    click(qtbot, lora_list.fast.use)
    type_into(qtbot, row.strength, "0.8")
    assert run_job(window, qtbot) == "finished"
    [png] = outputs(window)

    click(qtbot, row.remove)
    assert state.loras == [] and state.build_request().loras == ()
    state.apply_fast_preset("ddim", 30, 7.5)
    assert window.reuse_settings(png)
    assert [(i.name, i.strength, i.enabled) for i in state.loras] == [("lcm-lora-sdv1-5", 0.8, True)]
    assert (state.scheduler, state.steps, state.guidance) == ("lcm", 4, 1.0)
    qtbot.waitUntil(lambda: len(lora_list.rows) == 1, timeout=5000)
    assert next(iter(lora_list.rows.values())).strength.value() == 0.8
