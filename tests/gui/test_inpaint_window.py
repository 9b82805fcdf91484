"""Img2img and inpainting in the real window with the tiny models: from the mode buttons and the
canvas to the saved picture, and back again with "reuse settings"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from ipa_studio.core.images import load_image, load_mask, read_png_metadata
from ipa_studio.core.metadata import request_from_metadata
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import MainWindow
from tests.gui.conftest import tiny_settings
from tests.gui.test_canvas import stroke
from tests.gui.test_generation import StallMeter, outputs, run_job


def open_on_canvas(window: MainWindow, qtbot, path: Path) -> None:
    with qtbot.waitSignal(window.canvas.image_shown, timeout=30_000):
        window.canvas.set_init(path)
    window.canvas.canvas.actual_size()  # 1:1, so test strokes land on exact pixels


def picture(tmp_path: Path, name: str, size: tuple[int, int], seed: int = 1) -> Path:
    path = tmp_path / name
    make_reference_image(seed, size=size).save(path)
    return path


def newest(window: MainWindow) -> Path:
    return window.gallery.paths()[0]


def test_result_to_canvas_img2img_then_inpaint_at_an_odd_size(window: MainWindow, qtbot, tmp_path) -> None:
    window.prompt.prompt.setPlainText("a lighthouse")
    assert run_job(window, qtbot) == "finished", window.banner.text()
    first = newest(window)

    # "Send to canvas" from the result tool bar: img2img from that picture, shown on the Canvas.
    window.gallery.setCurrentRow(0)
    with qtbot.waitSignal(window.canvas.image_shown, timeout=30_000):
        window.to_canvas_button.click()
    assert window.view_tabs.currentWidget() is window.canvas
    assert (window.state.mode, window.state.init_path) == ("img2img", str(first))
    assert window.init_panel.mode_buttons["img2img"].isChecked()
    window.init_panel.strength_spin.setValue(0.6)
    assert run_job(window, qtbot) == "finished", window.banner.text()
    assert window.view_tabs.currentWidget() is window.result_page  # Generate shows the live preview
    made = request_from_metadata(read_png_metadata(newest(window)))
    assert made.mode == "img2img" and made.init.image == str(first) and made.init.strength == 0.6

    # Inpaint an odd-sized picture: painting switches the mode; the result keeps the size and
    # every pixel the mask leaves black.
    odd = picture(tmp_path, "odd.png", (97, 75))
    open_on_canvas(window, qtbot, odd)
    window.canvas.canvas.set_brush_size(24)
    stroke(window.canvas.canvas, [(30, 30), (60, 45)])
    assert window.state.mode == "inpaint" and window.init_panel.only_masked.isVisible()
    assert run_job(window, qtbot) == "finished", window.banner.text()
    result = newest(window)
    made = request_from_metadata(read_png_metadata(result))
    mask = np.asarray(load_mask(made.mask.image))
    assert made.mode == "inpaint" and mask.shape == (75, 97)
    assert np.array_equal(mask, window.canvas.layer.array())
    out = np.asarray(Image.open(result).convert("RGB"))
    original = np.asarray(load_image(odd))
    assert out.shape == original.shape == (75, 97, 3)
    keep = mask == 0
    assert np.array_equal(out[keep], original[keep])  # bit-identical outside the mask
    assert not np.array_equal(out[mask == 255], original[mask == 255])  # and repainted inside
    assert len(outputs(window)) == 3


def test_reuse_settings_round_trips_picture_mask_and_options(window: MainWindow, qtbot, tmp_path) -> None:
    panel = window.init_panel
    window.prompt.prompt.setPlainText("a red door")
    window.settings_panel.lock.setChecked(True)
    panel.mode_buttons["inpaint"].click()
    assert window.view_tabs.currentWidget() is window.canvas  # choosing a mode shows the canvas
    start = picture(tmp_path, "door.png", (120, 88), seed=4)
    open_on_canvas(window, qtbot, start)
    assert window.state.mode == "inpaint"  # opening a picture keeps a chosen inpaint mode
    panel.strength_slider.setValue(85)
    panel.only_masked.setChecked(True)
    panel.padding.setValue(12)
    panel.blur.setValue(3)
    window.canvas.canvas.set_brush_size(30)
    window.canvas.canvas.set_hardness(0.4)
    stroke(window.canvas.canvas, [(50, 40), (80, 50)])
    painted = window.canvas.layer.array()

    assert run_job(window, qtbot) == "finished", window.banner.text()
    original = request_from_metadata(read_png_metadata(newest(window)))
    assert original.mask.only_masked and (original.mask.padding, original.mask.blur) == (12, 3)
    assert (
        original.init.strength == 0.85
        and Path(original.mask.image).parent == window.outputs_dir / "references"
    )

    # Change everything, then reuse the picture's settings.
    panel.mode_buttons["txt2img"].click()
    assert not panel.details.isVisible()
    other = picture(tmp_path, "other.png", (64, 96), seed=9)
    open_on_canvas(window, qtbot, other)
    window.canvas.layer.fill()
    for name, value in (("strength", 0.3), ("only_masked", False), ("mask_padding", 32), ("mask_blur", 4)):
        window.state.set(name, value)
    assert window.state.build_request() != original

    window.gallery.setCurrentRow(0)
    with qtbot.waitSignal(window.canvas.image_shown, timeout=30_000):
        window.reuse_button.click()
    qtbot.waitUntil(lambda: not window.canvas.is_loading(), timeout=30_000)
    restored = window.state.build_request()
    for field in dataclasses.fields(original):
        assert getattr(restored, field.name) == getattr(original, field.name), field.name
    # …and the panels and the canvas show it.
    assert panel.mode_buttons["inpaint"].isChecked() and panel.strength_spin.value() == 0.85
    assert panel.only_masked.isChecked() and (panel.padding.value(), panel.blur.value()) == (12, 3)
    assert np.array_equal(window.canvas.layer.array(), painted)
    assert window.banner.kind == "note"

    # Generating again with the restored mask writes no new mask file.
    masks = sorted((window.outputs_dir / "references").glob("mask-*.png"))
    assert run_job(window, qtbot) == "finished", window.banner.text()
    assert sorted((window.outputs_dir / "references").glob("mask-*.png")) == masks


def test_missing_picture_or_mask_is_a_message(window: MainWindow, qtbot, tmp_path) -> None:
    window.prompt.prompt.setPlainText("a cat")
    window.init_panel.mode_buttons["inpaint"].click()
    assert window.generate() is None
    assert window.banner.kind == "error" and "starts from a picture" in window.banner.text()
    open_on_canvas(window, qtbot, picture(tmp_path, "cat.png", (80, 64)))
    assert window.generate() is None
    assert "Paint the part to repaint" in window.banner.text()
    assert outputs(window) == []


def test_gui_does_not_stall_during_an_inpaint_job(window: MainWindow, qtbot, tmp_path) -> None:
    """The 50 ms budget holds in inpaint mode too: saving the mask, the job, pasting back."""
    window.prompt.prompt.setPlainText("a garden")
    window.state.set("steps", 12)
    open_on_canvas(window, qtbot, picture(tmp_path, "garden.png", (256, 192)))
    window.canvas.canvas.set_brush_size(60)
    stroke(window.canvas.canvas, [(40, 40), (200, 150)])
    with StallMeter() as job:
        assert run_job(window, qtbot) == "finished", window.banner.text()
    print(f"\nworst GUI stall: {job.worst_ms:.1f} ms during an inpaint generation ({len(job.ticks)} ticks)")
    assert len(job.ticks) > 10
    assert job.worst_ms < 50, f"the GUI thread stalled for {job.worst_ms:.1f} ms during an inpaint job"


def test_inpainting_model_with_nine_channels_from_the_window(
    make_window, qtbot, tmp_path: Path, tiny_models, tiny_sd15_inpaint: Path
) -> None:
    models = dataclasses.replace(tiny_models, base=str(tiny_sd15_inpaint))
    window: MainWindow = make_window(tiny_settings(tmp_path, models, prompt="a kite"), check_network=False)
    start = picture(tmp_path, "sky.png", (72, 100), seed=2)
    open_on_canvas(window, qtbot, start)
    window.canvas.canvas.set_brush_size(20)
    stroke(window.canvas.canvas, [(20, 30), (50, 70)])
    assert run_job(window, qtbot) == "finished", window.banner.text()
    made = request_from_metadata(read_png_metadata(newest(window)))
    mask = np.asarray(load_mask(made.mask.image))
    out, original = np.asarray(Image.open(newest(window)).convert("RGB")), np.asarray(load_image(start))
    assert out.shape == original.shape and np.array_equal(out[mask == 0], original[mask == 0])
