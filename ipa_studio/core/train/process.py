"""Training in a separate process: the protocol between the window (or any parent) and the run.

The run is ``python -m ipa_studio.core.train.worker_process SETTINGS.json`` (``worker_command``). A
crash, an out-of-memory kill or a hung driver then ends that process, never the window.

* **stdout** carries one JSON object per line, the events (nothing else is written there):

  ========== =================================================================================
  started    ``settings``, ``environment``, ``run_folder``, ``start_step``, ``total_steps``,
             ``dataset`` (what the scan found), ``references`` (the held-out images' crops)
  step       ``step``, ``total_steps``, ``loss``, ``smoothed``, ``lr``, ``steps_per_s``,
             ``eta_s`` (seconds left at the current pace), ``images_per_s``
  sample     ``step``, ``paths`` (one picture per held-out reference)
  checkpoint ``step``, ``path`` (a folder holding the official-layout adapter)
  paused     ``step``, ``checkpoint`` (saved at the pause)
  resumed    ``step``
  log        ``message``
  finished   ``step``, ``stopped`` (true when stopped early), ``adapter``, ``curves``
  error      ``message``, in the words of the person running it
  ========== =================================================================================

* **stdin** takes one command per line: ``pause``, ``resume``, ``stop``. A pause saves a checkpoint
  and holds the run in memory; ``resume`` continues at the same step with the same weights, optimizer
  state and data order. ``stop`` ends the run at the current step with a checkpoint and the adapter
  files. The end of stdin (the parent went away) counts as ``stop``.
* **stderr** is free text (library warnings, tracebacks); it is also written to ``train.log`` in the
  run folder, and its last lines are the "last words" shown when the process dies without an
  ``error`` event (``describe_ending``).
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EVENTS = ("started", "step", "sample", "checkpoint", "paused", "resumed", "log", "finished", "error")
COMMANDS = ("pause", "resume", "stop")


def worker_command(settings: Path) -> list[str]:
    """The command line of a training process for ``settings`` (a ``TrainConfig`` JSON file)."""
    return [sys.executable, "-m", "ipa_studio.core.train.worker_process", str(settings)]


def parse_event(line: str | bytes) -> dict[str, Any] | None:
    """The event on one stdout line, or None for anything that is not one (never raises)."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("event") not in EVENTS:
        return None
    return event


def last_words(stderr: str, lines: int = 3) -> str:
    """The end of what a process wrote to stderr, without progress-bar noise: the exception line of a
    traceback when there is one, else its last few lines."""
    text = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    if not text:
        return ""
    for line in reversed(text):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return line
    return " / ".join(text[-lines:])


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_ending(
    returncode: int | None,
    *,
    crashed: bool = False,
    stderr: str = "",
    step: int | None = None,
    run_folder: str | Path | None = None,
) -> str:
    """What to tell the person when the training process ended without ``finished`` or ``error``.

    ``returncode`` as ``subprocess`` gives it (negative: killed by that signal); ``crashed`` for
    parents that only know the process did not exit by itself (QProcess's CrashExit).
    """
    where = f" at step {step}" if step else " before its first step"
    if crashed or (returncode is not None and returncode < 0):
        how = f" ({_signal_name(-returncode)})" if returncode is not None and returncode < 0 else ""
        text = (
            f"The training process was ended from outside{how}{where}. When nobody stopped it, the "
            "system most likely ran out of memory: try a smaller batch or resolution, or turn on fp16/bf16."
        )
    else:
        text = f"The training process ended unexpectedly{where} (exit code {returncode})."
    words = last_words(stderr)
    if words:
        text += f" Its last words: {words}"
    if run_folder is not None:
        text += f" Checkpoints and the log are in {run_folder}."
    return text


class TrainingProcess:
    """A training run in a child process, for parents without an event loop (the CLI, tests).

    ``events()`` yields the parsed events as they arrive; ``send`` writes a command.
    """

    def __init__(self, settings: Path) -> None:
        self.proc = subprocess.Popen(
            worker_command(settings),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.stderr_lines: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read_events, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = parse_event(line)
            if event is not None:
                self._queue.put(event)
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def send(self, command: str) -> None:
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command!r}")
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def events(self, timeout: float = 300.0) -> Iterator[dict[str, Any]]:
        """Events until the process closes its stdout; ``queue.Empty`` after ``timeout`` s of silence."""
        while True:
            event = self._queue.get(timeout=timeout)
            if event is None:
                return
            yield event

    def wait(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)
