"""Install, Repair, Update and Uninstall, step by step, with progress, a log and cancel.

Layout of an installation folder::

    ipa-studio-install.json   the marker (state.py): incomplete until the very end
    python/                   a Python uv installed for IPA Studio (when it did not use the system's)
    env/                      the environment: PyTorch, diffusers, PySide6, IPA Studio
    requirements.lock.txt     what was installed: the lock plus the app's wheel, with hashes
    ipa-studio                the start script the shortcuts point at
    .uv-cache/                uv's cache while installing (deleted afterwards)

Models, pictures and settings live in the app's own folders (platformdirs), never in here, so they
survive Repair, Update and Uninstall.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import APP_NAME, state
from .env import IndexSettings, child_environment, index_settings
from .locks import Target
from .paths import GB, check_folder
from .payload import Payload, Wheelhouse
from .shortcuts import app_executable
from .shortcuts import create as create_shortcuts
from .shortcuts import remove as remove_shortcuts

Progress = Callable[[float, str], None]
Log = Callable[[str], None]

VERIFY_SCRIPT = Path(__file__).with_name("verify_child.py")


class Cancelled(Exception):
    pass


class InstallError(Exception):
    """A failure explained in words for the person; the log has the details."""


@dataclass
class Plan:
    action: str  # install | repair | update | uninstall
    folder: Path
    system: str
    device: str = "cpu"
    target: Target | None = None
    python: str = "3.11"
    payload: Payload | None = None
    wheelhouse: Wheelhouse | None = None
    shortcuts: bool = True
    remove_data: frozenset[str] = field(default_factory=frozenset)  # models | pictures | settings
    index: IndexSettings | None = None


def _posix_python(env_dir: Path, system: str) -> Path:
    return env_dir / ("Scripts/python.exe" if system == "windows" else "bin/python")


def folder_size(path: Path) -> int:
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


DISK_FULL = re.compile(r"No space left on device|os error 28|not enough space on the disk|os error 112", re.I)
MISSING = re.compile(
    r"Because (?:`?([A-Za-z0-9_.\-]+)(?:==([^\s`]+))?`? was not found in the "
    r"(?:provided package locations|package registry)|there is no version of `?([A-Za-z0-9_.\-]+)==([^\s`]+))"
)
MISSING_SYNC = re.compile(
    r"([A-Za-z0-9_.\-]+)==([^\s]+) (?:can't be installed because it )?(?:doesn't have|has no) .*wheel", re.I
)
HASH = re.compile(r"Hash mismatch for `([^`]+)`")
# uv names the package either as `name==version` or by its wheel's file name.
BAD_ZIP = re.compile(
    r"Failed to (?:read|extract|unzip)[^\n]*?(?:`?([A-Za-z0-9_.\-]+)==([^\s`]+)|"
    r"\b([A-Za-z0-9_.]+)-(\d[^-\s]*)-[^\s]*\.whl)",
    re.I,
)
NETWORK = re.compile(
    r"dns error|failed to lookup address|Connection refused|timed out|error sending request", re.I
)


def explain_uv_failure(output: str, *, offline: bool, folder: Path) -> str:
    """uv's error output in words an artist understands (the log keeps uv's own)."""
    if DISK_FULL.search(output):
        return disk_full_message(folder)
    match = HASH.search(output)
    if match:
        where = "offline bundle" if offline else "download"
        return (
            f"The file for {match.group(1)} in the {where} is damaged: its checksum does not match the "
            "one IPA Studio expects. "
            + (
                "Copy the offline bundle again, then choose Repair."
                if offline
                else "Choose Repair to try again."
            )
        )
    match = BAD_ZIP.search(output)
    if match:
        name, version = [g for g in match.groups() if g][:2]
        return f"The file for {name} {version} could not be unpacked (it is damaged or cut short). " + (
            "Copy the offline bundle again, then choose Repair." if offline else "Choose Repair to try again."
        )
    match = MISSING.search(output) or MISSING_SYNC.search(output)
    if match:
        groups = [g for g in match.groups() if g]
        if len(groups) == 1:  # the version is in "you require NAME==VERSION", maybe on the next line
            pinned = re.search(rf"require\s+`?{re.escape(groups[0])}==([^\s`,]+)", output)
            groups += [pinned.group(1)] if pinned else []
        name = " ".join(groups[:2])
        if offline:
            return (
                f"The offline bundle is incomplete: {name} is missing from it. Copy the whole bundle again "
                "(the wheelhouse folder), then choose Repair."
            )
        return (
            f"{name} could not be found on the package index. Check the index settings, then choose Repair."
        )
    if NETWORK.search(output):
        return (
            "The package index could not be reached. Check the internet connection (or a proxy), or use the "
            "offline bundle, then choose Repair."
        )
    tail = [line.strip() for line in output.strip().splitlines() if line.strip()][-3:]
    return "Installing the packages failed: " + " ".join(tail)


def disk_full_message(folder: Path) -> str:
    try:
        free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free / GB
        have = f" ({free:.1f} GB free now)"
    except (OSError, StopIteration):
        have = ""
    return (
        f"The disk holding {folder} is full{have}. The installation is not finished and will not start. "
        "Free some space, then choose Repair."
    )


class Runner:
    """Carries out one :class:`Plan`. ``run`` raises :class:`InstallError` or :class:`Cancelled`."""

    verify_script = VERIFY_SCRIPT  # tests of the sequence around it may swap in a quicker one

    WEIGHTS = {
        "check": 0.02,
        "python": 0.08,
        "packages": 0.70,
        "verify": 0.15,
        "shortcuts": 0.03,
        "finish": 0.02,
    }

    def __init__(
        self,
        plan: Plan,
        on_progress: Progress | None = None,
        on_log: Log | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.plan = plan
        self.on_progress = on_progress or (lambda f, s: None)
        self.on_log = on_log or (lambda line: None)
        self.cancel = cancel or threading.Event()
        self.record: state.InstallRecord | None = None
        self._done = 0.0
        self.env = child_environment()
        self.timings: dict[str, float] = {}

    # -- plumbing -------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        self.on_log(line.rstrip("\n"))

    def _step(self, key: str, text: str) -> None:
        self.check_cancel()
        self.on_progress(self._done, text)
        self.log(f"== {text}")
        self._current = (key, text, time.monotonic())
        if self.record is not None:
            self.record = state.step(self.plan.folder, self.record, key)

    def _end_step(self) -> None:
        key, _, started = self._current
        self.timings[key] = round(time.monotonic() - started, 1)
        self._done += self.WEIGHTS.get(key, 0.0)
        self.on_progress(min(self._done, 1.0), self._current[1])

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()

    def run_process(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        progress: Callable[[], float] | None = None,
        weight: float = 0.0,
    ) -> tuple[int, str]:
        """Run ``argv``, streaming its output to the log; killed (with its children) on cancel."""
        self.log("$ " + " ".join(str(a) for a in argv))
        kwargs: dict = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(
                subprocess, "CREATE_NO_WINDOW", 0
            )
        else:
            kwargs["start_new_session"] = True
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or self.env,
            cwd=str(self.plan.folder),
            text=True,
            encoding="utf-8",
            errors="replace",
            **kwargs,
        )
        lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                self.log(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        started = time.monotonic()
        last_probe = 0.0
        try:
            while proc.poll() is None:
                if self.cancel.is_set():
                    self._kill(proc)
                    raise Cancelled()
                if timeout is not None and time.monotonic() - started > timeout:
                    self._kill(proc)
                    raise InstallError(f"{Path(argv[0]).name} did not finish within {timeout:.0f} s.")
                if progress is not None and time.monotonic() - last_probe > 1.5:
                    last_probe = time.monotonic()
                    self.on_progress(self._done + weight * max(0.0, min(progress(), 0.99)), self._current[1])
                time.sleep(0.1)
        finally:
            reader.join(timeout=5)
        return proc.returncode, "".join(lines)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            if os.name == "nt":
                proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            else:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
        proc.wait()

    # -- the actions ----------------------------------------------------------------------------
    def run(self) -> state.InstallRecord | None:
        plan = self.plan
        try:
            if plan.action == "uninstall":
                self.uninstall()
                return None
            return self.install()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._fail(disk_full_message(plan.folder))
            self._fail(f"{exc.strerror or exc} ({exc.filename or plan.folder})")
        except InstallError as exc:
            self._fail(str(exc))
        except Cancelled:
            self._fail("Cancelled. The installation is not finished; run the installer again to complete it.")
            raise
        raise AssertionError("unreachable")

    def _fail(self, message: str) -> None:
        self.log("!! " + message)
        if self.record is not None and self.plan.action != "uninstall":
            self.record = state.fail(self.plan.folder, self.record, message)
        raise InstallError(message)

    def install(self) -> state.InstallRecord:
        plan = self.plan
        assert plan.target is not None and plan.payload is not None
        folder = plan.folder
        offline = plan.wheelhouse is not None

        self._step("check", "Checking the folder")
        if plan.wheelhouse and plan.wheelhouse.lock != plan.target.name:
            raise InstallError(
                f"The offline bundle was made for {plan.wheelhouse.lock}, but this computer needs "
                f"{plan.target.name}. Use the offline bundle made for it."
            )
        existing = state.read(folder)
        needed = plan.target.installed_bytes
        if plan.action in ("repair", "update") and existing is not None:
            needed = max(0, needed - folder_size(folder / "env"))  # its old files are replaced in place
        problems = [
            p for p in check_folder(folder, needed_bytes=needed, system=plan.system) if p.severity == "error"
        ]
        if plan.action != "install" or existing is not None:
            problems = [p for p in problems if p.code != "not_empty"]
        if problems:
            raise InstallError(" ".join(p.message for p in problems))
        self.record = state.begin(
            folder,
            state.InstallRecord(
                state="incomplete",
                action=plan.action,
                app_version=_wheel_version(plan.payload.app_wheel),
                lock=plan.target.name,
                lock_sha256=plan.target.sha256(),
                device=plan.device,
                shortcuts=list(existing.shortcuts) if existing else [],
            ),
        )
        # No shortcut may point at the installation while it is being changed.
        remove_shortcuts(self.record.shortcuts)
        self.record = replace(self.record, shortcuts=[])
        self._end_step()

        cache = folder / ".uv-cache"
        uv_env = dict(self.env)
        uv_env.update(
            UV_CACHE_DIR=str(cache),
            UV_PYTHON_INSTALL_DIR=str(folder / "python"),
            UV_NO_PROGRESS="1",
            UV_LINK_MODE="hardlink" if plan.system != "windows" else "copy",
            NO_COLOR="1",
        )
        for key, value in plan.index.env if plan.index else ():
            uv_env[key] = value
        offline_args: list[str] = []
        if offline:
            assert plan.wheelhouse is not None
            offline_args = ["--offline", "--no-index", "--find-links", str(plan.wheelhouse.wheels)]
            uv_env["UV_PYTHON_DOWNLOADS"] = "never" if plan.wheelhouse.python_mirror is None else "manual"
        uv = str(plan.payload.uv)

        self._step("python", f"Preparing Python {plan.python}")
        env_dir = folder / "env"
        if plan.action == "repair" and env_dir.exists():
            self.log(f"Removing the old environment {env_dir}")
            shutil.rmtree(env_dir)
        python = self._python(uv, uv_env, offline)
        if not env_dir.exists():
            code, out = self.run_process([uv, "venv", "--python", python, str(env_dir)], env=uv_env)
            if code != 0:
                raise InstallError(explain_uv_failure(out, offline=offline, folder=folder))
        if (folder / "python").is_dir() and not any((folder / "python").iterdir()):
            (folder / "python").rmdir()  # uv made it, but found no Python to put there
        self.record = replace(self.record, python=python)
        self._end_step()

        self._step(
            "packages", "Installing PyTorch and IPA Studio" + (" from the offline bundle" if offline else "")
        )
        requirements = folder / "requirements.lock.txt"
        requirements.write_text(self._requirements(), encoding="utf-8")
        index_args = [] if offline or plan.index is None else list(plan.index.args)
        # uv first unpacks every wheel into its cache, then links the files into the environment:
        # both folders grow by about the installed size, one after the other.
        before = folder_size(env_dir) + folder_size(cache)
        expected = max(2 * plan.target.installed_bytes - before, 1)
        command = [
            uv, "pip", "sync", str(requirements),
            "--python", str(_posix_python(env_dir, plan.system)),
            "--require-hashes",
            "--strict",
            *offline_args,
            *index_args,
        ]  # fmt: skip
        if plan.action == "repair":
            command.append("--reinstall")
        else:  # an updated app may keep its version number; its wheel is small, so always replace it
            command += ["--reinstall-package", "ipa-studio"]
        code, out = self.run_process(
            command,
            env=uv_env,
            progress=lambda: (folder_size(env_dir) + folder_size(cache) - before) / expected,
            weight=self.WEIGHTS["packages"],
        )
        if code != 0:
            raise InstallError(explain_uv_failure(out, offline=offline, folder=folder))
        self._end_step()

        self._step("verify", f"Checking that IPA Studio works on the {_device_words(plan.device)}")
        self.verify()
        self._end_step()

        if plan.shortcuts:
            self._step("shortcuts", "Creating the shortcuts")
            made = create_shortcuts(folder, plan.system, plan.payload.icons_dir)
            self.record = replace(self.record, shortcuts=[str(p) for p in made])
            for path in made:
                self.log(f"created {path}")
            self._end_step()
        else:
            self._done += self.WEIGHTS["shortcuts"]

        self._step("finish", "Finishing")
        self.record = state.complete(folder, self.record)
        state.remember(folder)
        shutil.rmtree(cache, ignore_errors=True)  # the environment holds its own (hard-linked) copies
        self._end_step()
        self.on_progress(1.0, f"{APP_NAME} is installed")
        self.log(f"done: {APP_NAME} {self.record.app_version} for {plan.device} in {folder}")
        return self.record

    def _python(self, uv: str, uv_env: dict[str, str], offline: bool) -> str:
        """A Python for the environment: uv's own for IPA Studio when it can have one (from the
        offline bundle's mirror, or downloaded), else one installed on the system."""
        plan = self.plan
        version = plan.python
        install = [uv, "python", "install", version]
        if offline and plan.wheelhouse is not None and plan.wheelhouse.python_mirror is not None:
            install += ["--mirror", plan.wheelhouse.python_mirror.as_uri()]
        if not offline or (plan.wheelhouse is not None and plan.wheelhouse.python_mirror is not None):
            code, out = self.run_process(install, env=uv_env, timeout=900)
            if code == 0:
                found = self._find_python(uv, uv_env, ["--managed-python"])
                if found:
                    return found
            self.log("(no Python could be installed for IPA Studio; looking for one on the system)")
        found = self._find_python(uv, uv_env, [])
        if not found:
            raise InstallError(
                f"Python {version} was not found on this computer"
                + (" and the offline bundle holds none." if offline else " and could not be downloaded.")
            )
        return found

    def _find_python(self, uv: str, uv_env: dict[str, str], extra: list[str]) -> str | None:
        code, out = self.run_process([uv, "python", "find", self.plan.python, *extra], env=uv_env)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        return lines[-1] if code == 0 and lines else None

    def _requirements(self) -> str:
        plan = self.plan
        assert plan.target is not None and plan.target.file is not None and plan.payload is not None
        wheel = plan.payload.app_wheel
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        return (
            plan.target.file.read_text(encoding="utf-8").rstrip("\n")
            + f"\n# {APP_NAME} itself, from the installer\n"
            + f"ipa-studio @ {wheel.resolve().as_uri()} \\\n    --hash=sha256:{digest}\n"
        )

    def verify(self) -> dict:
        plan = self.plan
        python = _posix_python(plan.folder / "env", plan.system)
        env = dict(self.env)
        env["QT_QPA_PLATFORM"] = "offscreen"  # imports Qt's libraries without needing a screen
        launcher_dirs = [str(d) for d in _launcher_dirs()]
        code, out = self.run_process(
            [python, "-I", self.verify_script, plan.device, *launcher_dirs], env=env, timeout=900
        )
        report: dict = {}
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                try:
                    report = json.loads(line)
                    break
                except ValueError:
                    continue
        if code != 0 or not report.get("ok"):
            error = report.get("error") or out.strip().splitlines()[-1:] or ["no answer"]
            if DISK_FULL.search(out):
                raise InstallError(disk_full_message(plan.folder))
            stage = report.get("stage", "checking the environment")
            raise InstallError(f"The installed environment does not work ({stage}): {error}")
        self.log(
            f"verified: torch {report.get('torch')} on {report.get('device')} {report.get('gpu') or ''}, "
            f"Qt {report.get('qt')}, in {report.get('seconds')} s"
        )
        return report

    def uninstall(self) -> None:
        plan = self.plan
        folder = plan.folder
        self._step("check", "Checking the installation")
        record = state.read(folder)
        if record is None:
            raise InstallError(f"No {APP_NAME} installation was found in {folder}.")
        self.record = state.mark_uninstalling(folder, record)
        self._end_step()
        self._step("shortcuts", "Removing the shortcuts")
        remove_shortcuts(record.shortcuts)
        self._end_step()
        self._step("packages", f"Removing {APP_NAME}")
        for name in ("env", "python", ".uv-cache"):
            if (folder / name).exists():
                self.log(f"removing {folder / name}")
                shutil.rmtree(folder / name)
        for name in ("requirements.lock.txt", "ipa-studio", "IPA Studio.cmd", "ipa-studio.ico"):
            (folder / name).unlink(missing_ok=True)
        self._end_step()
        self._step(
            "finish",
            "Removing your data as asked"
            if plan.remove_data
            else "Keeping your models, pictures and settings",
        )
        for kind, path in user_data_folders().items():
            if kind in plan.remove_data and path.exists():
                self.log(f"removing your {kind}: {path}")
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                self.log(f"kept your {kind}: {path}")
        state.marker_path(folder).unlink(missing_ok=True)
        state.forget(folder)
        try:
            folder.rmdir()  # only when nothing else is left in it
        except OSError:
            pass
        self._end_step()
        self.on_progress(1.0, f"{APP_NAME} was removed")


def _device_words(device: str) -> str:
    return {"cuda": "NVIDIA GPU", "mps": "Apple GPU", "cpu": "CPU"}.get(device, device)


def _launcher_dirs() -> list[Path]:
    from .paths import frozen_bundle_dir

    dirs = [frozen_bundle_dir()]
    if os.environ.get("APPDIR"):
        dirs.append(Path(os.environ["APPDIR"]))
    return [d for d in dirs if d is not None]


def _wheel_version(wheel: Path) -> str:
    parts = wheel.name.split("-")
    return parts[1] if len(parts) > 2 else ""


def user_data_folders(settings_file: Path | None = None) -> dict[str, Path]:
    """The app's folders for models, pictures and settings, as its settings say (or their defaults)."""
    import platformdirs

    config = platformdirs.user_config_path(APP_NAME, appauthor=False)
    settings_file = settings_file or config / "settings.json"
    try:
        data = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    models = data.get("models_dir") or str(platformdirs.user_data_path(APP_NAME, appauthor=False) / "models")
    pictures = data.get("outputs_dir") or str(platformdirs.user_pictures_path() / APP_NAME)
    return {
        "models": Path(models).expanduser(),
        "pictures": Path(pictures).expanduser(),
        "settings": config,
    }


def start_app(folder: Path, system: str, extra_args: Sequence[str] = ()) -> subprocess.Popen:
    """Start the installed app, detached, with none of the launcher's environment."""
    if state.status(folder) != "complete":
        raise InstallError(f"{APP_NAME} is not completely installed in {folder}: choose Repair.")
    kwargs: dict = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(
        [str(app_executable(folder, system)), *extra_args],
        env=child_environment(),
        cwd=str(Path.home()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kwargs,
    )


def default_index(system: str) -> IndexSettings:
    return index_settings(system=system)
