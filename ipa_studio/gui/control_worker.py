"""Control maps off the GUI thread: preprocessing, ControlNet checks and the list of ControlNets.

One QThread with a FIFO queue, apart from the engine's: a map preview should not wait until the
generation queue has drained, and a generation should not wait for a ZoeDepth run either. Importing
``ipa_studio.core.preprocess`` imports torch and running a detector imports controlnet-aux (seconds),
so both happen here and the GUI thread only ever sees finished results: thumbnails as QImages, the
map saved as a PNG, plain dataclasses. The thread starts with the first job, so people who never add
a control never pay for any of it.

The ``Preprocessors`` service caches every map by (image content, preprocessor, settings); on top of
that, a map job that a newer job for the same control has replaced before it started is dropped,
so dragging through resolutions or switching preprocessors quickly runs only the last choice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QThread, Signal
from PySide6.QtGui import QImage

from ipa_studio.gui.errors import describe_error
from ipa_studio.gui.qimage import pil_to_qimage, thumbnail

log = logging.getLogger("ipa_studio.gui")

THUMB_SIZE = 240
"""Thumbnails are made at twice the size the cards show, so they stay sharp on HiDPI screens."""
VIEW_SIZE = 2048
"""Largest side of the map sent for the large view: a 24-megapixel photo used as its own map would
otherwise travel (and stay in memory) at full size."""
SD15_CROSS_ATTENTION_DIM = 768

ServiceFactory = Callable[[Path, str | None], Any]
"""Makes the preprocessor service, on the worker thread: ``(weights_dir, device) -> Preprocessors``."""


def default_service_factory(weights_dir: Path, device: str | None) -> Any:
    from ipa_studio.core.preprocess import Preprocessors

    return Preprocessors(weights_dir, None if device in (None, "", "auto") else device)


@dataclass(frozen=True)
class MapJob:
    """Make the map of one control: its photo with one preprocessor and its settings."""

    uid: int
    photo: str
    preprocessor: str
    resolution: int
    hands: bool
    face: bool
    maps_dir: str
    """Where maps made by a detector are saved, so the PNGs made with them can name them."""
    want_photo: bool = True
    """Also send the photo's thumbnail (the panel keeps them; a new preprocessor needs none)."""

    @property
    def key(self) -> tuple[str, str, int, bool, bool]:
        return (self.photo, self.preprocessor, self.resolution, self.hands, self.face)


@dataclass(frozen=True)
class MapResult:
    job: MapJob
    map_path: str = ""
    """The map a request uses: the photo itself for the pass-through, else the saved PNG."""
    photo_thumb: QImage | None = None
    map_image: QImage | None = None
    map_thumb: QImage | None = None
    error: str = ""
    photo_unreadable: bool = False
    missing_files: tuple[str, ...] = ()
    missing_folder: str = ""
    downloads: tuple[Any, ...] = ()
    """Catalog entries that download ``missing_files`` (``CatalogEntry``)."""
    ran: bool = False
    """A detector really ran (False: the pass-through or a cached map)."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class ControlNetCheck:
    uid: int
    path: str
    kind: str
    """"openpose", "depth" or "unknown" (the name does not say)."""
    usable: bool
    reason: str


class ControlWorker(QThread):
    """``submit_map`` / ``check_controlnet`` / ``find_controlnets`` from the GUI thread; ``stop()``
    before exit. Results arrive through the signals below."""

    menu_ready = Signal(object)  # dict[str, PreprocessorInfo]; empty when the package cannot load
    map_ready = Signal(object)  # MapResult
    controlnet_checked = Signal(object)  # ControlNetCheck
    controlnets_found = Signal(object)  # list[tuple[str, str]]: (name, folder)

    def __init__(
        self,
        weights_dir: Path,
        device: str | None = None,
        service_factory: ServiceFactory | None = None,
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("ipa-studio-preprocess")
        self.service_factory = service_factory or default_service_factory
        self.device = device
        self.service: Any = None
        self._weights_dir = Path(weights_dir)
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._latest: dict[int, int] = {}  # control uid → sequence number of its newest map job
        self._seq = 0
        self._stopping = False
        self._base_cross: dict[str, int] = {}

    # ------------------------------------------------------------------ GUI-thread API
    def submit_map(self, job: MapJob) -> None:
        with self._lock:
            self._seq += 1
            self._latest[job.uid] = self._seq
            seq = self._seq
        self._put(("map", (seq, job)))

    def forget(self, uid: int) -> None:
        """Drop the queued map job of a control that was removed."""
        with self._lock:
            self._latest[uid] = -1

    def check_controlnet(self, uid: int, path: str, base_model: str) -> None:
        self._put(("check", (uid, path, base_model)))

    def find_controlnets(self, models_dir: Path) -> None:
        self._put(("find", Path(models_dir)))

    def set_weights_dir(self, weights_dir: Path) -> None:
        self._weights_dir = Path(weights_dir)
        if self.isRunning():
            self._queue.put(("weights", Path(weights_dir)))

    @property
    def weights_dir(self) -> Path:
        return self._weights_dir

    def stop(self, timeout_ms: int = 60_000) -> bool:
        """End the thread after the job it is running (a detector cannot be interrupted)."""
        with self._lock:
            self._stopping = True
            self._latest = {uid: -1 for uid in self._latest}
        if not self.isRunning():
            return True
        self._queue.put(None)
        ended = self.wait(timeout_ms)
        if not ended:
            log.error("the preprocessing thread did not stop within %d ms", timeout_ms)
        return ended

    def _put(self, item: tuple[str, Any]) -> None:
        with self._lock:
            if self._stopping:
                return
        self._queue.put(item)
        if not self.isRunning():
            self.start()

    def _superseded(self, seq: int, uid: int) -> bool:
        with self._lock:
            return self._latest.get(uid) != seq

    # ------------------------------------------------------------------ worker thread
    def run(self) -> None:
        try:
            from ipa_studio.core import preprocess

            self.menu_ready.emit(dict(preprocess.PREPROCESSORS))
        except Exception as exc:  # a broken install: the cards say so instead of offering nothing
            log.error("the preprocessors could not be loaded", exc_info=exc)
            self.menu_ready.emit({})
        handlers: dict[str, Callable[[Any], None]] = {
            "map": lambda args: self._make_map(*args),
            "check": lambda args: self._check(*args),
            "find": self._find,
            "weights": self._set_weights,
        }
        while (item := self._queue.get()) is not None:
            what, args = item
            try:
                handlers[what](args)
            except Exception as exc:  # never let one bad job end the thread
                log.error("preprocessing job %s failed", what, exc_info=exc)
        if self.service is not None:
            self.service.unload()  # free the networks on the thread that loaded them
        self.service = None

    def _set_weights(self, weights_dir: Path) -> None:
        if self.service is not None:
            self.service.set_weights_dir(weights_dir)

    def _make_map(self, seq: int, job: MapJob) -> None:
        if self._superseded(seq, job.uid):
            return
        started = time.perf_counter()
        photo_thumb = None
        try:
            from ipa_studio.core.images import load_image

            photo = load_image(job.photo, what="control image")
            if job.want_photo:
                photo_thumb = pil_to_qimage(_fitted(photo, THUMB_SIZE))
        except Exception as exc:
            self.map_ready.emit(
                MapResult(job, error=describe_error(exc, "opening the control photo"), photo_unreadable=True)
            )
            return
        try:
            control_map, ran = self._run(job, photo)
            # The pass-through's map is the photo itself: requests name the photo's own file.
            map_path = job.photo if job.preprocessor == "none" else str(self._save_map(job, control_map))
        except Exception as exc:
            self.map_ready.emit(self._failure(job, exc, photo_thumb))
            return
        full = pil_to_qimage(_fitted(control_map.image, VIEW_SIZE))
        self.map_ready.emit(
            MapResult(
                job,
                map_path=map_path,
                photo_thumb=photo_thumb,
                map_image=full,
                map_thumb=thumbnail(full, THUMB_SIZE),
                ran=ran,
                seconds=time.perf_counter() - started,
            )
        )

    def _run(self, job: MapJob, photo: Any) -> tuple[Any, bool]:
        """(the ``ControlMap``, whether a detector ran)."""
        from ipa_studio.core.preprocess import PreprocessSpec

        if self.service is None:
            self.service = self.service_factory(self._weights_dir, self.device)
        spec = PreprocessSpec(job.preprocessor, job.resolution, job.hands, job.face)
        runs = self.service.stats.runs
        control_map = self.service.run(photo, spec)
        return control_map, self.service.stats.runs > runs

    @staticmethod
    def _failure(job: MapJob, exc: BaseException, photo_thumb: QImage | None) -> MapResult:
        from ipa_studio.core.preprocess import PreprocessorWeightsMissing

        if isinstance(exc, PreprocessorWeightsMissing):
            return MapResult(
                job,
                photo_thumb=photo_thumb,
                error=str(exc),
                missing_files=exc.files,
                missing_folder=str(exc.folder),
                downloads=_download_entries(exc.files),
            )
        return MapResult(job, photo_thumb=photo_thumb, error=describe_error(exc, "making the control map"))

    @staticmethod
    def _save_map(job: MapJob, control_map: Any) -> Path:
        """Save a detector's map under a name made of its source and settings: the same map is
        written once, and "reuse settings" finds it again after the app restarted."""
        from ipa_studio.core.images import save_png

        source = control_map.source_hash
        flags = ("-hands" if job.hands else "") + ("-face" if job.face else "")
        path = Path(job.maps_dir) / f"{job.preprocessor}-{job.resolution}{flags}-{source[:16]}.png"
        if not path.is_file():
            save_png(control_map.image, path, {"Title": f"{job.preprocessor} map of {Path(job.photo).name}"})
        return path

    def _check(self, uid: int, path: str, base_model: str) -> None:
        from ipa_studio.core.preprocess import detect_controlnet

        try:
            info = detect_controlnet(path, base_cross_attention_dim=self._cross_attention_dim(base_model))
        except Exception as exc:
            self.controlnet_checked.emit(
                ControlNetCheck(uid, path, "unknown", False, describe_error(exc, "reading the ControlNet"))
            )
            return
        self.controlnet_checked.emit(ControlNetCheck(uid, path, info.kind, info.usable, info.reason))

    def _cross_attention_dim(self, base_model: str) -> int:
        """The base model's text width, which a ControlNet must share (768 for SD1.5)."""
        if not base_model:
            return SD15_CROSS_ATTENTION_DIM
        if base_model not in self._base_cross:
            cross = None
            try:
                from ipa_studio.core.models.detect import detect

                cross = detect(base_model).details.get("cross_attention_dim")
            except Exception:  # an unreadable base model is reported where it is chosen
                pass
            self._base_cross[base_model] = cross if isinstance(cross, int) else SD15_CROSS_ATTENTION_DIM
        return self._base_cross[base_model]

    def _find(self, models_dir: Path) -> None:
        self.controlnets_found.emit(find_controlnet_folders(models_dir))


def find_controlnet_folders(models_dir: Path) -> list[tuple[str, str]]:
    """ControlNet folders in the models folder (where the catalog downloads them) and in the
    model library's index, as (name, folder), without reading any weights."""
    from ipa_studio.core.preprocess.catalog import CONTROLNETS_SUBFOLDER

    found: dict[str, str] = {}
    root = Path(models_dir) / CONTROLNETS_SUBFOLDER
    try:
        for folder in sorted(root.iterdir()):
            if (folder / "config.json").is_file():
                found[str(folder)] = folder.name
    except OSError:
        pass  # no ControlNet downloaded yet
    try:
        from ipa_studio.core.models.library import ModelLibrary

        for entry in ModelLibrary(models_dir).entries("controlnet", usable_only=True):
            found.setdefault(str(entry.path), entry.name)
    except Exception as exc:  # a damaged index must not hide the folders found above
        log.warning("the model library could not be read: %s", exc)
    return [(name, path) for path, name in found.items()]


def _fitted(image: Any, size: int) -> Any:
    """``image`` scaled down to fit ``size``×``size`` (never up), as a new image."""
    if max(image.size) <= size:
        return image
    from PIL import Image

    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return small


def _download_entries(files: tuple[str, ...]) -> tuple[Any, ...]:
    import json

    from ipa_studio.core.models.catalog import load_catalog
    from ipa_studio.core.preprocess.catalog import annotator_entry_for

    try:
        raw = [annotator_entry_for(name) for name in files]
        return load_catalog(json.dumps({"version": 1, "entries": raw}))
    except Exception:  # no known download: the message still names the files and the folder
        return ()
