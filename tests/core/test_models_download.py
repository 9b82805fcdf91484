"""Catalog data and the downloader, against a fake hub on 127.0.0.1 (no real network)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ipa_studio.core.errors import Cancelled, IPAStudioError
from ipa_studio.core.models import catalog
from ipa_studio.core.models.catalog import CatalogEntry
from ipa_studio.core.models.download import (
    DownloadError,
    download_entry,
    list_repo_files,
    network_available,
)
from tests.fixtures.network import FakeHub, loopback_only, serve_fake_hub

REPO = "someone/fake-adapter"


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest switches the hub offline for every test; the downloader honours that, so lift it."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def _hub() -> FakeHub:
    big = os.urandom(3 * (1 << 20) + 12345)  # > 3 chunks, LFS-sized
    return FakeHub(
        repos={
            REPO: {
                "models/adapter.safetensors": big,
                "models/image_encoder/config.json": b'{"model_type": "clip_vision_model"}',
                "models/image_encoder/model.safetensors": os.urandom(200_000),
            }
        }
    )


def _entry(files: tuple[str, ...], **kw: object) -> CatalogEntry:
    return CatalogEntry(
        name=kw.pop("name", "fake"),  # type: ignore[arg-type]
        kind="adapter",
        repo_id=REPO,
        files=files,
        size_bytes=1,
        description="test",
        **kw,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------- catalog


def test_catalog_lists_the_known_downloads() -> None:
    names = {e.name for e in catalog.CATALOG}
    assert {
        "stable-diffusion-v1-5",
        "ip-adapter_sd15",
        "ip-adapter_sd15_light",
        "ip-adapter-plus_sd15",
        "ip-adapter-plus-face_sd15",
        "ip-adapter-full-face_sd15",
        "image-encoder-vit-h-14",
    } <= names
    sd = catalog.find("stable-diffusion-v1-5")
    assert sd.kind == "base" and sd.repo_id == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert "unet/diffusion_pytorch_model.safetensors" in sd.files
    assert not any("fp16" in f for f in sd.files)
    enc = catalog.find("image-encoder-vit-h-14")
    assert enc.files == ("models/image_encoder/config.json", "models/image_encoder/model.safetensors")
    for entry in catalog.CATALOG:
        assert entry.size_bytes > 0 and entry.description
        assert all(r in names for r in entry.requires)
        if entry.kind == "adapter":
            assert entry.requires == ("image-encoder-vit-h-14",)
    assert {e.kind for e in catalog.recommended()} == {"base", "adapter", "image_encoder"}


def test_catalog_find_unknown_names_the_known_ones() -> None:
    with pytest.raises(IPAStudioError, match="ip-adapter_sd15"):
        catalog.find("sdxl-turbo")


def test_catalog_local_layout(tmp_path: Path) -> None:
    enc = catalog.find("image-encoder-vit-h-14")
    assert enc.local_path(tmp_path) == tmp_path / "image-encoder-vit-h-14"
    assert enc.local_file(tmp_path, "models/image_encoder/config.json") == enc.local_path(tmp_path) / (
        "config.json"
    )
    ad = catalog.find("ip-adapter_sd15")
    assert ad.local_path(tmp_path) == tmp_path / "ip-adapter_sd15.safetensors"
    sd = catalog.find("stable-diffusion-v1-5")
    assert sd.local_file(tmp_path, "unet/config.json") == tmp_path / "stable-diffusion-v1-5/unet/config.json"


# ---------------------------------------------------------------------------------------------- download


def test_download_reports_progress_and_places_files_atomically(online: None, tmp_path: Path) -> None:
    hub = _hub()
    entry = _entry(("models/image_encoder/config.json", "models/image_encoder/model.safetensors"))
    calls: list[tuple[int, int]] = []
    with loopback_only() as refused, serve_fake_hub(hub):
        path = download_entry(
            entry, tmp_path, on_progress=lambda d, t: calls.append((d, t)), endpoint=hub.url
        )
    assert not refused
    assert path == tmp_path / "fake"
    files = hub.repos[REPO]
    assert (path / "config.json").read_bytes() == files["models/image_encoder/config.json"]
    assert (path / "model.safetensors").read_bytes() == files["models/image_encoder/model.safetensors"]
    assert not list(tmp_path.rglob("*.part"))
    total = sum(len(files[f]) for f in entry.files)
    assert calls[-1] == (total, total)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)  # monotonic


def test_download_resumes_after_a_dropped_connection(online: None, tmp_path: Path) -> None:
    hub = _hub()
    name = "models/adapter.safetensors"
    hub.cut_after[name] = (1 << 20) + 777  # the first GET dies after ~1 MiB
    entry = _entry((name,))
    with loopback_only(), serve_fake_hub(hub):
        path = download_entry(entry, tmp_path, endpoint=hub.url)
    assert path.read_bytes() == hub.repos[REPO][name]
    ranges = hub.ranges(name)
    # Two GETs reached the file: the whole one that was cut, then one from where it stopped.
    assert ranges[-2:] == [None, f"bytes={(1 << 20) + 777}-"]


def test_cancel_keeps_the_partial_file_and_the_next_call_resumes(online: None, tmp_path: Path) -> None:
    hub = _hub()
    name = "models/adapter.safetensors"
    entry = _entry((name,))
    seen: list[int] = []
    with loopback_only(), serve_fake_hub(hub):
        with pytest.raises(Cancelled):
            download_entry(
                entry,
                tmp_path,
                on_progress=lambda d, t: seen.append(d),
                should_cancel=lambda: len(seen) >= 2,
                endpoint=hub.url,
            )
        part = tmp_path / "adapter.safetensors.part"
        kept = part.stat().st_size
        assert 0 < kept < len(hub.repos[REPO][name])
        assert not (tmp_path / "adapter.safetensors").exists()
        path = download_entry(entry, tmp_path, endpoint=hub.url)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(hub.repos[REPO][name]).digest()
    assert hub.ranges(name)[-1] == f"bytes={kept}-"


def test_wrong_hash_is_rejected_and_nothing_is_left_under_the_name(online: None, tmp_path: Path) -> None:
    hub = _hub()
    name = "models/adapter.safetensors"
    hub.wrong_sha.add(name)
    with loopback_only(), serve_fake_hub(hub):
        with pytest.raises(DownloadError, match="sha256"):
            download_entry(_entry((name,)), tmp_path, endpoint=hub.url)
    assert not list(tmp_path.iterdir())


def test_catalog_hash_is_checked_even_when_the_server_gives_none(online: None, tmp_path: Path) -> None:
    hub = _hub()
    name = "models/image_encoder/config.json"  # small: a plain git file, no LFS hash from the server
    entry = _entry((name,), sha256={name: "0" * 64})
    with loopback_only(), serve_fake_hub(hub):
        with pytest.raises(DownloadError, match="sha256"):
            download_entry(entry, tmp_path, endpoint=hub.url)


def test_missing_file_and_offline_mode_are_named(
    online: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = _hub()
    with loopback_only(), serve_fake_hub(hub):
        with pytest.raises(DownloadError, match="not found"):
            download_entry(_entry(("models/nope.safetensors",)), tmp_path, endpoint=hub.url)
        assert network_available(endpoint=hub.url)
        files = {f.path: f for f in list_repo_files(REPO, endpoint=hub.url)}
        assert files["models/adapter.safetensors"].sha256 == hub.sha256(REPO, "models/adapter.safetensors")
        requests_before = len(hub.log)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not network_available(endpoint=hub.url)
        with pytest.raises(DownloadError, match="Offline"):
            download_entry(_entry(("models/adapter.safetensors",)), tmp_path, endpoint=hub.url)
        assert len(hub.log) == requests_before  # offline mode sent nothing at all


def test_network_available_is_false_when_nothing_answers(online: None) -> None:
    import socket

    with socket.socket() as s:  # a port that is certainly closed: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with loopback_only():
            assert network_available(timeout=1.0, endpoint=f"http://127.0.0.1:{port}") is False
