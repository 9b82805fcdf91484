"""The environment every child process gets: nothing of the launcher's own, the user's index settings.

A frozen launcher changes its own environment: PyInstaller's bootloader puts its unpacked folder
first on ``LD_LIBRARY_PATH`` (saving the user's value as ``LD_LIBRARY_PATH_ORIG``), and an AppImage's
runtime sets ``APPDIR``, ``APPIMAGE``, ``OWD``. Passed on, the installed app would load the
launcher's copy of Qt instead of its own (a classic crash of bundled launchers), so each child gets
the environment the person started the launcher with.
"""

from __future__ import annotations

import configparser
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PATH_LISTS = (
    "LD_LIBRARY_PATH",
    "DYLD_LIBRARY_PATH",
    "DYLD_FRAMEWORK_PATH",
    "PATH",
    "XDG_DATA_DIRS",
    "QT_PLUGIN_PATH",
    "QML2_IMPORT_PATH",
    "PYTHONPATH",
    "GST_PLUGIN_SYSTEM_PATH",
)
# Set by the launcher's runtime (PyInstaller, the AppImage runtime, Qt) for the launcher only.
LAUNCHER_ONLY = (
    "LD_LIBRARY_PATH_ORIG",
    "DYLD_LIBRARY_PATH_ORIG",
    "_MEIPASS2",
    "_PYI_APPLICATION_HOME_DIR",
    "_PYI_ARCHIVE_FILE",
    "_PYI_PARENT_PROCESS_LEVEL",
    "_PYI_SPLASH_IPC",
    "PYINSTALLER_RESET_ENVIRONMENT",
    "APPDIR",
    "IPA_LAUNCHER_HOME",
    "APPIMAGE",
    "ARGV0",
    "OWD",
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONNOUSERSITE",
    "QT_QPA_PLATFORM_PLUGIN_PATH",
    "QT_PLUGIN_PATH",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
)


def child_environment(
    base: Mapping[str, str] | None = None, bundle_dirs: tuple[Path, ...] | None = None
) -> dict[str, str]:
    """``base`` (default: this process's environment) without anything the launcher added."""
    env = dict(os.environ if base is None else base)
    if bundle_dirs is None:
        from .paths import frozen_bundle_dir

        found = [frozen_bundle_dir()]
        if env.get("APPDIR"):
            found.append(Path(env["APPDIR"]))
        bundle_dirs = tuple(p for p in found if p is not None)
    for var in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH"):
        if f"{var}_ORIG" in env:  # PyInstaller saved the user's own value
            env[var] = env[f"{var}_ORIG"]
        elif bundle_dirs and var in env:
            env[var] = ""  # cleaned below; an empty list is then dropped
    roots = [str(p) for p in bundle_dirs]
    for var in PATH_LISTS:
        if var not in env:
            continue
        kept = [
            entry
            for entry in env[var].split(os.pathsep)
            if entry and not any(entry == r or entry.startswith(r.rstrip("/\\") + os.sep) for r in roots)
        ]
        if kept:
            env[var] = os.pathsep.join(kept)
        else:
            del env[var]
    for var in LAUNCHER_ONLY:
        env.pop(var, None)
    return env


@dataclass(frozen=True)
class IndexSettings:
    """Where packages come from, as uv command-line options, and where that was read."""

    args: tuple[str, ...] = ()
    sources: tuple[str, ...] = field(default=())
    env: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        return "; ".join(self.sources) if self.sources else "PyPI (no index settings found)"


UV_INDEX_VARS = (
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_NO_INDEX",
)


def pip_config_files(system: str, env: Mapping[str, str], home: Path) -> list[Path]:
    """pip's configuration files in the order pip reads them (later ones win)."""
    if env.get("PIP_CONFIG_FILE"):
        if env["PIP_CONFIG_FILE"] == os.devnull:
            return []
        return [Path(env["PIP_CONFIG_FILE"])]
    files: list[Path] = []
    if system == "windows":
        program_data = env.get("PROGRAMDATA", r"C:\ProgramData")
        files.append(Path(program_data) / "pip" / "pip.ini")
        appdata = env.get("APPDATA", str(home / "AppData" / "Roaming"))
        files += [home / "pip" / "pip.ini", Path(appdata) / "pip" / "pip.ini"]
    elif system == "macos":
        files += [Path("/Library/Application Support/pip/pip.conf")]
        files += [home / ".pip" / "pip.conf", home / "Library" / "Application Support" / "pip" / "pip.conf"]
        files.append(Path(env.get("XDG_CONFIG_HOME", str(home / ".config"))) / "pip" / "pip.conf")
    else:
        for d in reversed(env.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")):
            if d:
                files.append(Path(d) / "pip" / "pip.conf")
        files.append(Path("/etc/pip.conf"))
        files.append(home / ".pip" / "pip.conf")
        files.append(Path(env.get("XDG_CONFIG_HOME", str(home / ".config"))) / "pip" / "pip.conf")
    return files


def _split(value: str) -> list[str]:
    return [v for v in shlex.split(value.replace("\n", " ")) if v]


def index_settings(
    env: Mapping[str, str] | None = None, *, system: str, home: Path | None = None
) -> IndexSettings:
    """The person's package index settings, for uv.

    uv reads its own settings (``UV_*`` variables, ``uv.toml``) by itself; when it has none, pip's
    settings (``pip.conf`` / ``pip.ini`` and ``PIP_*`` variables), which uv does not read, are turned
    into uv's options, so a company mirror or a local index configured for pip is used too.
    """
    env = os.environ if env is None else env
    home = home or Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    uv_vars = [v for v in UV_INDEX_VARS if env.get(v)]
    uv_toml = Path(env.get("XDG_CONFIG_HOME", str(home / ".config"))) / "uv" / "uv.toml"
    if system == "windows":
        uv_toml = Path(env.get("APPDATA", str(home / "AppData" / "Roaming"))) / "uv" / "uv.toml"
    uv_file = env.get("UV_CONFIG_FILE")
    if uv_vars or uv_toml.is_file() or uv_file:
        where = [f"{v}" for v in uv_vars] + ([str(uv_toml)] if uv_toml.is_file() else [])
        where += [uv_file] if uv_file else []
        return IndexSettings((), (f"uv's own settings ({', '.join(where)})",))

    values: dict[str, str] = {}
    sources: list[str] = []
    for path in pip_config_files(system, env, home):
        parser = configparser.RawConfigParser()
        try:
            if not parser.read(path, encoding="utf-8"):
                continue
        except (OSError, configparser.Error):
            continue
        found = False
        for section in ("global", "install"):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    values[key.replace("_", "-")] = value
                    found = True
        if found:
            sources.append(str(path))
    for key in ("index-url", "extra-index-url", "find-links", "trusted-host", "no-index", "cert"):
        var = "PIP_" + key.upper().replace("-", "_")
        if env.get(var):
            values[key] = env[var]
            sources.append(var)

    args: list[str] = []
    extra_env: list[tuple[str, str]] = []
    if values.get("index-url"):
        args += ["--default-index", values["index-url"].split()[0]]
    for url in _split(values.get("extra-index-url", "")):
        args += ["--index", url]
    for link in _split(values.get("find-links", "")):
        args += ["--find-links", link]
    for host in _split(values.get("trusted-host", "")):
        args += ["--allow-insecure-host", host]
    if "--index" in args or "--find-links" in args:
        # pip takes the best match across all its indexes; uv by default only the first index that
        # has a package at all. The lock pins every version and hash, so pip's way is safe here.
        args += ["--index-strategy", "unsafe-best-match"]
    if values.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    if values.get("cert"):
        extra_env.append(("SSL_CERT_FILE", values["cert"]))
    if not args and not extra_env:
        sources = []
    described = (f"your pip settings ({', '.join(sources)})",) if sources else ()
    return IndexSettings(tuple(args), described, tuple(extra_env))
