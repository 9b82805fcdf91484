"""Settings: atomic writes, exact round trips, and loads that never fail on a bad file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ipa_studio.core.errors import IPAStudioError
from ipa_studio.core.settings import (
    SETTINGS_VERSION,
    LastValues,
    ModelPaths,
    Settings,
    WindowLayout,
    default_outputs_dir,
    default_settings_path,
    load_settings,
    save_settings,
)


def _custom() -> Settings:
    return Settings(
        models=ModelPaths("/m/sd15", "/m/ip.safetensors", "/m/enc"),
        models_dir="/m",
        outputs_dir="/out",
        device="cpu",
        last=LastValues(
            prompt="a cat ✨",
            negative_prompt="blurry",
            scale=0.35,
            steps=12,
            guidance=5.5,
            seed=2**32 - 1,
            seed_locked=True,
            width=768,
            height=512,
            scheduler="euler-a",
            num_images=3,
        ),
        window=WindowLayout("Z2VvbQ==", "c3RhdGU=", {"main": "c3BsaXQ="}),
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "settings.json"
    settings = _custom()
    assert save_settings(settings, path) == path
    assert load_settings(path) == settings
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == SETTINGS_VERSION


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "nope.json") == Settings()


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]", "null", "\xff\xfe garbage"])
def test_corrupt_file_gives_defaults(tmp_path: Path, content: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(content, encoding="latin-1")
    assert load_settings(path) == Settings()


def test_wrong_types_fall_back_per_value(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    data = json.loads(json.dumps(_custom().__dict__, default=lambda o: o.__dict__))
    data["last"]["steps"] = "many"  # wrong type: default, others kept
    data["last"]["seed_locked"] = 1  # an int is not a bool
    data["last"]["guidance"] = 6  # an int is fine for a float
    data["models"] = ["not", "an", "object"]
    data["window"]["splitters"] = {"main": 3}
    data["someday"] = {"new": "field"}  # from a newer version: ignored
    data["version"] = SETTINGS_VERSION + 5
    path.write_text(json.dumps(data), encoding="utf-8")

    loaded = load_settings(path)
    assert loaded.last.steps == LastValues().steps
    assert loaded.last.seed_locked is False
    assert loaded.last.guidance == 6.0 and isinstance(loaded.last.guidance, float)
    assert loaded.last.prompt == "a cat ✨"
    assert loaded.models == ModelPaths()
    assert loaded.window.splitters == {}
    assert loaded.window.geometry == "Z2VvbQ=="
    assert loaded.version == SETTINGS_VERSION


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "settings.json"
    save_settings(_custom(), path)
    before = path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(IPAStudioError, match="No space left"):
        save_settings(Settings(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no temp file left behind


def test_defaults_and_resolved_folders() -> None:
    s = Settings()
    assert s.outputs_path == default_outputs_dir()
    assert Settings(outputs_dir="~/x").outputs_path == Path("~/x").expanduser()
    assert default_settings_path().name == "settings.json"
    assert (s.last.steps, s.last.guidance, s.last.scale) == (30, 7.5, 0.6)
