"""Fixtures for driving the real window offscreen with the tiny models.

``no_dangling_threads`` (autouse) fails any test that leaves a QThread running, the way napari's
``dangling_qthreads`` does: ``QThread.start`` is wrapped to remember every thread a test starts.
"""

from __future__ import annotations

import atexit
import json
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if os.environ["QT_QPA_PLATFORM"] == "offscreen":
    # Qt's offscreen screen is 800 × 800 unless told otherwise; the window fits itself to the
    # screen, so the tests run it on a common desktop screen. Laptop sizes are tested explicitly.
    _SCREEN = Path(tempfile.gettempdir()) / f"ipa-studio-test-screen-{os.getpid()}.json"
    _SCREEN.write_text(json.dumps({"screens": [{"name": "desktop", "width": 1920, "height": 1080}]}))
    atexit.register(_SCREEN.unlink, missing_ok=True)
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={_SCREEN}"

from PySide6.QtCore import QThread  # noqa: E402

from ipa_studio.core.models.tiny import make_reference_image  # noqa: E402
from ipa_studio.core.settings import LastValues, ModelPaths, Settings  # noqa: E402
from ipa_studio.gui.main_window import MainWindow  # noqa: E402


@pytest.fixture(autouse=True)
def no_dangling_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    started: weakref.WeakSet[QThread] = weakref.WeakSet()
    real_start = QThread.start

    def start(self: QThread, *args: object) -> None:
        started.add(self)
        real_start(self, *args)

    monkeypatch.setattr(QThread, "start", start)
    python_threads = set(threading.enumerate())
    yield
    running = [t.objectName() or type(t).__name__ for t in list(started) if t.isRunning()]
    assert not running, f"the test left QThreads running: {running}"
    leaked = [
        t.name for t in threading.enumerate() if t not in python_threads and t.is_alive() and not t.daemon
    ]
    assert not leaked, f"the test left Python threads running: {leaked}"


@pytest.fixture(scope="session")
def tiny_models(tiny_sd15: Path, tiny_image_encoder: Path, tiny_adapters: dict) -> ModelPaths:
    return ModelPaths(str(tiny_sd15), str(tiny_adapters[("global", "safetensors")]), str(tiny_image_encoder))


@pytest.fixture
def reference_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "refs"
    folder.mkdir()
    paths = []
    for i, size in enumerate([(80, 60), (50, 90)]):
        path = folder / f"reference-{i}.png"
        make_reference_image(i, size=size).save(path)
        paths.append(path)
    return paths


def tiny_settings(tmp_path: Path, models: ModelPaths, **last: object) -> Settings:
    # 64 px and few steps: the tiny UNet's native size, a generation is a fraction of a second.
    values = {"steps": 3, "width": 64, "height": 64, **last}
    return Settings(
        models=models,
        models_dir=str(tmp_path / "models"),
        outputs_dir=str(tmp_path / "outputs"),
        library_dir=str(tmp_path / "library"),
        device="cpu",
        last=LastValues(**values),  # type: ignore[arg-type]
    )


@pytest.fixture
def make_window(qtbot, tmp_path: Path) -> Iterator[Callable[..., MainWindow]]:
    """``make_window(settings, settings_path=None, engine_factory=None)``; closed after the test."""
    windows: list[MainWindow] = []

    def make(settings: Settings, settings_path: Path | None = None, **kwargs: object) -> MainWindow:
        window = MainWindow(settings, settings_path, **kwargs)  # type: ignore[arg-type]
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        qtbot.waitUntil(lambda: "Starting" not in window.device_label.text(), timeout=60_000)
        qtbot.waitUntil(lambda: not window.models_loading, timeout=60_000)  # preloaded at startup
        return window

    yield make
    for window in windows:
        window.shutdown()  # stops the worker, download and loader threads (and so asks nothing)
        window.close()


@pytest.fixture
def window(make_window, tmp_path: Path, tiny_models: ModelPaths) -> MainWindow:
    return make_window(tiny_settings(tmp_path, tiny_models), check_network=False)
