"""Reference images: paste, refusals, and the encoder crop the cards show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, Qt, QUrl
from PySide6.QtGui import QGuiApplication

from ipa_studio.core.images import encoder_crop
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.qimage import pil_to_qimage, qimage_to_pil


@pytest.mark.parametrize("size", [(300, 201), (201, 300), (1000, 333), (224, 227), (50, 50), (397, 301)])
def test_encoder_crop_is_what_the_clip_processor_feeds_the_encoder(size: tuple[int, int]) -> None:
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size=224, crop_size=224)  # as models.loader builds it
    rng = np.random.default_rng(sum(size))
    # Noise, so that a crop one pixel off (or a swapped axis) shows up as a large difference.
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = processor(image, return_tensors="np").pixel_values[0].transpose(1, 2, 0)
    crop = encoder_crop(image)
    assert crop.size == (224, 224)
    ours = (np.asarray(crop, dtype=np.float64) / 255 - processor.image_mean) / processor.image_std
    # Same geometry; the resampling differs only by rounding: at most 2 of 255 levels anywhere
    # (0.03 after normalisation), and almost nowhere at all. One pixel off would be ~1 on average.
    diff = np.abs(ours - expected)
    assert diff.max() < 3 / 255 / min(processor.image_std) and diff.mean() < 0.002


def test_qimage_round_trip_keeps_pixels() -> None:
    image = make_reference_image(4, size=(33, 17))  # odd width: rows are padded inside a QImage
    back = qimage_to_pil(pil_to_qimage(image))
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[..., :3], np.asarray(image))


def test_card_shows_the_crop_of_the_reference(window: MainWindow, qtbot, tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    make_reference_image(7, size=(400, 100)).save(path)
    window.references.add_files([path])
    card = next(iter(window.references.cards.values()))
    qtbot.waitUntil(card.has_crop)
    shown = qimage_to_pil(card.thumb.pixmap().toImage()).convert("RGB")
    expected = encoder_crop(Image.open(path)).resize(shown.size)
    assert np.abs(np.asarray(shown, dtype=int) - np.asarray(expected, dtype=int)).mean() < 8


def test_paste_saves_the_picture_and_uses_it(window: MainWindow, qtbot) -> None:
    picture = make_reference_image(9, size=(120, 90))
    QGuiApplication.clipboard().setImage(pil_to_qimage(picture))
    window.setFocus()  # not a text box: Ctrl+V is for pictures here
    assert window.references.paste() == 1
    [item] = window.state.references
    saved = Path(item.path)
    assert saved.parent == window.outputs_dir / "references"
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), np.asarray(picture))
    card = window.references.cards[item.uid]
    qtbot.waitUntil(card.has_crop)


def test_not_an_image_is_refused_with_a_message(window: MainWindow, qtbot, tmp_path: Path) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("these are my notes, not a picture")
    window.references.add_files([bogus])
    qtbot.waitUntil(lambda: not window.state.references)  # taken out again once found unreadable
    assert "notes.png" in window.banner.text() and "not an image" in window.banner.text()


def test_folders_and_web_addresses_are_explained(window: MainWindow) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl("https://example.com/cat.png")])
    assert window.references.add_from_mime(mime) == 0
    assert "save the picture to a file" in window.banner.text()
    assert window.references.add_files([window.outputs_dir.parent]) == 0
    assert "is a folder" in window.banner.text()
    assert window.state.references == []


def test_remove_and_weight(window: MainWindow, qtbot, reference_files) -> None:
    window.references.add_files(reference_files)
    first, second = window.state.references
    card = window.references.cards[first.uid]
    card.slider.setValue(25)
    assert window.state.references[0].weight == 0.25 and card.spin.value() == 0.25
    window.references.cards[second.uid].remove_button.click()
    assert [r.uid for r in window.state.references] == [first.uid]
    qtbot.waitUntil(lambda: list(window.references.cards) == [first.uid])


def test_ctrl_v_pastes_text_in_a_text_box_and_a_picture_elsewhere(window: MainWindow, qtbot) -> None:
    mime = QMimeData()
    mime.setText("a red boat")
    mime.setImageData(pil_to_qimage(make_reference_image(2)))
    QGuiApplication.clipboard().setMimeData(mime)
    window.activateWindow()
    window.prompt.prompt.setFocus()
    qtbot.keyClick(window.prompt.prompt, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert window.prompt.prompt.toPlainText() == "a red boat"
    assert window.state.references == []

    window.gallery.setFocus()
    qtbot.keyClick(window.gallery, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert len(window.state.references) == 1
