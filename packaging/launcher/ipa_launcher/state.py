"""The install marker: the one file that says whether an installation is finished.

It is written *before* anything else is touched, saying "incomplete", and rewritten as "complete"
only after the environment passed its check in a child process and the shortcuts exist. A crash, a
cancel, a full disk or a power cut in between therefore leaves an installation that says it is
unfinished, and the launcher offers Repair instead of starting a half-working app.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

MARKER = "ipa-studio-install.json"
FORMAT = 1


@dataclass(frozen=True)
class InstallRecord:
    state: str  # "incomplete" | "complete" | "uninstalling"
    action: str = "install"  # what was last started: install | repair | update | uninstall
    app_version: str = ""
    lock: str = ""  # target name, e.g. linux-x86_64-cuda
    lock_sha256: str = ""
    device: str = ""
    python: str = ""
    step: str = ""  # the last step that was reached
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    shortcuts: list[str] = field(default_factory=list)


def marker_path(folder: Path) -> Path:
    return Path(folder) / MARKER


def _write(folder: Path, record: InstallRecord) -> None:
    # Written to a temporary file, flushed to disk and renamed: the marker is either the old one or
    # the new one, never a truncated mix (a full disk fails the write, not the rename).
    path = marker_path(folder)
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps({"format": FORMAT, **asdict(record)}, indent=2)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def read(folder: Path) -> InstallRecord | None:
    """The marker in ``folder``; None when there is none. An unreadable one reads as incomplete."""
    path = marker_path(folder)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw.pop("format", None)
        known = {k: v for k, v in raw.items() if k in InstallRecord.__dataclass_fields__}
        return InstallRecord(**known)
    except (OSError, ValueError, TypeError):
        return InstallRecord(state="incomplete", error="the install marker could not be read")


def status(folder: Path) -> str:
    """ "absent", "incomplete" or "complete"."""
    record = read(folder)
    if record is None:
        return "absent"
    return "complete" if record.state == "complete" else "incomplete"


def begin(folder: Path, record: InstallRecord) -> InstallRecord:
    Path(folder).mkdir(parents=True, exist_ok=True)
    record = replace(record, state="incomplete", started=time.time(), finished=0.0, error="")
    _write(folder, record)
    return record


def step(folder: Path, record: InstallRecord, name: str) -> InstallRecord:
    record = replace(record, step=name)
    try:
        _write(folder, record)
    except OSError:
        pass  # the previous marker (still "incomplete") stays; the step itself will report the disk
    return record


def fail(folder: Path, record: InstallRecord, message: str) -> InstallRecord:
    record = replace(record, state="incomplete", error=message)
    try:
        _write(folder, record)
    except OSError:
        pass  # a full disk: the marker on disk already says "incomplete"
    return record


def complete(folder: Path, record: InstallRecord) -> InstallRecord:
    record = replace(record, state="complete", error="", finished=time.time())
    _write(folder, record)
    return record


def mark_uninstalling(folder: Path, record: InstallRecord) -> InstallRecord:
    record = replace(record, state="uninstalling", action="uninstall")
    _write(folder, record)
    return record


def _registry() -> Path:
    import platformdirs

    return platformdirs.user_config_path("IPA Studio", appauthor=False) / "installations.json"


def known_installs() -> list[Path]:
    """Folders the launcher installed into on this account (finished or not)."""
    try:
        folders = json.loads(_registry().read_text(encoding="utf-8")).get("folders", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [Path(f) for f in folders if marker_path(Path(f)).exists()]


def _save_registry(folders: list[Path]) -> None:
    path = _registry()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"folders": [str(f) for f in folders]}, indent=2), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # only a convenience: the launcher also looks in the default folder


def remember(folder: Path) -> None:
    folders = [f for f in known_installs() if f != Path(folder)]
    _save_registry([Path(folder), *folders])


def forget(folder: Path) -> None:
    _save_registry([f for f in known_installs() if f != Path(folder)])
