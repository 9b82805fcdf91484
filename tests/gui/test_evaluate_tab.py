"""The Evaluate tab, driven as a person does: its numbers are those of `ipa-studio evaluate` on the
same inputs, the best checkpoint is marked in the table and on the chart, "Use in Create" makes a
checkpoint the Create tab's adapter, Cancel ends the evaluation and the window stays usable, the GUI
never stalls while it runs, and a failure is told in words."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QLineEdit

from ipa_studio.gui.main_window import CREATE_TAB, MainWindow
from tests.gui.people import click, type_into
from tests.gui.test_generation import StallMeter, drop_files, run_job

SETTINGS = {"num_images": "2", "steps": "2", "seed": "7", "size": "64"}


def _type_path(qtbot, edit: QLineEdit, text: str) -> None:
    edit.window().activateWindow()
    qtbot.mouseClick(edit, Qt.MouseButton.LeftButton, pos=edit.rect().center())
    qtbot.waitUntil(edit.hasFocus, timeout=2000)
    qtbot.keyClick(edit, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(edit, text)
    qtbot.keyClick(edit, Qt.Key.Key_Return)


def _open_tab(qtbot, window: MainWindow):
    panel = window.evaluate_panel
    bar = window.tabs.tabBar()
    index = window.tabs.indexOf(panel)
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(index).center())
    assert window.tabs.currentWidget() is panel
    return panel


def _fill(qtbot, window: MainWindow, checkpoints: str, pairs: Path, clip: Path, **settings: str):
    panel = _open_tab(qtbot, window)
    _type_path(qtbot, panel.checkpoints.edit, checkpoints)
    _type_path(qtbot, panel.pairs.edit, str(pairs))
    _type_path(qtbot, panel.clip.edit, str(clip))
    for name, text in {**SETTINGS, **settings}.items():
        type_into(qtbot, getattr(panel, name), text)
    # The base model and encoder come from the library, as in the Create tab's picker.
    qtbot.waitUntil(lambda: panel.base.count() > 0 and panel.encoder.count() > 0, timeout=30_000)
    return panel


def _cli_reference(tiny_run, pairs, clip, base, encoder, out: Path) -> list[dict[str, str]]:
    """`ipa-studio evaluate` as a person runs it in a terminal, on the same inputs."""
    args = [
        sys.executable, "-m", "ipa_studio.cli", "evaluate",
        "--checkpoints", str(tiny_run), "--pairs", str(pairs), "--model", str(base),
        "--image-encoder", str(encoder), "--clip-model", str(clip),
        "--num-images", "2", "--steps", "2", "--seed", "7", "--size", "64",
        "--device", "cpu", "--quiet", "--out", str(out),
    ]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True, timeout=300)
    with out.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_tab_numbers_equal_the_cli_and_the_best_is_marked(
    window: MainWindow, qtbot, tiny_run, eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, tmp_path
) -> None:
    panel = _fill(qtbot, window, str(tiny_run), eval_pairs, tiny_clip)
    assert "3 checkpoints: step 1, step 2, step 3" in panel.found.text()
    assert panel.base.currentData() == str(tiny_sd15) and panel.encoder.currentData() == str(
        tiny_image_encoder
    )

    with StallMeter() as meter, qtbot.waitSignal(panel.ended, timeout=600_000) as ended:
        click(qtbot, panel.start_button)
        assert not panel.start_button.isEnabled() and panel.cancel_button.isEnabled()
    assert ended.args == ["finished"], panel.status.text()
    print(f"\nworst GUI stall during an evaluation: {meter.worst_ms:.1f} ms ({len(meter.ticks)} ticks)")
    assert len(meter.ticks) > 50
    assert meter.worst_ms < 50, f"the GUI thread stalled for {meter.worst_ms:.1f} ms during an evaluation"

    reference = _cli_reference(
        tiny_run, eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, tmp_path / "cli.csv"
    )
    assert [s["step"] for s in panel.scores] == [int(r["step"]) for r in reference] == [1, 2, 3]
    # Exactly the same numbers, not merely close: the same command on the same inputs.
    assert [s["clip_i"] for s in panel.scores] == [float(r["clip_i"]) for r in reference]
    assert [s["clip_t"] for s in panel.scores] == [float(r["clip_t"]) for r in reference]
    for row, ref in enumerate(reference):
        assert panel.table.item(row, 1).text() == f"{float(ref['clip_i']):.4f}"
        assert panel.table.item(row, 2).text() == f"{float(ref['clip_t']):.4f}"
    best = next(i for i, r in enumerate(reference) if r["best"] == "1")
    assert panel.best == best
    assert panel.table.item(best, 0).text() == f"★ {best + 1}" and panel.table.item(best, 0).font().bold()
    assert f"Best: step {best + 1}" in panel.summary.text()

    # The chart holds both curves against the step, and the mark sits on the best CLIP-I point.
    assert panel.chart.points("CLIP-I") == ([1.0, 2.0, 3.0], [float(r["clip_i"]) for r in reference])
    assert panel.chart.points("CLIP-T") == ([1.0, 2.0, 3.0], [float(r["clip_t"]) for r in reference])
    (mark,) = panel.chart.marks()
    assert (mark.series, mark.x, mark.y, mark.label) == (
        "CLIP-I",
        best + 1,
        float(reference[best]["clip_i"]),
        "best",
    )
    shot = panel.chart.grab().toImage()
    at = panel.chart.to_pixel(mark.x, mark.y)
    ring = shot.pixelColor(round(at.x() + 6), round(at.y()))
    assert min(ring.red(), ring.green(), ring.blue()) > 200, "no marker ring at the best point"

    # The results sit in the run folder: the CLI's files, and the chart as a PNG.
    assert panel.results_csv.parent == tiny_run / "evaluations"
    saved = list(csv.DictReader(panel.results_csv.open(encoding="utf-8", newline="")))
    assert [r["clip_i"] for r in saved] == [r["clip_i"] for r in reference]
    summary = json.loads(panel.results_csv.with_suffix(".json").read_text(encoding="utf-8"))
    assert summary["best"]["step"] == best + 1
    assert QImage(str(panel.chart_png)).width() >= panel.chart.sizeHint().width()


def test_use_in_create_sets_the_checkpoint_as_the_adapter(
    window: MainWindow, qtbot, tiny_run, eval_pairs, tiny_clip, tiny_image_encoder
) -> None:
    panel = _fill(
        qtbot, window, str(tiny_run / "checkpoints" / "step-0000002"), eval_pairs, tiny_clip, limit="1"
    )
    assert "1 checkpoint: step 2" in panel.found.text()
    with qtbot.waitSignal(panel.ended, timeout=600_000) as ended:
        click(qtbot, panel.start_button)
    assert ended.args == ["finished"], panel.status.text()
    adapter = str(tiny_run / "checkpoints" / "step-0000002" / "ip-adapter.safetensors")
    assert panel.selected_adapter() == adapter
    click(qtbot, panel.use_button)
    assert window.tabs.currentIndex() == CREATE_TAB
    assert window.state.models.adapter == adapter
    assert window.state.models.image_encoder == str(tiny_image_encoder)
    qtbot.waitUntil(lambda: window.picker.adapter.currentData() == adapter, timeout=30_000)
    assert "step-0000002/ip-adapter.safetensors" in window.banner.text()


def test_cancel_ends_the_evaluation_and_the_window_stays_usable(
    window: MainWindow, qtbot, tiny_run, eval_pairs, tiny_clip, reference_files
) -> None:
    panel = _fill(qtbot, window, str(tiny_run), eval_pairs, tiny_clip, steps="200")
    click(qtbot, panel.start_button)
    qtbot.waitUntil(
        lambda: "step " in panel.status.text() and "of 200" in panel.status.text(), timeout=120_000
    )
    with qtbot.waitSignal(panel.ended, timeout=30_000) as ended:
        click(qtbot, panel.cancel_button)
    assert ended.args == ["cancelled"]
    assert panel.status.text().startswith("Cancelled.")
    assert panel.start_button.isEnabled() and not panel.cancel_button.isEnabled() and not panel.running()
    assert not list((tiny_run / "evaluations").glob(".*")), "a half-written file was left behind"
    # The window still works: the Create tab generates.
    window.tabs.setCurrentIndex(CREATE_TAB)
    drop_files(window, reference_files, qtbot)
    assert run_job(window, qtbot) == "finished"


def test_a_failed_evaluation_is_told_in_words(
    window: MainWindow, qtbot, tiny_run, tmp_path, tiny_clip
) -> None:
    empty = tmp_path / "no-pictures"
    empty.mkdir()
    panel = _fill(qtbot, window, str(tiny_run), empty, tiny_clip)
    with qtbot.waitSignal(panel.ended, timeout=600_000) as ended:
        click(qtbot, panel.start_button)
    assert ended.args == ["failed"]
    text = panel.status.text()
    assert text.startswith("The evaluation stopped: ") and "holds no readable images with captions" in text
    assert "Traceback" not in text and panel.start_button.isEnabled()


def test_missing_choices_are_named_before_anything_runs(window: MainWindow, qtbot, tmp_path) -> None:
    panel = _open_tab(qtbot, window)
    _type_path(qtbot, panel.checkpoints.edit, str(tmp_path / "nowhere"))
    assert "does not exist" in panel.found.text()
    click(qtbot, panel.start_button)
    assert not panel.running()
    assert "the image prompts" in panel.status.text() and "a CLIP model folder" in panel.status.text()


@pytest.mark.parametrize("width, height", [(1366, 768)])
def test_the_tab_fits_a_laptop_screen(window: MainWindow, qtbot, width, height) -> None:
    from tests.gui.people import clipped_widgets

    window.resize(width, height)
    panel = _open_tab(qtbot, window)
    qtbot.wait(50)
    assert window.width() <= width and window.height() <= height
    assert clipped_widgets(panel) == []
