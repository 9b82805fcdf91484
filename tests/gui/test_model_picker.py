"""The model picker on the Create tab: what it lists, adding a model, switching the base model.

The library lives in a temporary folder (``IPA_STUDIO_MODELS``); the tiny models of the session are
registered in it by path when the window opens, as any model chosen on the Models tab is.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.metadata import request_from_metadata
from ipa_studio.core.models.library import ModelLibrary
from ipa_studio.core.models.tiny import build_sd15_folder
from ipa_studio.core.settings import ModelPaths
from ipa_studio.gui.library import LibraryWorker
from ipa_studio.gui.main_window import MainWindow
from ipa_studio.gui.panels.models import ModelPicker
from tests.fixtures.checkpoints import adapter_shapes, sdxl_shapes, write_shapes_only
from tests.gui.conftest import tiny_settings
from tests.gui.test_generation import drop_files, outputs, run_job


@pytest.fixture(scope="module")
def second_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny SD1.5 model (other weights, same shapes): a 'community fine-tune' of tiny_sd15."""
    return build_sd15_folder(tmp_path_factory.mktemp("models") / "tiny-finetune", seed=5)


@pytest.fixture
def library_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second_base: Path) -> Path:
    """A library that already knows the second base model, as after ``ipa-studio models add``."""
    folder = tmp_path / "library"
    ModelLibrary(folder).add(second_base, hash_files=False)
    monkeypatch.setenv("IPA_STUDIO_MODELS", str(folder))
    return folder


def open_window(make_window, qtbot, tmp_path: Path, models: ModelPaths, *wanted: Path) -> MainWindow:
    """A window whose picker has scanned the library and knows ``wanted`` (and the chosen models)."""
    window: MainWindow = make_window(tiny_settings(tmp_path, models), check_network=False)
    picker = window.picker
    paths = [*wanted, *(Path(p) for p in dataclasses.astuple(models) if p)]
    qtbot.waitUntil(lambda: all(picker.snapshot.find(p) is not None for p in paths), timeout=30_000)
    return window


def items(combo) -> list[tuple[str, bool, str]]:
    model = combo.model()
    return [
        (combo.itemText(i), model.item(i).isEnabled(), model.item(i).toolTip()) for i in range(combo.count())
    ]


def test_picker_lists_the_library_and_greys_out_what_cannot_run(
    make_window, qtbot, tmp_path: Path, library_dir: Path, tiny_models: ModelPaths, second_base: Path
) -> None:
    sdxl = write_shapes_only(library_dir / "sdxl-base.safetensors", sdxl_shapes())
    face = write_shapes_only(library_dir / "ip-adapter-plus-face_sd15.safetensors", adapter_shapes("plus"))
    window = open_window(make_window, qtbot, tmp_path, tiny_models, sdxl, face, second_base)
    picker = window.picker
    assert window.library.root == library_dir  # the environment variable wins, as on the command line

    base = items(picker.base)
    # Usable first: the one added before, the one the settings name; then the SDXL file found in the folder.
    assert [(text, usable) for text, usable, _tip in base] == [
        ("tiny-finetune", True),
        ("tiny-sd15", True),
        ("sdxl-base · SDXL", False),
    ]
    assert base[-1][2] == "Cannot be used: SDXL checkpoint: IPA Studio runs SD1.5 models"
    assert picker.base.currentData() == str(Path(tiny_models.base).resolve())

    adapters = items(picker.adapter)
    names = [text for text, _usable, _tip in adapters]
    assert "ip-adapter-global_tiny · Global" in names
    assert "ip-adapter-plus-face_sd15 · Plus face" in names
    assert names[-1] == "No adapter (text prompt only)"
    assert picker.adapter.currentText() == "ip-adapter-global_tiny · Global"
    about = picker.about.text()
    assert about.startswith("Global: the reference's overall look")
    assert "Needs a CLIP image encoder with 24-wide features: using image_encoder." in about
    assert picker.about.property("warning") is False

    # The Models tab shows the library's verdicts, not only its quick checks. The verdicts arrive
    # from the library's background check after the quick "Ready", so wait for them (a busy machine
    # delays them); a wrong verdict still fails here after the timeout.
    rows = window.setup.rows
    expected = {
        "base": "Ready · SD1.x-shaped (32-wide text)",
        "adapter": "Ready · IP-Adapter for 32-wide text",
    }
    try:
        qtbot.waitUntil(lambda: all(rows[k].status.text() == v for k, v in expected.items()), timeout=20_000)
    finally:
        assert {k: rows[k].status.text() for k in expected} == expected


def test_an_adapter_gets_its_encoder_or_says_which_one_is_missing(
    make_window,
    qtbot,
    tmp_path: Path,
    library_dir: Path,
    tiny_models: ModelPaths,
    tiny_adapters: dict,
    reference_files: list[Path],
) -> None:
    face = write_shapes_only(library_dir / "ip-adapter-plus-face_sd15.safetensors", adapter_shapes("plus"))
    plus = tiny_adapters[("plus", "safetensors")]
    for path in (tiny_models.adapter, tiny_models.image_encoder, plus):
        ModelLibrary(library_dir).add(path, hash_files=False)
    window = open_window(
        make_window, qtbot, tmp_path, ModelPaths(tiny_models.base), face, Path(tiny_models.adapter), plus
    )
    picker, state = window.picker, window.state
    state.add_reference(reference_files[0])  # the adapter switches below must keep it

    # An SD1.5 face adapter: the library has no ViT-H/14 encoder, and the picker says so.
    picker.adapter.setCurrentIndex(picker.adapter.findData(str(face.resolve())))
    assert state.models.adapter == str(face.resolve()) and state.models.image_encoder == ""
    assert "Plus face: keeps a face" in picker.about.text()
    assert "⚠ Needs the ViT-H/14 image encoder, which is not in the library yet" in picker.about.text()
    assert picker.about.property("warning") is True and picker.encoder_missing()

    # The tiny global adapter has one in the library (found by its feature width): it is picked.
    picker.adapter.setCurrentIndex(picker.adapter.findData(str(Path(tiny_models.adapter).resolve())))
    qtbot.waitUntil(lambda: state.models.image_encoder != "")
    assert Path(state.models.image_encoder).resolve() == Path(tiny_models.image_encoder).resolve()
    assert "using image_encoder" in picker.about.text() and not picker.encoder_missing()

    # Plus reads the same encoder's hidden states: the encoder stays; "No adapter" keeps it too.
    encoder = state.models.image_encoder
    picker.adapter.setCurrentIndex(picker.adapter.findData(str(plus.resolve())))
    assert state.models.adapter == str(plus.resolve()) and state.models.image_encoder == encoder
    picker.adapter.setCurrentIndex(picker.adapter.findText("No adapter (text prompt only)"))
    assert state.models.adapter == "" and state.models.image_encoder == encoder
    assert picker.about.text().startswith("No adapter")
    assert len(state.references) == 1


def test_add_model_shows_what_it_is_before_adding_it(
    make_window,
    qtbot,
    tmp_path: Path,
    library_dir: Path,
    tiny_models: ModelPaths,
    tiny_adapters: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    window = open_window(make_window, qtbot, tmp_path, tiny_models)
    picker: ModelPicker = window.picker
    threads: list[bool] = []  # per library call: did it run on the GUI thread?
    for name in ("_inspect", "_add"):
        real = getattr(LibraryWorker, name)

        def spy(self, *args, _real=real) -> None:
            threads.append(threading.current_thread() is threading.main_thread())
            _real(self, *args)

        monkeypatch.setattr(LibraryWorker, name, spy)
    sdxl = write_shapes_only(tmp_path / "downloads" / "sdxl.safetensors", sdxl_shapes())

    def inspect(path: Path):
        picker.dialog = None
        picker.add_path(str(path))
        assert picker.status.text() == f"Looking at {path.name}…"
        qtbot.waitUntil(lambda: picker.dialog is not None and picker.dialog.isVisible(), timeout=30_000)
        return picker.dialog

    # An SDXL file: what it is and why it cannot run, before anything is added; Cancel adds nothing.
    dialog = inspect(sdxl)
    assert "SDXL · base model" in dialog.summary()
    assert "cannot use it: SDXL checkpoint: IPA Studio runs SD1.5 models" in dialog.summary()
    assert dialog.add_button.isEnabled() and dialog.convert.isHidden()
    dialog.reject()
    assert all(e.name != "sdxl" for e in picker.snapshot.entries)

    # Not a model at all: it cannot be added.
    junk = tmp_path / "downloads" / "page.safetensors"
    junk.write_text("<!doctype html><html>Not found</html>")
    dialog = inspect(junk)
    assert "unreadable file" in dialog.summary() and not dialog.add_button.isEnabled()
    dialog.reject()

    # A pickled adapter: offered as .safetensors; converted into the library and chosen.
    pickled = tiny_adapters[("plus", "bin")]
    dialog = inspect(pickled)
    assert "IP-Adapter plus" in dialog.summary() and "✔ IPA Studio can use it." in dialog.summary()
    assert not dialog.convert.isHidden() and not dialog.convert.isChecked()
    assert dialog.where.text() == "The file stays where it is; the library only remembers it."
    dialog.convert.setChecked(True)
    assert dialog.where.text().startswith("A .safetensors copy is written into the models folder")
    dialog.name.setText("my plus adapter")
    with qtbot.waitSignal(window.library.added, timeout=60_000) as added:
        qtbot.mouseClick(dialog.add_button, Qt.MouseButton.LeftButton)
    entry = added.args[1]
    assert added.args[2] == "" and entry.name == "my plus adapter"
    assert entry.path == (library_dir / f"{pickled.stem}.safetensors").resolve()
    assert entry.source.converted_from == str(pickled.resolve())
    assert window.state.models.adapter == str(entry.path)
    assert picker.adapter.currentText() == "my plus adapter · Plus"
    assert "Added my plus adapter to the library" in window.banner.text()
    assert not picker.busy() and picker.add_button.isEnabled()
    assert threads == [False] * 4  # three looks and one add, none of them on the GUI thread


def test_switching_the_base_model_keeps_the_work_and_switching_back_reads_no_file(
    make_window,
    qtbot,
    tmp_path: Path,
    library_dir: Path,
    tiny_models: ModelPaths,
    second_base: Path,
    reference_files,
) -> None:
    window = open_window(make_window, qtbot, tmp_path, tiny_models, second_base)
    picker, state = window.picker, window.state
    drop_files(window, reference_files, qtbot)
    window.prompt.prompt.setPlainText("a lighthouse at dusk")
    window.balance.spin.setValue(0.35)
    window.settings_panel.lock.setChecked(True)
    kept = (
        list(state.references),
        state.prompt,
        state.scale,
        state.models.adapter,
        state.models.image_encoder,
    )
    assert run_job(window, qtbot) == "finished", window.banner.text()
    before = window.worker.engine_stats()

    def switch_to(path: Path | str) -> None:
        with qtbot.waitSignal(window.models_ready, timeout=60_000) as loaded:
            picker.base.setCurrentIndex(picker.base.findData(str(Path(path).resolve())))
        assert loaded.args == [""]

    switch_to(second_base)
    assert state.models.base == str(second_base.resolve())
    assert (
        state.references,
        state.prompt,
        state.scale,
        state.models.adapter,
        state.models.image_encoder,
    ) == kept
    assert window.references.cards and window.prompt.prompt.toPlainText() == "a lighthouse at dusk"
    assert window.balance.slider.value() == 35 and picker.adapter.currentText().endswith("· Global")
    assert run_job(window, qtbot) == "finished", window.banner.text()

    after = window.worker.engine_stats()
    # Only the new base model was read; the adapter was moved onto its UNet, not read again.
    assert after.components_loaded == [*before.components_loaded, f"base:{second_base.resolve()}"]
    assert window.gallery.count() == 2
    first, second = (request_from_metadata(read_png_metadata(p)) for p in outputs(window))
    assert {Path(first.models.base).resolve(), Path(second.models.base).resolve()} == {
        Path(tiny_models.base).resolve(),
        second_base.resolve(),
    }
    assert first.models.adapter == second.models.adapter == tiny_models.adapter
    assert first.prompt == second.prompt == "a lighthouse at dusk" and first.scale == second.scale == 0.35
    assert first.references == second.references and first.seed == second.seed

    # Back to the first model: it was kept in memory, so no file is read.
    switch_to(tiny_models.base)
    assert state.models.base == tiny_models.base  # the path as the settings spelled it
    back = window.worker.engine_stats()
    assert back.base_cache_hits == after.base_cache_hits + 1
    assert back.components_loaded == after.components_loaded
    assert run_job(window, qtbot) == "finished", window.banner.text()
    assert window.gallery.count() == 3
