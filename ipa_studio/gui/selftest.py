"""``--self-test``: one generation through the real window with built-in tiny models.

It proves what an install needs: Qt can make a window, torch and diffusers load, the worker thread
runs the engine, and a PNG with its settings lands on disk. Nothing is downloaded and nothing of the
user's (settings, outputs) is touched: all of it lives in a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEventLoop
from PySide6.QtWidgets import QApplication

from ipa_studio.core.settings import LastValues, ModelPaths, Settings

if TYPE_CHECKING:
    from ipa_studio.gui.main_window import MainWindow


def build_demo_models(folder: Path) -> ModelPaths:
    """Tiny random SD1.5 / image encoder / IP-Adapter in their real formats, under ``folder``."""
    from ipa_studio.core.models.tiny import build_image_encoder_folder, build_sd15_folder, write_ip_adapter

    base = build_sd15_folder(folder / "tiny-sd15")
    encoder = build_image_encoder_folder(folder / "image_encoder")
    adapter = write_ip_adapter(
        folder / "ip-adapter_tiny.safetensors",
        variant="global",
        sd15_folder=base,
        image_encoder_folder=encoder,
        fmt="safetensors",
    )
    return ModelPaths(str(base), str(adapter), str(encoder))


def demo_settings(folder: Path, models: ModelPaths, **last: object) -> Settings:
    values = {"steps": 4, "width": 64, "height": 64, "seed": 1, "seed_locked": True, **last}
    return Settings(
        models=models,
        models_dir=str(folder / "models"),
        outputs_dir=str(folder / "outputs"),
        library_dir=str(folder / "library"),
        last=LastValues(**values),  # type: ignore[arg-type]
    )


def engine_started(window: MainWindow) -> bool:
    """The worker has started the engine and loaded the chosen models."""
    return not window.models_loading and "Starting" not in window.device_label.text()


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Run the event loop until ``predicate()`` or ``timeout`` seconds."""
    app = QApplication.instance()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)
        time.sleep(0.005)
    return True


def run_self_test(timeout: float = 600.0) -> int:
    from ipa_studio.core.images import read_png_metadata
    from ipa_studio.core.metadata import request_from_metadata
    from ipa_studio.core.models.tiny import make_reference_image
    from ipa_studio.gui.main_window import MainWindow
    from ipa_studio.gui.panels.references import file_urls_mime

    def fail(message: str) -> int:
        print(f"IPA Studio self-test FAILED: {message}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="ipa-studio-self-test-") as tmp:
        folder = Path(tmp)
        print("IPA Studio self-test: building tiny models…", flush=True)
        try:
            models = build_demo_models(folder / "models")
        except Exception as exc:
            return fail(f"the tiny models could not be built ({type(exc).__name__}: {exc})")
        reference = folder / "reference.png"
        make_reference_image(0).save(reference)

        window = MainWindow(demo_settings(folder, models, prompt="self-test"), None, check_network=False)
        window.show()
        outcomes: list[str] = []
        window.generation_ended.connect(outcomes.append)
        try:
            if not wait_until(
                lambda: bool(window.device_label.text()) and "Starting" not in window.device_label.text(),
                timeout,
            ):
                return fail("the engine did not start")
            print(f"IPA Studio self-test: engine on {window.device_label.text()}", flush=True)
            window.references.add_from_mime(file_urls_mime([reference]))
            card = next(iter(window.references.cards.values()), None)
            if card is None or not wait_until(card.has_crop, 60):
                return fail("the reference image was not added: " + window.banner.text())
            job = window.generate()
            if job is None:
                return fail("the window refused to generate: " + window.banner.text())
            if not wait_until(lambda: bool(outcomes), timeout):
                return fail(f"no result within {timeout:.0f} s")
            if outcomes[0] != "finished":
                return fail(f"the generation {outcomes[0]}: {window.banner.text()}")
            pngs = sorted((folder / "outputs").glob("*.png"))
            if not pngs:
                return fail("no PNG was written")
            request = request_from_metadata(read_png_metadata(pngs[0]))
            if request.prompt != "self-test" or len(request.references) != 1:
                return fail("the PNG's settings do not match the request")
            if window.gallery.count() != 1:
                return fail("the picture did not appear in the gallery")
        except Exception as exc:
            return fail(f"{type(exc).__name__}: {exc}")
        finally:
            window.close()
        print(
            f"IPA Studio self-test passed: generated and saved {pngs[0].name} with its settings.", flush=True
        )
    return 0
