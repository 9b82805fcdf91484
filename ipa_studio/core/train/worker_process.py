"""The training process: ``python -m ipa_studio.core.train.worker_process SETTINGS.json``.

Speaks the protocol of ``process.py``: events as JSON lines on stdout, commands on stdin. Everything
else that would reach stdout (library prints, C extensions) goes to stderr, so the event stream stays
parseable; stderr is copied to ``train.log`` in the run folder.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from .curves import write_curves

SMOOTHING = 0.9  # the weight of the exponential moving average of the loss (curves.smoothed)


class _Tee:
    """stderr written to the terminal (the parent's pipe) and to the run's log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        for target in (self.stream, self.log):
            try:
                target.write(text)
                target.flush()
            except (OSError, ValueError):
                pass  # a closed pipe must not end the run
        return len(text)

    def flush(self) -> None:
        for target in (self.stream, self.log):
            try:
                target.flush()
            except (OSError, ValueError):
                pass

    def isatty(self) -> bool:
        return False


class Control:
    """Commands from stdin, read on a thread; the training loop asks between steps."""

    def __init__(self, stream: TextIO) -> None:
        self._cond = threading.Condition()
        self.pause = False
        self.stop = False
        threading.Thread(target=self._read, args=(stream,), daemon=True, name="train-control").start()

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                command = line.strip().lower()
                with self._cond:
                    if command == "pause":
                        self.pause = True
                    elif command == "resume":
                        self.pause = False
                    elif command == "stop":
                        self.stop = True
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        with self._cond:  # the parent is gone: nobody can resume or watch, end the run cleanly
            self.stop = True
            self._cond.notify_all()

    def wait_while_paused(self) -> None:
        with self._cond:
            while self.pause and not self.stop:
                self._cond.wait()


class Reporter:
    """Turns the trainer's callbacks into events and keeps the series for the curves."""

    def __init__(self, events: TextIO, output: Path, total: int) -> None:
        self.events, self.output, self.total = events, output, total
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.rates: list[float] = []
        self._average = 0.0
        self._count = 0
        self._last_time: float | None = None
        self._speed: float | None = None
        self.step = 0

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields})
        try:
            self.events.write(line + "\n")
            self.events.flush()
        except (OSError, ValueError):
            pass  # the parent stopped reading; the run still writes its folder
        with (self.output / "events.jsonl").open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def on_step(self, step: int, loss: float, lr: float, images_per_s: float) -> None:
        now = time.perf_counter()
        if self._last_time is not None:
            rate = 1.0 / max(now - self._last_time, 1e-9)
            self._speed = rate if self._speed is None else 0.8 * self._speed + 0.2 * rate
        self._last_time = now
        self.step = step
        self.steps.append(step)
        self.losses.append(loss)
        self.rates.append(lr)
        self._count += 1
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smooth = self._average / (1 - SMOOTHING**self._count)
        eta = (self.total - step) / self._speed if self._speed else None
        self.emit(
            "step",
            step=step,
            total_steps=self.total,
            loss=loss,
            smoothed=smooth,
            lr=lr,
            steps_per_s=self._speed,
            eta_s=eta,
            images_per_s=images_per_s,
        )

    def curves(self) -> Path:
        self.load_history()
        return write_curves(self.output / "curves.png", self.steps, self.losses, self.rates)

    def load_history(self) -> None:
        """A resumed run draws its whole history: the steps before the resume are in the log."""
        if not self.steps or self.steps[0] <= 1:
            return
        log = self.output / "train_log.jsonl"
        if not log.is_file():
            return
        earlier = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("step", 0) < self.steps[0]:
                earlier.append(entry)
        self.steps[:0] = [e["step"] for e in earlier]
        self.losses[:0] = [e["loss"] for e in earlier]
        self.rates[:0] = [self.rates[0]] * len(earlier)


def plain_message(exc: BaseException, run_folder: Path | None) -> str:
    """The error event's text: the project's own errors as they are, the rest explained."""
    from ipa_studio.core.errors import IPAStudioError

    if isinstance(exc, IPAStudioError):
        return str(exc)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return (
            "Training ran out of memory. Lower the batch size or the resolution, use fp16 or bf16, "
            "or close other programs that use the graphics card."
        )
    where = f" The details are in {run_folder / 'train.log'}." if run_folder is not None else ""
    return f"Training stopped because of an unexpected error: {type(exc).__name__}: {first}.{where}"


def run(settings_path: Path, events: TextIO, commands: TextIO) -> int:
    from ipa_studio.core.train.recipe import TrainingError
    from ipa_studio.core.train.trainer import TrainConfig, Trainer, environment_versions

    try:
        data = json.loads(settings_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"The training settings '{settings_path}' cannot be read: {exc}.") from None
    if not isinstance(data, dict):
        raise TrainingError(f"The training settings '{settings_path}' are not a JSON object.")
    config = TrainConfig.from_json(data)
    config.progress = False  # the events are the progress; no tqdm bar in the log
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(events, output, config.max_steps)
    control = Control(commands)

    class _Trainer(Trainer):
        def log(self, message: str) -> None:
            reporter.emit("log", message=message)

    trainer = _Trainer(config)
    reporter.emit(
        "started",
        settings=config.to_json(),
        environment=environment_versions(),
        run_folder=str(output),
        start_step=trainer.state.step,
        total_steps=config.max_steps,
        dataset=trainer.scan.describe(),
        references=[str(p) for p in trainer.prepare_samples()],
    )

    def on_step(log: Any) -> bool:
        reporter.on_step(log.step, log.loss, log.learning_rate, log.images_per_second)
        if control.pause and not control.stop:
            folder = trainer.save_checkpoint()
            reporter.curves()
            reporter.emit("paused", step=log.step, checkpoint=str(folder))
            control.wait_while_paused()
            if not control.stop:
                reporter.emit("resumed", step=log.step)
                reporter._last_time = None  # the pause is not part of the pace
        return control.stop

    def on_checkpoint(step: int, folder: Path) -> None:
        reporter.emit("checkpoint", step=step, path=str(folder))
        reporter.curves()

    def on_samples(step: int, paths: list[Path]) -> None:
        reporter.emit("sample", step=step, paths=[str(p) for p in paths])

    if control.stop:  # stopped while the models were loading
        reporter.emit("finished", step=trainer.state.step, stopped=True, adapter=None, curves=None)
        return 0
    result = trainer.run(on_step, on_checkpoint=on_checkpoint, on_samples=on_samples)
    curves = reporter.curves() if reporter.steps else None
    reporter.emit(
        "finished",
        step=result.steps,
        stopped=result.steps < config.max_steps,
        adapter=str(result.adapter_files[0]),
        curves=str(curves) if curves else None,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ipa_studio.core.train.worker_process SETTINGS.json", file=sys.stderr)
        return 2
    settings_path = Path(args[0])
    # The events keep the real stdout; anything else printed (by Python or C code) goes to stderr.
    events = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    run_folder: Path | None = None
    log_file: TextIO | None = None
    try:
        try:
            run_folder = Path(json.loads(settings_path.read_text(encoding="utf-8"))["output"])
            run_folder.mkdir(parents=True, exist_ok=True)
            log_file = (run_folder / "train.log").open("a", encoding="utf-8")
            sys.stderr = _Tee(sys.__stderr__, log_file)  # type: ignore[assignment]
        except (OSError, ValueError, KeyError, TypeError):
            run_folder = None  # reported by run() below in its own words
        return run(settings_path, events, sys.stdin)
    except BaseException as exc:  # noqa: BLE001 - everything becomes the error event
        traceback.print_exc()
        message = plain_message(exc, run_folder)
        if isinstance(exc, KeyboardInterrupt):
            message = "Training was interrupted."
        line = json.dumps({"event": "error", "message": message})
        try:
            events.write(line + "\n")
            events.flush()
        except (OSError, ValueError):
            pass
        if run_folder is not None:
            try:
                with (run_folder / "events.jsonl").open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError:
                pass
        return 1
    finally:
        if log_file is not None:
            sys.stderr = sys.__stderr__
            log_file.close()


if __name__ == "__main__":
    sys.exit(main())
