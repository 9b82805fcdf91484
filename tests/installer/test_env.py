"""The children of the launcher get none of its environment, and the person's index settings."""

from __future__ import annotations

import os
from pathlib import Path

from ipa_launcher.env import child_environment, index_settings

BUNDLE = Path("/tmp/_MEIabc123")
APPDIR = Path("/tmp/.mount_IPA-StXyZ")


def test_pyinstaller_library_path_is_replaced_by_the_users_own() -> None:
    env = {
        "LD_LIBRARY_PATH": f"{BUNDLE}{os.pathsep}/opt/mine/lib",
        "LD_LIBRARY_PATH_ORIG": "/opt/mine/lib",
        "HOME": "/home/kim",
    }
    child = child_environment(env, (BUNDLE,))
    assert child["LD_LIBRARY_PATH"] == "/opt/mine/lib"
    assert "LD_LIBRARY_PATH_ORIG" not in child and child["HOME"] == "/home/kim"


def test_library_path_set_only_by_the_launcher_is_removed() -> None:
    child = child_environment({"LD_LIBRARY_PATH": str(BUNDLE), "PATH": "/usr/bin"}, (BUNDLE,))
    assert "LD_LIBRARY_PATH" not in child and child["PATH"] == "/usr/bin"


def test_appimage_and_qt_variables_and_bundle_entries_go() -> None:
    env = {
        "APPDIR": str(APPDIR),
        "APPIMAGE": "/home/kim/IPA-Studio-Installer.AppImage",
        "OWD": "/home/kim",
        "ARGV0": "IPA-Studio-Installer.AppImage",
        "IPA_LAUNCHER_HOME": "/home/kim",
        "QT_PLUGIN_PATH": f"{APPDIR}/usr/plugins",
        "QT_QPA_PLATFORM_PLUGIN_PATH": f"{BUNDLE}/PySide6/plugins/platforms",
        "PATH": f"{APPDIR}/usr/bin{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin",
        "XDG_DATA_DIRS": f"{APPDIR}/usr/share{os.pathsep}/usr/share",
        "PYTHONHOME": str(BUNDLE),
        "LANG": "de_DE.UTF-8",
    }
    child = child_environment(env, (BUNDLE, APPDIR))
    for gone in ("APPDIR", "APPIMAGE", "OWD", "ARGV0", "IPA_LAUNCHER_HOME", "QT_PLUGIN_PATH", "PYTHONHOME"):
        assert gone not in child, gone
    assert "QT_QPA_PLATFORM_PLUGIN_PATH" not in child
    assert child["PATH"] == f"/usr/local/bin{os.pathsep}/usr/bin"
    assert child["XDG_DATA_DIRS"] == "/usr/share"
    assert child["LANG"] == "de_DE.UTF-8"


def test_not_frozen_keeps_the_users_library_path() -> None:
    assert (
        child_environment({"LD_LIBRARY_PATH": "/opt/cuda/lib64"}, ())["LD_LIBRARY_PATH"] == "/opt/cuda/lib64"
    )


def test_pip_config_becomes_uv_options(tmp_path: Path) -> None:
    conf = tmp_path / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "[global]\n"
        "index-url = https://mirror.example/simple\n"
        "extra-index-url =\n    https://extra.example/simple\n    file:///srv/pypi/simple\n"
        "trusted-host = mirror.example\n"
        "[install]\nfind-links = /srv/wheels\n"
    )
    env = {"HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path / "no-etc")}
    settings = index_settings(env, system="linux", home=tmp_path)
    args = list(settings.args)
    assert args[:2] == ["--default-index", "https://mirror.example/simple"]
    assert ["--index", "https://extra.example/simple"] == args[2:4]
    assert ["--index", "file:///srv/pypi/simple"] == args[4:6]
    assert ["--find-links", "/srv/wheels"] == args[6:8]
    assert ["--allow-insecure-host", "mirror.example"] == args[8:10]
    assert args[10:] == ["--index-strategy", "unsafe-best-match"]  # pip's own way of choosing
    assert str(conf) in settings.describe()


def test_pip_environment_variables_win_over_the_file(tmp_path: Path) -> None:
    conf = tmp_path / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[global]\nindex-url = https://file.example/simple\n")
    env = {"HOME": str(tmp_path), "PIP_INDEX_URL": "https://env.example/simple", "PIP_CERT": "/etc/corp.pem"}
    settings = index_settings(env, system="linux", home=tmp_path)
    assert settings.args[:2] == ("--default-index", "https://env.example/simple")
    assert ("SSL_CERT_FILE", "/etc/corp.pem") in settings.env


def test_uv_settings_are_left_to_uv(tmp_path: Path) -> None:
    conf = tmp_path / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[global]\nindex-url = https://pip.example/simple\n")
    env = {"HOME": str(tmp_path), "UV_DEFAULT_INDEX": "https://uv.example/simple"}
    settings = index_settings(env, system="linux", home=tmp_path)
    assert settings.args == () and "UV_DEFAULT_INDEX" in settings.describe()
    uv_toml = tmp_path / ".config" / "uv" / "uv.toml"
    uv_toml.parent.mkdir(parents=True)
    uv_toml.write_text('index-url = "https://uv.example/simple"\n')
    settings = index_settings({"HOME": str(tmp_path)}, system="linux", home=tmp_path)
    assert settings.args == () and str(uv_toml) in settings.describe()


def test_no_settings_means_pypi(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PIP_CONFIG_FILE": os.devnull}
    settings = index_settings(env, system="linux", home=tmp_path)
    assert settings.args == () and "PyPI" in settings.describe()
