"""The control panel: photo → map preview off the GUI thread, ControlNets, several controls at once.

Most tests use the "already a map" pass-through, which needs no annotator weights; one runs a real
OpenPose (random body weights from tests/fixtures/annotators.py, 64 px) through the panel.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtWidgets import QComboBox

from ipa_studio.core.errors import RequestError
from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.metadata import request_from_metadata
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.request import ControlSpec, GenerationRequest, ModelSpec
from ipa_studio.core.settings import LastValues, ModelPaths
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.panels.control import ControlCard
from ipa_studio.gui.qimage import qimage_to_pil
from ipa_studio.gui.state import ViewState
from tests.fixtures import annotators
from tests.gui.conftest import tiny_settings
from tests.gui.test_generation import StallMeter, outputs, run_job

POSE_FOLDER, DEPTH_FOLDER = "control_v11p_sd15_openpose-tiny", "control_v11f1p_sd15_depth-tiny"


@pytest.fixture
def window(make_window, tmp_path: Path, tiny_models: ModelPaths) -> MainWindow:
    return make_window(tiny_settings(tmp_path, tiny_models, prompt="a dancer"), check_network=False)


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for seed, size in ((11, (96, 128)), (12, (64, 64))):
        path = folder / f"photo-{seed}.png"
        make_reference_image(seed, size=size).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def controlnets(window: MainWindow, tiny_controlnet: Path) -> dict[str, Path]:
    """The tiny ControlNet twice in the models folder, named like the catalog's pose and depth
    downloads, so the panel lists them and reads their kind from the name."""
    root = window.settings.models_path / "controlnet"
    return {
        kind: Path(shutil.copytree(tiny_controlnet, root / name))
        for kind, name in (("openpose", POSE_FOLDER), ("depth", DEPTH_FOLDER))
    }


@pytest.fixture(scope="module")
def body_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = annotators.build_annotator_folder(tmp_path_factory.mktemp("annotators"), (annotators.BODY,))
    yield folder
    shutil.rmtree(folder)  # 200 MB that need not outlive the module


def choose(combo: QComboBox, data: str) -> None:
    """Pick an entry as a person does: ``activated`` is what the panel listens to."""
    index = combo.findData(data)
    assert index >= 0, f"{data!r} is not offered: {[combo.itemData(i) for i in range(combo.count())]}"
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def ready(card: ControlCard) -> bool:
    return card.preprocessor.isEnabled() and not card.checking and not card.pending


def add_map_control(window: MainWindow, qtbot, photo: Path, controlnet: Path | None = None) -> ControlCard:
    """A control whose photo is already a map, with ``controlnet`` (or the one the panel picked)."""
    panel = window.control
    uid = panel.add_control(photo)
    card = panel.cards[uid]
    if controlnet is not None:
        panel.set_model(uid, controlnet)
    qtbot.waitUntil(lambda: ready(card), timeout=60_000)
    choose(card.preprocessor, "none")
    qtbot.waitUntil(card.has_map, timeout=30_000)
    return card


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


def test_a_photo_shows_its_map_beside_it_without_blocking_the_window(
    window: MainWindow, qtbot, photos, tiny_controlnet: Path
) -> None:
    with StallMeter() as meter:
        card = add_map_control(window, qtbot, photos[0], tiny_controlnet)
    assert card.photo_box.has_image() and card.map_box.has_image()
    # "Already a map": the map is the photo, shown whole (aspect kept) beside it.
    shown = qimage_to_pil(card.map_box.image)
    assert shown.size[0] / shown.size[1] == pytest.approx(96 / 128, abs=0.02)
    expected = Image.open(photos[0]).resize(shown.size)
    assert np.abs(pixels(shown) - pixels(expected)).mean() < 8
    assert card.status.text().startswith("Used as it is · 96 × 128")
    assert "stretched to the 64 × 64 picture" in card.status.text()
    [spec] = window.state.build_request().controls
    assert spec == ControlSpec(str(photos[0]), str(tiny_controlnet), 1.0, 0.0, 1.0)
    print(f"\nworst GUI stall while adding a control: {meter.worst_ms:.1f} ms ({len(meter.ticks)} ticks)")
    assert len(meter.ticks) >= 3  # the event loop ran while the map was made
    assert meter.worst_ms < 50, f"the GUI thread stalled for {meter.worst_ms:.1f} ms"

    # Clicking the map shows it large in the picture view.
    card.map_box.clicked.emit()
    assert window.view.has_image() and window.caption.text().startswith("Map of control 1")


def test_strength_steps_and_on_off_never_make_a_new_map(
    window: MainWindow, qtbot, photos, tiny_controlnet: Path
) -> None:
    card = add_map_control(window, qtbot, photos[0], tiny_controlnet)
    panel = window.control
    jobs = panel.map_jobs
    card.strength_slider.setValue(35)
    assert card.strength_spin.value() == 0.35
    card.strength_spin.setValue(1.25)
    card.start.setValue(10)
    card.end.setValue(60)
    card.enabled.setChecked(False)
    card.enabled.setChecked(True)
    qtbot.wait(100)  # any job the panel sent would be done by now
    assert panel.map_jobs == jobs
    assert card.has_map() and not card.pending
    [spec] = window.state.build_request().controls
    assert (spec.scale, spec.start, spec.end) == (1.25, 0.1, 0.6)

    # The start never passes the end: moving it there pushes the end along.
    card.start.setValue(80)
    item = window.state.controls[0]
    assert (item.start, item.end) == (0.8, 0.85) and card.end.value() == 85
    assert panel.map_jobs == jobs

    # A new photo does make a new map.
    panel.set_photo(item.uid, photos[1])
    qtbot.waitUntil(lambda: card.has_map() and window.state.controls[0].map_path == str(photos[1]))
    assert panel.map_jobs == jobs + 1


def test_two_controls_generate_land_in_the_gallery_and_reuse_restores_them(
    window: MainWindow, qtbot, photos, controlnets: dict[str, Path]
) -> None:
    pose = add_map_control(window, qtbot, photos[0])
    depth = add_map_control(window, qtbot, photos[1])
    # The panel found both ControlNets in the models folder, gave each control its own, and read
    # their kinds from the names: each card offers only the preprocessors its ControlNet reads.
    first, second = window.state.controls
    assert {first.model, second.model} == {str(p) for p in controlnets.values()}
    kinds = {c.model_kind: c for c in window.state.controls}
    assert set(kinds) == {"openpose", "depth"}
    card_of = {window.state.controls[0].model_kind: pose, window.state.controls[1].model_kind: depth}
    offered = {
        k: [c.preprocessor.itemData(i) for i in range(c.preprocessor.count())] for k, c in card_of.items()
    }
    assert offered == {"openpose": ["openpose", "none"], "depth": ["depth_midas", "depth_zoe", "none"]}
    assert "OpenPose ControlNet" in card_of["openpose"].kind_label.text()

    depth.strength_spin.setValue(0.5)
    depth.end.setValue(70)
    window.state.set("seed_locked", True)
    original = window.state.build_request()
    assert [(Path(c.image), c.scale, c.end) for c in original.controls] == [
        (photos[0], 1.0, 1.0),
        (photos[1], 0.5, 0.7),
    ]
    assert run_job(window, qtbot) == "finished", window.banner.text()
    assert window.gallery.count() == 1
    [png] = outputs(window)
    assert request_from_metadata(read_png_metadata(png)).controls == original.controls

    # Change the controls, then reuse the picture: both come back as the maps it was made with.
    pose.remove_button.click()
    depth.strength_spin.setValue(2.0)
    assert window.state.build_request() != original
    window.gallery.setCurrentRow(0)
    window.reuse_button.click()
    restored = window.state.build_request()
    for field in dataclasses.fields(original):
        assert getattr(restored, field.name) == getattr(original, field.name), field.name
    qtbot.waitUntil(lambda: len(window.control.cards) == 2 and all(map(ready, window.control.cards.values())))
    cards = [window.control.cards[c.uid] for c in window.state.controls]
    assert [c.strength_spin.value() for c in cards] == [1.0, 0.5]
    assert [c.end.value() for c in cards] == [100, 70]
    assert all(c.preprocessor.currentData() == "none" and c.has_map() for c in cards)
    assert "not offer" not in window.banner.text()  # controls are restored, not refused


def test_disabled_controls_are_left_out(window: MainWindow, qtbot, photos, tiny_controlnet: Path) -> None:
    first = add_map_control(window, qtbot, photos[0], tiny_controlnet)
    add_map_control(window, qtbot, photos[1], tiny_controlnet)
    assert len(window.state.build_request().controls) == 2
    first.enabled.setChecked(False)
    assert not first.body.isEnabled()
    assert [Path(c.image) for c in window.state.build_request().controls] == [photos[1]]
    # An empty control that is off does not stop a generation either.
    uid = window.control.add_control()
    assert "has no photo" in _refusal(window.state)
    window.control.cards[uid].enabled.setChecked(False)
    assert len(window.state.build_request().controls) == 1


def _refusal(state: ViewState) -> str:
    with pytest.raises(RequestError) as err:
        state.build_request()
    return str(err.value)


def test_missing_weights_name_the_files_and_the_folder(
    window: MainWindow, qtbot, photos, tiny_controlnet: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "no-annotators"
    window.control.set_weights_dir(empty)
    uid = window.control.add_control(photos[0])
    window.control.set_model(uid, tiny_controlnet)
    card = window.control.cards[uid]
    qtbot.waitUntil(lambda: bool(window.state.controls[0].map_problem), timeout=60_000)
    assert window.state.controls[0].preprocessor == "openpose"
    text = card.status.text()
    assert "body_pose_model.pth" in text and str(empty) in text and "lllyasviel/Annotators" in text
    assert card.status.objectName() == "controlProblem"
    assert card.photo_box.has_image() and not card.map_box.has_image()
    assert card.download_button.isVisible() and card.download_button.text().startswith(
        "Download body_pose_model.pth (209 MB)"
    )
    assert "has no map: Preprocessor weights missing" in _refusal(window.state)

    # The tests run offline: the download refuses with the reason instead of touching the network.
    with qtbot.waitSignal(window.control.message, timeout=30_000) as said:
        card.download_button.click()
    assert "Offline mode" in said.args[0]

    # Hands add their own file to the message.
    card.hands.setChecked(True)
    qtbot.waitUntil(lambda: "hand_pose_model.pth" in card.status.text(), timeout=30_000)
    assert "body_pose_model.pth and hand_pose_model.pth" in card.status.text()


def test_unusable_controlnet_and_unreadable_photo_are_explained(
    window: MainWindow, qtbot, photos, tmp_path: Path
) -> None:
    not_a_model = tmp_path / "control_v11p_sd15_openpose"
    not_a_model.mkdir()
    card = add_map_control(window, qtbot, photos[0], not_a_model)
    assert "config.json is missing" in card.model_note.text()
    assert "ControlNet cannot be used" in _refusal(window.state)

    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    window.control.set_photo(card.uid, bogus)
    qtbot.waitUntil(lambda: window.state.controls[0].photo == "", timeout=30_000)
    assert "notes.png" in window.banner.text() and "notes.png" in card.status.text()


def test_real_openpose_runs_off_the_gui_thread_and_is_cached(
    window: MainWindow, qtbot, photos, tiny_controlnet: Path, body_weights: Path
) -> None:
    panel = window.control
    panel.set_weights_dir(body_weights)
    uid = panel.add_control()
    panel.set_model(uid, tiny_controlnet)
    card = panel.cards[uid]
    qtbot.waitUntil(lambda: ready(card), timeout=60_000)
    card.resolution.setValue(64)  # the smallest the detectors take: well under a second
    with StallMeter() as meter:
        panel.set_photo(uid, photos[0])
        qtbot.waitUntil(card.has_map, timeout=120_000)
    item = window.state.controls[0]
    assert (item.preprocessor, item.resolution, item.hands) == ("openpose", 64, False)
    saved = Path(item.map_path)
    assert saved.parent == window.outputs_dir / "controls" and saved.is_file()
    # 96×128 photo, short side 64: a 64×88 map (multiples of 8), black since random weights find nobody.
    assert Image.open(saved).size == (64, 88)
    assert "Pose map 64 × 88 · made in" in card.status.text()
    service = panel.worker.service
    assert service.stats.runs == 1 and service.stats.loaded == [annotators.BODY]
    # Loading the 200 MB body network and running it both happen on the worker thread.
    print(f"\nworst GUI stall during a first OpenPose run: {meter.worst_ms:.1f} ms")
    assert meter.worst_ms < 50, f"the GUI thread stalled for {meter.worst_ms:.1f} ms"

    # Back and forth between preprocessors: the second OpenPose map comes from the cache.
    choose(card.preprocessor, "none")
    qtbot.waitUntil(lambda: card.has_map() and window.state.controls[0].map_path == str(photos[0]))
    choose(card.preprocessor, "openpose")
    qtbot.waitUntil(lambda: card.has_map() and window.state.controls[0].map_path == str(saved))
    assert "from the cache" in card.status.text()
    assert service.stats.runs == 1 and service.stats.cache_hits == 1
    assert len(window.state.build_request().controls) == 1


def test_the_window_module_leaves_the_preprocessors_to_the_worker_thread() -> None:
    # ipa_studio.core.preprocess imports torch (and its detectors controlnet-aux): a second of GIL-held
    # imports that must happen on the preprocessing thread, never while the window starts.
    heavy = ("torch", "ipa_studio.core.preprocess", "controlnet_aux")
    code = f"import sys, ipa_studio.gui.main_window; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# The view state alone
# --------------------------------------------------------------------------------------------------

MODELS_REQUEST = ModelSpec("/m/sd15")


def test_state_refuses_controls_that_are_not_ready(qapp, tmp_path: Path) -> None:
    state = ViewState(LastValues(prompt="p"), ModelPaths("/m/sd15"))
    uid = state.add_control(photo="/p.png").uid
    assert "needs a ControlNet" in _refusal(state)
    state.update_control(uid, model="/m/cn")
    assert "still being made" in _refusal(state)
    state.update_control(uid, map_path="/p.png")
    assert state.build_request().controls == (ControlSpec("/p.png", "/m/cn"),)
    seen: list[int] = []
    state.control_changed.connect(seen.append)
    state.update_control(uid, scale=0.5)  # the map stays…
    assert state.control(uid).map_path == "/p.png" and seen == [uid]
    state.update_control(uid, resolution=768)  # …until what it is made from changes
    assert state.control(uid).map_path == "" and "still being made" in _refusal(state)
    state.update_control(uid, map_problem="no weights")
    assert "has no map: no weights" in _refusal(state)


def test_apply_request_restores_controls_and_says_which_maps_are_gone(qapp, tmp_path: Path) -> None:
    kept = tmp_path / "map.png"
    make_reference_image(1).save(kept)
    request = GenerationRequest(
        models=MODELS_REQUEST,
        prompt="p",
        controls=(
            ControlSpec(str(kept), "/m/pose", 0.8, 0.1, 0.9),
            ControlSpec(str(tmp_path / "gone.png"), "/m/depth"),
        ),
    )
    state = ViewState()
    state.add_control(photo="/old.png")
    notes = state.apply_request(request)
    assert "1 control map could not be found any more and was left out." in notes
    [item] = state.controls
    assert (item.photo, item.map_path, item.preprocessor) == (str(kept), str(kept), "none")
    assert (item.model, item.scale, item.start, item.end, item.enabled) == ("/m/pose", 0.8, 0.1, 0.9, True)
