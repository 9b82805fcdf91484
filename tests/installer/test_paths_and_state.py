"""Install-folder checks and the incomplete-install marker."""

from __future__ import annotations

import errno
import os
from collections import namedtuple
from pathlib import Path

import pytest
from ipa_launcher import state
from ipa_launcher.paths import GB, check_folder, default_install_folder

Usage = namedtuple("Usage", "total used free")


def plenty(_: Path) -> Usage:
    return Usage(500 * GB, 100 * GB, 400 * GB)


def codes(problems) -> dict[str, str]:
    return {p.code: p.severity for p in problems}


def test_good_folder_has_no_problems(tmp_path: Path) -> None:
    assert check_folder(tmp_path / "ipa-studio", needed_bytes=6 * GB, system="linux", disk_usage=plenty) == []


def test_spaces_and_non_ascii_are_warned(tmp_path: Path) -> None:
    found = codes(
        check_folder(tmp_path / "My Apps" / "Élodie", needed_bytes=GB, system="linux", disk_usage=plenty)
    )
    assert found == {"spaces": "warning", "non_ascii": "warning"}


def test_windows_long_path_is_refused_unless_long_paths_are_on() -> None:
    deep = "C:\\Users\\someone\\" + "\\".join(["a-rather-long-folder-name"] * 3) + "\\IPAStudio"
    kwargs = {"needed_bytes": GB, "system": "windows", "disk_usage": plenty, "env": {}}
    assert codes(check_folder(deep, long_paths_enabled=lambda: False, **kwargs)).get("long_path") == "error"
    assert "long_path" not in codes(check_folder(deep, long_paths_enabled=lambda: True, **kwargs))
    short = "C:\\IPAStudio"
    assert "long_path" not in codes(check_folder(short, long_paths_enabled=lambda: False, **kwargs))


def test_onedrive_is_warned_by_its_variable_and_by_its_folder_name() -> None:
    env = {"OneDrive": "C:\\Users\\kim\\OneDrive"}
    kwargs = {
        "needed_bytes": GB,
        "system": "windows",
        "disk_usage": plenty,
        "long_paths_enabled": lambda: True,
    }
    by_var = check_folder("C:\\Users\\kim\\OneDrive\\Apps\\IPAStudio", env=env, **kwargs)
    assert codes(by_var).get("synced") == "warning" and "OneDrive" in by_var[0].message
    by_name = check_folder("D:\\OneDrive - Studio Ltd\\IPAStudio", env={}, **kwargs)
    assert codes(by_name).get("synced") == "warning"
    assert "synced" not in codes(check_folder("C:\\IPAStudio", env=env, **kwargs))


def test_free_space_is_checked_on_the_nearest_existing_folder(tmp_path: Path) -> None:
    seen: list[Path] = []

    def small(path: Path) -> Usage:
        seen.append(path)
        return Usage(10 * GB, 8 * GB, 2 * GB)

    problems = check_folder(tmp_path / "not" / "yet", needed_bytes=6 * GB, system="linux", disk_usage=small)
    assert codes(problems) == {"no_space": "error"}
    assert "2.0 GB free" in problems[0].message and "6.0 GB needed" in problems[0].message
    assert seen == [tmp_path]
    tight = check_folder(tmp_path, needed_bytes=int(1.5 * GB), system="linux", disk_usage=small)
    assert codes(tight) == {"little_space": "warning"}


def test_non_empty_foreign_folder_is_refused_but_an_install_is_not(tmp_path: Path) -> None:
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    assert codes(check_folder(tmp_path, needed_bytes=GB, system="linux", disk_usage=plenty)) == {
        "not_empty": "error"
    }
    state.begin(tmp_path, state.InstallRecord(state="incomplete"))
    assert check_folder(tmp_path, needed_bytes=GB, system="linux", disk_usage=plenty) == []


def test_relative_path_is_refused() -> None:
    assert codes(check_folder("ipa", needed_bytes=GB, system="linux", disk_usage=plenty)) == {
        "relative": "error"
    }


@pytest.mark.parametrize("system", ["linux", "windows", "macos"])
def test_default_folder_avoids_every_warning(system: str) -> None:
    env = {"LOCALAPPDATA": "C:\\Users\\kim\\AppData\\Local"} if system == "windows" else {}
    home = Path("C:\\Users\\kim") if system == "windows" else Path("/home/kim")
    folder = str(default_install_folder(system, env, home))
    assert " " not in folder and folder.isascii(), folder


def test_marker_says_incomplete_until_completed(tmp_path: Path) -> None:
    assert state.status(tmp_path) == "absent"
    record = state.begin(tmp_path, state.InstallRecord(state="complete", lock="linux-x86_64-cuda"))
    assert state.status(tmp_path) == "incomplete"  # begin() never trusts what it was given
    record = state.step(tmp_path, record, "packages")
    assert state.read(tmp_path).step == "packages"
    state.fail(tmp_path, record, "disk full")
    assert state.status(tmp_path) == "incomplete" and state.read(tmp_path).error == "disk full"
    state.complete(tmp_path, record)
    assert state.status(tmp_path) == "complete"
    state.begin(tmp_path, record)  # a Repair starts: incomplete again, before anything is touched
    assert state.status(tmp_path) == "incomplete"


def test_damaged_marker_reads_as_incomplete(tmp_path: Path) -> None:
    state.marker_path(tmp_path).write_text('{"state": "compl')
    assert state.status(tmp_path) == "incomplete"


def test_marker_write_failing_on_a_full_disk_keeps_the_old_marker(tmp_path: Path, monkeypatch) -> None:
    record = state.begin(tmp_path, state.InstallRecord(state="incomplete"))
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        state.complete(tmp_path, record)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert state.status(tmp_path) == "incomplete"
    state.fail(tmp_path, record, "x")  # swallowing the error is fine: the disk still says incomplete
