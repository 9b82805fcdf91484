"""File-system care shared by everything that reads or writes the user's files.

- ``special_file_kind``: a FIFO, device or socket passed where a file belongs blocks forever on
  ``open`` (or never ends); callers refuse it before opening.
- Temporary files: every partial write goes to ``temp_path(dest)``, a hidden name beside the target
  that says which process writes it (``.NAME.ipa-HOST-PID-TOKEN.tmp``). ``clean_orphans(folder)``
  removes the ones whose process is gone (killed, crashed, power cut) and never one a live process is
  writing. ``remove_temps_on_termination`` deletes this process's own ones on SIGTERM / SIGHUP.
- ``FileLock``: a cross-process lock (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) for
  read-modify-write of a shared index.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

# ----------------------------------------------------------------------------------- special files

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder ("a named pipe
    (FIFO)", "a socket" …), following symlinks; None otherwise. Never opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    for test, kind in _SPECIAL_KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


# ----------------------------------------------------------------------------------- temporary files

TEMP_SUFFIX = ".tmp"
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TEMP_NAME = re.compile(r"^\..+\.ipa-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]+\.tmp$")
# Someone else's temporary file on a shared folder: its process cannot be asked, so only a very old
# one counts as left behind.
_FOREIGN_HOST_AGE_S = 7 * 24 * 3600

_live: set[Path] = set()
_live_lock = threading.Lock()


def temp_path(dest: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``dest`` that names this process (see ``clean_orphans``)."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.ipa-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return _TEMP_NAME.match(name) is not None


@contextlib.contextmanager
def temporary(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``dest``, removed when the block ends unless it was moved away, and
    removed too when this process is terminated while the block runs."""
    tmp = temp_path(dest)
    with _live_lock:
        _live.add(tmp)
    try:
        yield tmp
    finally:
        _remove(tmp)
        with _live_lock:
            _live.discard(tmp)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this computer (True when it cannot be told)."""
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OSError:
        return True
    return True


def clean_orphans(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and folders in ``folder`` that no live process is writing; return
    them. Only names made by ``temp_path`` are considered."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_NAME.match(name)
        if match is None:
            continue
        path = Path(folder) / name
        if match["host"] == _HOST:
            pid = int(match["pid"])
            if pid == os.getpid() or pid_alive(pid):
                continue
        else:
            try:
                if time.time() - path.lstat().st_mtime < _FOREIGN_HOST_AGE_S:
                    continue
            except OSError:
                continue
        _remove(path)
        if not path.exists():
            removed.append(path)
    return removed


def _remove_live() -> None:
    with _live_lock:
        paths = list(_live)
    for path in paths:
        _remove(path)


atexit.register(_remove_live)
_installed = False


def remove_temps_on_termination() -> None:
    """On SIGTERM / SIGHUP, delete this process's temporary files, then end as the signal would.

    Python's default for these signals ends the process at once, skipping ``finally`` blocks, so a
    half-written file would stay beside its target. Call once, from the main thread.
    """
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is None:
            continue
        previous = signal.getsignal(number)
        if previous not in (signal.SIG_DFL, None):
            continue  # someone chose their own handling; leave it
        signal.signal(number, _on_termination)
    _installed = True


def _on_termination(number: int, frame: FrameType | None) -> None:
    _remove_live()
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


# ----------------------------------------------------------------------------------- locking


class LockTimeout(OSError):
    """The lock stayed taken by another process for longer than the caller would wait."""


class FileLock:
    """An exclusive lock between processes (and threads), held on ``path`` (created if missing).

    Re-entrant within one thread. The operating system releases it when its holder dies, so a killed
    process never leaves it taken. ``FileLock.on(path)`` gives every caller in this process the same
    lock for one path, so nested uses never wait for themselves.
    """

    _shared: dict[Path, FileLock] = {}
    _shared_lock = threading.Lock()

    def __init__(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()

    @classmethod
    def on(cls, path: str | os.PathLike[str], timeout: float = 60.0) -> FileLock:
        key = Path(os.path.abspath(path))
        with cls._shared_lock:
            lock = cls._shared.get(key)
            if lock is None:
                lock = cls._shared[key] = cls(key, timeout)
            return lock

    def __enter__(self) -> FileLock:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            self._local.fd = self._acquire()
        self._local.depth = depth + 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._local.depth -= 1
        if self._local.depth == 0:
            fd = self._local.fd
            self._local.fd = None
            try:
                _unlock(fd)
            finally:
                os.close(fd)

    def _acquire(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        try:
            while not _try_lock(fd):
                if time.monotonic() > deadline:
                    raise LockTimeout(errno.EAGAIN, f"'{self.path}' stayed locked for {self.timeout:.0f} s")
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        except BaseException:
            os.close(fd)
            raise
        return fd


if os.name == "nt":
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
