"""The one long-lived worker thread that owns the engine.

Loaded weights live on this thread and nowhere else, and jobs run one at a time in the order they
were submitted (a plain FIFO queue). Everything the GUI needs crosses back through signals; the
GUI never calls into the engine. Cancelling sets a flag that the engine polls before every step, so
it takes effect within one step; queued jobs that are cancelled never start.

Everything heavy happens here, not on the GUI thread: importing torch and the engine, loading
models, denoising, decoding, PIL → QImage conversion (previews and thumbnails) and writing the PNGs.
"""

from __future__ import annotations

import copy
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import QThread, Signal
from PySide6.QtGui import QImage

from ipa_studio.core.errors import Cancelled
from ipa_studio.core.request import GenerationRequest, ModelSpec
from ipa_studio.gui.errors import describe_error
from ipa_studio.gui.kept import keep_inputs
from ipa_studio.gui.qimage import pil_to_qimage, thumbnail
from ipa_studio.gui.sweep_job import ScorerCache, ScorerLoad, SweepJob

log = logging.getLogger("ipa_studio.gui")

THUMBNAIL_SIZE = 160

EngineFactory = Callable[[], Any]
"""Makes the engine, on the worker thread. Returns an object with ``generate`` and ``device``."""


@dataclass(frozen=True)
class Job:
    id: int
    request: GenerationRequest
    outputs_dir: Path
    submitted: GenerationRequest | None = None
    """The request as the window sent it, before its inputs were replaced by kept copies."""


@dataclass(frozen=True)
class SavedImage:
    """One finished picture: where it was saved and ready-made images for the GUI."""

    path: Path
    image: QImage
    thumbnail: QImage
    request: GenerationRequest
    index: int
    seconds: float
    notices: tuple[str, ...] = ()
    """What the engine adjusted on the way (e.g. a mask scaled to the picture), to tell the user."""


def default_engine_factory(
    device: str | None = None, precision: str | None = None, library: Path | None = None
) -> EngineFactory:
    """``precision``: "auto" / None (the device's default), "fp32", "bf16" or "fp16". ``library``:
    the reference library's folder; the engine reads and writes the encoder features of the
    pictures saved there, so using a saved reference costs no encoder call."""

    def make() -> Any:
        from ipa_studio.core.devices import parse_precision
        from ipa_studio.core.engine import Engine
        from ipa_studio.core.errors import IPAStudioError
        from ipa_studio.core.references import ReferenceStore

        try:
            dtype = parse_precision(precision)
        except IPAStudioError:  # an unknown name in a hand-edited settings file: the default
            dtype = None
        store = ReferenceStore(library) if library is not None else None
        return Engine(
            device=None if device in (None, "", "auto") else device, dtype=dtype, reference_store=store
        )

    return make


@dataclass(frozen=True)
class _NewEngine:
    """A queue item: replace the engine with one from ``factory`` (another precision)."""

    factory: EngineFactory


class GenerationWorker(QThread):
    """Start with ``start()``; ``submit`` jobs from the GUI thread; ``stop()`` before exit."""

    engine_ready = Signal(str)  # a description of the device, for the status bar
    job_started = Signal(int)  # job id
    # job id, step, total, seconds since the job started, seconds left (-1 = not known yet), preview
    job_progress = Signal(int, int, int, float, float, QImage)
    job_finished = Signal(int, list)  # job id, list[SavedImage]
    job_failed = Signal(int, str)  # job id, a message for people
    job_cancelled = Signal(int)
    models_loaded = Signal(str)  # "" when the preloaded models are ready, else a message for people
    # The λ sweep (its own signals: the window shows it on its own page, not as a generation).
    sweep_started = Signal(int)
    sweep_progress = Signal(int, int, int)  # job id, steps done, steps in all
    sweep_cell = Signal(int, object)  # job id, sweep_job.CellView
    sweep_finished = Signal(int, object)  # job id, sweep_job.SweepOutcome
    sweep_failed = Signal(int, str)
    sweep_cancelled = Signal(int)
    scorer_loaded = Signal(str)  # "" when the sweep's CLIP model is ready, else a message for people

    def __init__(self, engine_factory: EngineFactory | None = None, parent: Any = None) -> None:
        super().__init__(parent)
        self.setObjectName("ipa-studio-engine")
        self._factory = engine_factory or default_engine_factory()
        self._queue: queue.Queue[Job | SweepJob | ScorerLoad | ModelSpec | _NewEngine | None] = queue.Queue()
        self._scorers = ScorerCache()
        self._last_id = 0
        self._engine_error = ""
        self._lock = threading.Lock()
        self._cancelled: set[int] = set()
        self._cancel_below = 0  # every job with a smaller id is cancelled ("cancel all")
        self.engine: Any = None

    # ------------------------------------------------------------------ GUI-thread API
    def submit(self, request: GenerationRequest, outputs_dir: Path) -> int:
        with self._lock:
            self._last_id += 1
            job = Job(self._last_id, request, Path(outputs_dir))
        self._queue.put(job)
        return job.id

    def submit_sweep(
        self,
        request: GenerationRequest,
        strengths: list[float],
        presets: list[Any],
        clip_model: Path,
        outputs_dir: Path,
    ) -> int:
        """Queue a λ sweep (``core.sweep``) of ``request``; it runs after the jobs before it."""
        with self._lock:
            self._last_id += 1
            job = SweepJob(
                self._last_id, request, tuple(strengths), tuple(presets), Path(clip_model), Path(outputs_dir)
            )
        self._queue.put(job)
        return job.id

    def preload_scorer(self, folder: Path) -> None:
        """Load the sweep's CLIP model now, between jobs (see ``sweep_job.ScorerLoad``)."""
        self._queue.put(ScorerLoad(Path(folder)))

    def replace_engine(self, factory: EngineFactory) -> None:
        """Make a new engine from ``factory`` between jobs (after the queued ones), dropping the old
        one's weights first; ``engine_ready`` then says what it runs on."""
        self._queue.put(_NewEngine(factory))

    def preload(self, models: ModelSpec) -> None:
        """Load ``models`` now, between jobs, so the next job starts computing at once.

        Loading is the one phase where library code holds the GIL for tens of milliseconds (the
        tokenizer's Rust constructor: ~40 ms); done ahead, it does not happen during a job.
        """
        self._queue.put(models)

    def cancel(self, job_id: int | None = None) -> None:
        """Cancel one job, or (``None``) the running job and everything queued."""
        with self._lock:
            if job_id is None:
                self._cancel_below = self._last_id + 1
            else:
                self._cancelled.add(job_id)

    def stop(self, timeout_ms: int = 60_000) -> bool:
        """Cancel everything and end the thread; True when it ended within ``timeout_ms``."""
        if not self.isRunning():
            return True
        self.cancel()
        self._queue.put(None)
        ended = self.wait(timeout_ms)
        if not ended:
            log.error("the engine thread did not stop within %d ms", timeout_ms)
        return ended

    def engine_stats(self) -> Any | None:
        """A copy of the engine's work counters (``EngineStats``: files read, cache hits), or None
        before the engine exists. Read it between jobs; the worker changes them while it runs."""
        stats = getattr(self.engine, "stats", None)
        return copy.deepcopy(stats) if stats is not None else None

    def _is_cancelled(self, job_id: int) -> bool:
        with self._lock:
            return job_id < self._cancel_below or job_id in self._cancelled

    # ------------------------------------------------------------------ worker thread
    def _start_engine(self) -> None:
        description = "Starting…"
        try:
            self.engine = self._factory()
            from ipa_studio.core.devices import describe_device

            description = describe_device(self.engine.device)
            dtype = getattr(self.engine, "dtype", None)
            if dtype is not None:
                names = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}
                description += f" · {names.get(str(dtype), str(dtype))}"
            self._engine_error = ""
            _quiet_garbage_collector()
        except Exception as exc:  # a device that is asked for and missing, a broken torch install
            self.engine = None
            self._engine_error = describe_error(exc, "starting the engine")
            description = "No engine: " + self._engine_error
        self.engine_ready.emit(description)

    def run(self) -> None:
        self._start_engine()
        while True:
            job = self._queue.get()
            if job is None:
                break
            if isinstance(job, _NewEngine):
                self.engine = None
                gc.collect()  # the old weights go before the new engine loads any
                self._factory = job.factory
                self._start_engine()
                continue
            if isinstance(job, ModelSpec):
                self._preload(job)
                continue
            if isinstance(job, ScorerLoad):
                self._load_scorer(job.folder)
                continue
            if isinstance(job, SweepJob):
                try:
                    self._run_sweep(job)
                finally:
                    with self._lock:
                        self._cancelled.discard(job.id)
                continue
            try:
                self._run_job(job)
            finally:
                with self._lock:
                    self._cancelled.discard(job.id)
        self.engine = None  # drop the weights on this thread, where they were made

    def _preload(self, models: ModelSpec) -> None:
        if self.engine is None:
            return
        try:
            self.engine.load(GenerationRequest(models=models))
        except Exception as exc:
            self.models_loaded.emit(describe_error(exc, "loading the models"))
            return
        self.models_loaded.emit("")

    def _run_job(self, job: Job) -> None:
        if self._is_cancelled(job.id):
            self.job_cancelled.emit(job.id)
            return
        if self.engine is None:
            self.job_failed.emit(job.id, self._engine_error)
            return
        self.job_started.emit(job.id)
        first_step_at: list[float] = []

        def on_step(info: Any) -> None:
            now = time.perf_counter()
            if not first_step_at:
                first_step_at.append(now)
                left = -1.0
            else:
                # Per-step rate from step 1 on: the time before it (loading, encoding) does not repeat.
                per_step = (now - first_step_at[0]) / max(info.step - 1, 1)
                left = per_step * (info.total - info.step)
            preview = pil_to_qimage(info.preview) if info.preview is not None else QImage()
            self.job_progress.emit(job.id, info.step, info.total, info.elapsed, left, preview)

        try:
            # The saved picture names copies of its inputs, so it can be made again later even
            # when the originals move; the job reads those same copies.
            request, kept_notes = keep_inputs(job.request, job.outputs_dir)
            job = Job(job.id, request, job.outputs_dir, job.request)
            result = self.engine.generate(
                job.request, on_step=on_step, should_cancel=lambda: self._is_cancelled(job.id)
            )
            # A cancel that arrives during the final decode still means "I do not want this".
            if self._is_cancelled(job.id):
                raise Cancelled("Generation cancelled.")
            saved = self._save(job, result.images, result.seconds, (*kept_notes, *result.notices))
        except Cancelled:
            self.job_cancelled.emit(job.id)
            return
        except Exception as exc:
            self.job_failed.emit(job.id, describe_error(exc))
            return
        self.job_finished.emit(job.id, saved)

    def _load_scorer(self, folder: Path) -> None:
        if self.engine is None:
            self.scorer_loaded.emit(self._engine_error)
            return
        try:
            self._scorers.get(folder, self.engine.device)
        except Exception as exc:
            self.scorer_loaded.emit(describe_error(exc, "loading the CLIP model"))
            return
        self.scorer_loaded.emit("")

    def _run_sweep(self, job: SweepJob) -> None:
        from ipa_studio.gui import sweep_job

        if self._is_cancelled(job.id):
            self.sweep_cancelled.emit(job.id)
            return
        if self.engine is None:
            self.sweep_failed.emit(job.id, self._engine_error)
            return
        self.sweep_started.emit(job.id)
        try:
            outcome = sweep_job.run(
                self.engine,
                job,
                self._scorers,
                lambda done, total: self.sweep_progress.emit(job.id, done, total),
                lambda cell: self.sweep_cell.emit(job.id, cell),
                lambda: self._is_cancelled(job.id),
            )
        except Cancelled:
            self.sweep_cancelled.emit(job.id)
            return
        except Exception as exc:
            self.sweep_failed.emit(job.id, describe_error(exc, "making the λ sweep"))
            return
        self.sweep_finished.emit(job.id, outcome)

    def _save(
        self, job: Job, images: list[Any], seconds: float, notices: tuple[str, ...] = ()
    ) -> list[SavedImage]:
        from ipa_studio.core.images import save_png
        from ipa_studio.core.metadata import request_to_metadata

        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        saved: list[SavedImage] = []
        for index, image in enumerate(images):
            extra: dict[str, Any] = {"seconds": round(seconds, 2)}
            if len(images) > 1:
                extra["image_index"] = index
            if job.submitted is not None and job.submitted.references != job.request.references:
                # Where the kept copies came from: for people reading the settings, not for reuse.
                extra["reference_sources"] = [
                    str(r.image) for r in job.submitted.references if isinstance(r.image, (str, Path))
                ]
            path = _free_path(job.outputs_dir / f"{stamp}-{job.request.seed}-{index + 1}.png")
            save_png(image, path, request_to_metadata(job.request, extra=extra))
            qimage = pil_to_qimage(image)
            saved.append(
                SavedImage(
                    path, qimage, thumbnail(qimage, THUMBNAIL_SIZE), job.request, index, seconds, notices
                )
            )
        return saved


def _quiet_garbage_collector() -> None:
    """Keep full garbage collections from freezing the window.

    A full collection walks every tracked object (torch, diffusers and transformers make hundreds
    of thousands) while holding the GIL: measured at 0.3 s, during which the GUI thread cannot run.
    Collect once now, before any job, then freeze the survivors (modules, classes, the engine) so
    later collections only walk what was made since: a few milliseconds.
    """
    gc.collect()
    gc.freeze()


def _free_path(path: Path) -> Path:
    """``path``, or ``name-2.png``, ``name-3.png``… when it exists (two jobs in the same second)."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
