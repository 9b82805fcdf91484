"""The prompt's token count as one types, and pictures from other programs dropped on the window.

Typing goes through QTest key clicks into the prompt boxes; drops deliver the events a mouse drop
delivers (DragEnter, then Drop) to the large picture view, where people drop a picture to see it.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from ipa_studio.core.images import save_png
from ipa_studio.core.models.library import ModelLibrary, sha256_of
from ipa_studio.core.settings import ModelPaths
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.panels.prompt import TOKENIZER
from tests.fixtures.foreign_pngs import A1111_TEXT, COMFY_PROMPT, INVOKE_METADATA, comfy_workflow
from tests.gui.conftest import tiny_settings
from tests.gui.test_generation import file_urls_mime, outputs, run_job

WORDS = "red green blue cat dog house tree river stone cloud".split()


def words(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def type_into(box, text: str) -> None:
    box.setFocus()
    QTest.keyClicks(box, text)


def test_token_count_follows_typing(window: MainWindow, qtbot) -> None:
    panel = window.prompt
    qtbot.waitUntil(lambda: TOKENIZER.get() is not None, timeout=30_000)
    panel.prompt.clear()
    qtbot.waitUntil(lambda: panel.prompt_count.text() == "0 / 75 tokens")
    type_into(panel.prompt, "a red car, (masterpiece:1.2)")
    qtbot.waitUntil(
        lambda: panel.prompt_count.text() == "5 / 75 tokens"
    )  # a red car , masterpiece: no brackets
    type_into(panel.prompt, ", " + words(76))
    qtbot.waitUntil(lambda: panel.prompt_count.text() == "82 / 150 tokens · 2 chunks")
    assert "Chunk 2 starts with" in panel.prompt_count.toolTip()
    type_into(panel.prompt, " BREAK stone")
    qtbot.waitUntil(lambda: panel.prompt_count.text() == "83 / 225 tokens · 3 chunks")
    assert "Chunk 3 starts with “stone…”" in panel.prompt_count.toolTip()
    assert window.state.prompt.endswith("BREAK stone")

    panel.negative.clear()
    type_into(panel.negative, "blurry, lowres")
    qtbot.waitUntil(lambda: panel.negative_count.text() == "4 / 75 tokens")
    # Backspace takes the count down again.
    for _ in range(len(", lowres")):
        QTest.keyClick(panel.negative, Qt.Key.Key_Backspace)
    qtbot.waitUntil(lambda: panel.negative_count.text() == "1 / 75 tokens")


def test_an_over_long_prompt_is_flagged(window: MainWindow, qtbot) -> None:
    qtbot.waitUntil(lambda: TOKENIZER.get() is not None, timeout=30_000)
    window.prompt.prompt.clear()
    window.prompt.prompt.insertPlainText(words(1500))  # a paste
    type_into(window.prompt.prompt, " cat")
    label = window.prompt.prompt_count
    qtbot.waitUntil(lambda: label.text() == "1501 / 1575 tokens · 21 chunks · too long: at most 20 chunks")
    assert label.property("warning") is True


def drop_on_view(window: MainWindow, path: Path) -> None:
    target = window.view.viewport()
    mime = file_urls_mime([path])  # kept in a variable: the events do not own it
    pos = QPointF(30, 30)
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    enter = QDragEnterEvent(pos.toPoint(), *args)
    QApplication.sendEvent(target, enter)
    assert enter.isAccepted(), "the drop was refused over the picture view"
    drop = QDropEvent(pos, *args)
    QApplication.sendEvent(window, drop)  # Qt delivers the drop to the widget that took the enter
    assert drop.isAccepted()


def png(path: Path, chunks: dict[str, str]) -> Path:
    return save_png(Image.new("RGB", (16, 16), (90, 60, 30)), path, chunks)


def shown(window: MainWindow) -> tuple:
    s = window.settings_panel
    return (
        window.prompt.prompt.toPlainText(),
        window.prompt.negative.toPlainText(),
        int(s.seed.value()),
        s.steps.value(),
        s.guidance.value(),
        s.width_box.value(),
        s.height_box.value(),
        s.scheduler.currentText(),
        s.lock.isChecked(),
        # As Reuse settings: the picture's seed is used by the next generation, not locked.
        window.state.seed_for_next,
    )


def test_dropped_a1111_picture_fills_the_panels_and_finds_the_model_by_hash(
    make_window,
    qtbot,
    monkeypatch,
    tmp_path: Path,
    tiny_sd15: Path,
    tiny_sd15_inpaint: Path,
    tiny_models: ModelPaths,
) -> None:
    # The window runs the inpainting model; the picture was made with tiny_sd15 under another name,
    # with its hash, and the library knows tiny_sd15 (added, and so hashed, as `models add` does).
    library = tmp_path / "library"
    ModelLibrary(library).add(tiny_sd15, name="my-favourite")
    monkeypatch.setenv("IPA_STUDIO_MODELS", str(library))
    models = ModelPaths(str(tiny_sd15_inpaint), tiny_models.adapter, tiny_models.image_encoder)
    window = make_window(tiny_settings(tmp_path, models), check_network=False)
    qtbot.waitUntil(lambda: window.picker.snapshot.find(tiny_sd15) is not None, timeout=30_000)
    text = A1111_TEXT.replace("Model hash: 6ce0161689", f"Model hash: {sha256_of(tiny_sd15)[:10]}")
    drop_on_view(window, png(tmp_path / "from-a1111.png", {"parameters": text}))

    assert shown(window) == (
        "masterpiece, (best quality:1.2), a red car on a wet street\nat night",
        "lowres, (blurry:1.3)",
        3141592653,
        28,
        6.5,
        512,
        768,
        "DPM++ 2M",
        False,
        True,
    )
    assert window.state.models.base == str(tiny_sd15.resolve())
    banner = window.banner.text()
    assert "Settings of from-a1111.png (AUTOMATIC1111) restored" in banner
    assert "Karras" in banner  # the schedule it used is not ours: said so
    assert "found in your library as my-favourite and chosen" in banner


def test_dropped_comfyui_and_invokeai_pictures_fill_the_panels(window: MainWindow, tmp_path: Path) -> None:
    comfy = png(
        tmp_path / "comfy.png", {"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(comfy_workflow())}
    )
    drop_on_view(window, comfy)
    assert shown(window) == (
        "beautiful scenery, (glass bottle:1.1)",
        "text, watermark",
        156680208700286,
        20,
        8.0,
        576,
        448,
        "Euler a",
        False,
        True,
    )
    assert "Its model, dreamshaper_8, is not in your model library" in window.banner.text()

    invoke = png(tmp_path / "invoke.png", {"invokeai_metadata": json.dumps(INVOKE_METADATA)})
    drop_on_view(window, invoke)
    assert shown(window) == (
        "a lighthouse at dusk, golden light",
        "blurry",
        2718281828,
        30,
        7.0,
        512,
        640,
        "DPM++ 2M",
        False,
        True,
    )


def test_a_picture_without_settings_says_so(window: MainWindow, tmp_path: Path) -> None:
    before = window.state.prompt
    drop_on_view(window, png(tmp_path / "holiday.png", {}))
    assert "holiday.png holds no generation settings IPA Studio can read" in window.banner.text()
    assert window.state.prompt == before


def test_a_dropped_picture_of_ours_restores_everything(window: MainWindow, qtbot, tmp_path: Path) -> None:
    window.state.set("prompt", "a (small:1.2) house, " + words(80))
    window.state.set("seed_locked", True)
    window.state.set("seed", 77)
    assert run_job(window, qtbot) == "finished"
    [saved] = outputs(window)
    window.state.set("prompt", "something else")
    window.state.set("seed", 1)
    drop_on_view(window, saved)
    assert window.prompt.prompt.toPlainText() == "a (small:1.2) house, " + words(80)
    assert int(window.settings_panel.seed.value()) == 77
    assert "restored" in window.banner.text()
