"""First run without models, the Models tab (offline and online), settings that survive a restart."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from ipa_studio.core.models.catalog import CatalogEntry
from ipa_studio.core.settings import ModelPaths, Settings, load_settings
from ipa_studio.gui.main_window import CREATE_TAB, MODELS_TAB, MainWindow
from ipa_studio.gui.model_check import check_model
from tests.fixtures.checkpoints import adapter_shapes, sdxl_shapes, write_shapes_only
from tests.fixtures.network import FakeHub, loopback_only, serve_fake_hub
from tests.gui.conftest import tiny_settings


def test_first_run_without_models_opens_usable_and_says_what_is_missing(
    make_window, qtbot, tmp_path: Path
) -> None:
    window: MainWindow = make_window(
        Settings(models_dir=str(tmp_path / "models"), outputs_dir=str(tmp_path / "out"))
    )  # check_network on: conftest keeps the hub offline (HF_HUB_OFFLINE=1)
    assert window.tabs.currentIndex() == MODELS_TAB
    setup = window.setup
    assert setup.missing() == ["base", "adapter", "image_encoder"]
    assert "Missing: the base model, the IP-Adapter and the image encoder." in setup.summary.text()
    assert window.tabs.tabText(MODELS_TAB) == "Models ⚠ 3 missing"

    assert all(row.status.text() == "Not chosen yet" for row in setup.rows.values())
    qtbot.waitUntil(lambda: setup.online is False)
    assert "No internet connection" in setup.network.text()
    assert not setup.download_all.isEnabled()
    assert all(not row.download.isEnabled() for row in setup.rows.values())

    # The rest of the app works: typing, presets, and Generate explains instead of failing.
    window.tabs.setCurrentIndex(CREATE_TAB)
    window.balance.preset_buttons["text"].click()
    window.prompt.prompt.setPlainText("a cat")
    assert window.generate() is None
    assert "Choose a base model first" in window.banner.text()
    assert window.tabs.currentIndex() == MODELS_TAB


def test_pointing_at_files_on_disk(make_window, tmp_path: Path, tiny_models: ModelPaths) -> None:
    window: MainWindow = make_window(Settings(outputs_dir=str(tmp_path / "out")), check_network=False)
    setup = window.setup
    setup.set_path("adapter", tiny_models.image_encoder)  # a folder where a file belongs
    assert "choose the adapter file itself" in setup.rows["adapter"].status.text()
    for kind in ("base", "adapter", "image_encoder"):
        setup.set_path(kind, getattr(tiny_models, kind))
    assert setup.missing() == []
    assert all(row.status.text().startswith("Ready") for row in setup.rows.values())
    assert window.state.models == tiny_models
    assert "All three models are ready" in setup.summary.text()


def test_the_library_says_what_a_chosen_file_really_is(
    make_window, qtbot, tmp_path: Path, tiny_models: ModelPaths
) -> None:
    """Any .safetensors passes the quick check; only the library's detection, which reads the header
    on its own thread, tells an SDXL checkpoint or an adapter from an SD1.5 base model."""
    window: MainWindow = make_window(tiny_settings(tmp_path, tiny_models), check_network=False)
    setup, row = window.setup, window.setup.rows["base"]
    sdxl = write_shapes_only(tmp_path / "downloads" / "sdxl.safetensors", sdxl_shapes())
    setup.set_path("base", str(sdxl))
    assert row.status.text() == "Ready (single-file checkpoint)"  # the quick check, at once
    qtbot.waitUntil(lambda: "SDXL" in row.status.text(), timeout=30_000)
    assert row.status.text() == "Cannot be used: SDXL checkpoint: IPA Studio runs SD1.5 models"
    assert setup.missing() == ["base"] and window.tabs.tabText(MODELS_TAB) == "Models ⚠ 1 missing"

    setup.set_path("base", tiny_models.adapter)
    qtbot.waitUntil(lambda: "IP-Adapter" in row.status.text(), timeout=30_000)
    assert row.status.text() == "This is an IP-Adapter (IP-Adapter for 32-wide text), not a base model"

    setup.set_path("base", tiny_models.base)
    qtbot.waitUntil(lambda: row.status.text() == "Ready · SD1.x-shaped (32-wide text)", timeout=30_000)
    assert setup.missing() == [] and window.tabs.tabText(MODELS_TAB) == "Models"


@pytest.mark.parametrize(
    "kind, make, expected",
    [
        ("base", lambda p: p.mkdir(), "unet, vae, text_encoder, tokenizer, scheduler missing"),
        ("base", lambda p: p.with_suffix(".safetensors").write_bytes(b"x"), "Ready (single-file"),
        ("image_encoder", lambda p: p.mkdir(), "No config.json"),
        ("adapter", lambda p: p.with_suffix(".txt").write_text("x"), "expected a .safetensors or .bin"),
    ],
)
def test_model_checks(tmp_path: Path, kind: str, make, expected: str) -> None:
    target = tmp_path / "thing"
    make(target)
    path = next(tmp_path.iterdir())
    assert expected in check_model(kind, str(path)).text
    assert check_model(kind, str(tmp_path / "nope")).text.startswith("Not found")


def test_download_with_progress_cancel_and_resume(
    make_window, qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a fake hub on 127.0.0.1. The first download is held after its first chunk until the
    test has pressed Cancel, so the cancel lands in the middle, every time."""
    import ipa_studio.core.models.download as download

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download, "CHUNK", 64 * 1024)
    # A real (small) adapter header, so the library's verdict on the download can be checked too;
    # zeros up to 3 MiB: ~48 chunks.
    # The zeros are a tensor of their own: bytes after the last tensor make the file one the
    # safetensors reader refuses.
    shapes = {**adapter_shapes("global", cross=8, embed=16), "padding": (3 * 512 * 1024,)}
    payload = write_shapes_only(tmp_path / "header.safetensors", shapes).read_bytes()
    hub = FakeHub(repos={"someone/tiny-adapter": {"models/ip-adapter_tiny.safetensors": payload}})
    entry = CatalogEntry(
        name="ip-adapter_tiny",
        kind="adapter",
        repo_id="someone/tiny-adapter",
        files=("models/ip-adapter_tiny.safetensors",),
        size_bytes=len(payload),
        description="a test adapter",
    )
    cancel_pressed = threading.Event()
    real = download.download_entry
    held = []

    def held_download(entry, dest, on_progress=None, should_cancel=None, endpoint=None):
        def progress(done: int, total: int) -> None:
            on_progress(done, total)
            if done and not held:  # hold after the first real chunk, not the initial 0
                held.append(done)
                cancel_pressed.wait(30)

        return real(entry, dest, on_progress=progress, should_cancel=should_cancel, endpoint=endpoint)

    with loopback_only(), serve_fake_hub(hub):
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        window: MainWindow = make_window(
            Settings(models_dir=str(tmp_path / "models"), outputs_dir=str(tmp_path / "out"))
        )
        monkeypatch.setattr(window.setup, "entries", {"adapter": entry})
        window.setup.rows["adapter"].entry = entry
        setup = window.setup
        qtbot.waitUntil(lambda: setup.online is True)
        assert "Connected" in setup.network.text()
        row = setup.rows["adapter"]

        monkeypatch.setattr(download, "download_entry", held_download)
        with qtbot.waitSignal(setup.downloads.cancelled, timeout=30_000):
            row.download.click()
            qtbot.waitUntil(lambda: bool(held) and row.bar.isVisible())
            qtbot.mouseClick(row.cancel, Qt.MouseButton.LeftButton)
            cancel_pressed.set()
        part = tmp_path / "models" / "ip-adapter_tiny.safetensors.part"
        kept = part.stat().st_size
        assert 0 < kept < len(payload)
        assert "paused" in row.bar_text.text() and row.download.isEnabled() and not row.cancel.isVisible()
        assert window.state.models.adapter == ""

        with qtbot.waitSignal(setup.downloads.finished_download, timeout=30_000):
            row.download.click()
    target = tmp_path / "models" / "ip-adapter_tiny.safetensors"
    assert target.read_bytes() == payload
    assert hub.ranges("models/ip-adapter_tiny.safetensors")[-1] == f"bytes={kept}-"  # resumed
    assert window.state.models.adapter == str(target)
    assert row.status.text().startswith("Ready")
    # Then the library has read the file's header and the row says what it is.
    qtbot.waitUntil(lambda: row.status.text() == "Ready · IP-Adapter for 8-wide text", timeout=30_000)
    assert window.setup.snapshot.find(target).name == "ip-adapter_tiny"


def test_settings_are_saved_atomically_and_restored(make_window, qtbot, tmp_path: Path, tiny_models) -> None:
    path = tmp_path / "config" / "settings.json"
    window: MainWindow = make_window(tiny_settings(tmp_path, tiny_models), path, check_network=False)
    window.prompt.prompt.setPlainText("remember me")
    window.balance.spin.setValue(0.8)
    window.settings_panel.steps.setValue(17)
    window.settings_panel.lock.setChecked(True)
    window.control.set_weights_dir(tmp_path / "my-annotators")
    window.resize(1000, 700)
    window.splitter.setSizes([500, 734])
    window.close()
    assert [p.name for p in path.parent.iterdir()] == ["settings.json"]  # no temporary file left

    saved = load_settings(path)
    assert (saved.last.prompt, saved.last.scale, saved.last.steps, saved.last.seed_locked) == (
        "remember me",
        0.8,
        17,
        True,
    )
    assert saved.models == tiny_models and saved.window.geometry and saved.window.splitters["main"]
    assert saved.annotators_dir == str(tmp_path / "my-annotators")

    again: MainWindow = make_window(saved, path, check_network=False)
    assert again.prompt.prompt.toPlainText() == "remember me"
    assert again.balance.slider.value() == 80 and again.settings_panel.steps.value() == 17
    assert again.control.weights_dir == tmp_path / "my-annotators"
    # The offscreen screen is 800 px wide, so Qt clamps the restored width; the height fits.
    assert again.height() == 700


def test_unreadable_settings_file_still_opens(make_window, tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text("{ this is not json")
    window: MainWindow = make_window(
        dataclasses.replace(load_settings(path), outputs_dir=str(tmp_path / "o")), path, check_network=False
    )
    assert window.settings_panel.steps.value() == 30
