"""``ipa-studio models list | add | remove | verify | inspect | catalog``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipa_studio.cli import main
from tests.fixtures.checkpoints import sdxl_shapes, write_shapes_only


def _models(library: Path, *args: str) -> int:
    return main(["models", "--library", str(library), *args])


def test_add_list_verify_remove(
    tmp_path: Path, tiny_adapters: dict, tiny_image_encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = tmp_path / "models"
    adapter = tiny_adapters[("plus", "safetensors")]
    sdxl = write_shapes_only(tmp_path / "some-xl-model.safetensors", sdxl_shapes())

    assert _models(lib, "add", str(adapter), "--name", "plus") == 0
    assert "added 'plus': IP-Adapter plus" in capsys.readouterr().out
    assert _models(lib, "add", str(tiny_image_encoder)) == 0
    assert _models(lib, "add", str(sdxl)) == 0
    assert "cannot use it: SDXL checkpoint: IPA Studio runs SD1.5 models" in capsys.readouterr().err

    assert _models(lib, "list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("plus ") and line.endswith("ok") for line in lines)
    assert any("some-xl-model" in line and "NOT USABLE: SDXL checkpoint" in line for line in lines)

    assert _models(lib, "list", "--usable", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert {e["name"] for e in listed} == {"plus", "image_encoder"}
    assert all({"kind", "architecture", "usable", "reason", "sha256", "source"} <= e.keys() for e in listed)

    assert _models(lib, "verify") == 0
    assert "ok      plus" in capsys.readouterr().out

    assert _models(lib, "remove", "some-xl-model") == 0
    assert "files kept" in capsys.readouterr().out and sdxl.exists()
    assert _models(lib, "remove", "nope") == 2
    assert "no model called 'nope'" in capsys.readouterr().err


def test_verify_exits_nonzero_on_a_damaged_file(
    tmp_path: Path, tiny_adapters: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    lib = tmp_path / "models"
    path = tmp_path / "a.safetensors"
    path.write_bytes(tiny_adapters[("global", "safetensors")].read_bytes())
    assert _models(lib, "add", str(path)) == 0
    path.write_bytes(path.read_bytes()[:100])
    assert _models(lib, "verify") == 1
    assert "PROBLEM a:" in capsys.readouterr().out


def test_inspect_says_what_a_file_is(
    tmp_path: Path, tiny_adapters: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    sdxl = write_shapes_only(tmp_path / "xl.safetensors", sdxl_shapes())
    assert _models(tmp_path, "inspect", str(sdxl)) == 1
    assert "SDXL (base, safetensors) — not usable: SDXL checkpoint" in capsys.readouterr().out
    assert _models(tmp_path, "inspect", str(tiny_adapters[("full", "bin")]), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["kind"], data["details"]["variant"], data["format"]) == ("adapter", "full", "pickle")
    assert not (tmp_path / "library.json").exists()  # inspecting adds nothing


def test_catalog_lists_known_downloads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _models(tmp_path, "catalog") == 0
    out = capsys.readouterr().out
    for name in ("stable-diffusion-v1-5", "ip-adapter-plus-face_sd15", "image-encoder-vit-h-14"):
        assert name in out
    assert "h94/IP-Adapter" in out


def test_adding_from_the_hub_offline_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # conftest keeps HF_HUB_OFFLINE=1: a catalog download must refuse without touching the network.
    assert _models(tmp_path, "add", "ip-adapter_sd15") == 2
    assert "Offline mode is on" in capsys.readouterr().err
