"""The model library: entries with kind / architecture / usable / reason, encoder auto-pick, remove,
refresh, verify, conversion on import, and adding from a (fake, local) Hugging Face hub."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ipa_studio.core.adapter.checkpoint import read_checkpoint
from ipa_studio.core.errors import ModelFileError
from ipa_studio.core.models.library import LibraryError, ModelLibrary
from ipa_studio.core.models.tiny import build_image_encoder_folder, write_ip_adapter
from tests.fixtures.checkpoints import adapter_shapes, sdxl_shapes, write_shapes_only
from tests.fixtures.malicious import write_malicious_pickle
from tests.fixtures.network import FakeHub, loopback_only, serve_fake_hub


@pytest.fixture
def library(tmp_path: Path) -> ModelLibrary:
    return ModelLibrary(tmp_path / "models")


def _vit_h_encoder_folder(dest: Path) -> Path:
    """The official image encoder's config with an all-zero (sparse) weights file: real widths."""
    dest.mkdir(parents=True)
    (dest / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["CLIPVisionModelWithProjection"],
                "model_type": "clip_vision_model",
                "hidden_size": 1280,
                "projection_dim": 1024,
                "intermediate_size": 5120,
                "num_hidden_layers": 32,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 224,
            }
        )
    )
    write_shapes_only(
        dest / "model.safetensors", {"vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14)}
    )
    return dest


def test_entries_say_what_each_model_is_and_why_not(
    library: ModelLibrary, tmp_path: Path, tiny_sd15: Path, tiny_adapters: dict, tiny_image_encoder: Path
) -> None:
    sdxl = write_shapes_only(tmp_path / "juggernaut-xl.safetensors", sdxl_shapes())
    detection = library.inspect(sdxl)  # what the picker shows before adding
    assert not detection.usable and not library.index_path.exists()

    base = library.add(tiny_sd15)
    adapter = library.add(tiny_adapters[("plus", "safetensors")], name="my plus")
    encoder = library.add(tiny_image_encoder)
    unusable = library.add(sdxl)

    assert (base.kind, base.usable, base.source.type) == ("base", True, "folder")
    assert (adapter.name, adapter.kind, adapter.details["variant"], adapter.details["num_tokens"]) == (
        "my plus",
        "adapter",
        "plus",
        16,
    )
    assert encoder.kind == "image_encoder" and encoder.details["hidden_size"] == 32
    assert (unusable.architecture, unusable.usable) == ("SDXL", False)
    assert unusable.reason == "SDXL checkpoint: IPA Studio runs SD1.5 models"
    assert adapter.sha256 == hashlib.sha256(tiny_adapters[("plus", "safetensors")].read_bytes()).hexdigest()
    assert not adapter.owned  # referenced where it is, not copied

    assert [e.name for e in library.entries("base")] == ["juggernaut-xl", "tiny-sd15"]
    assert {e.name for e in library.entries(usable_only=True)} == {"tiny-sd15", "my plus", "image_encoder"}
    # The index is plain JSON, written atomically (no temporary files left next to it), beside the
    # empty file its cross-process lock is held on.
    data = json.loads(library.index_path.read_text())
    assert data["version"] == 1 and len(data["entries"]) == 4
    assert sorted(p.name for p in library.root.iterdir()) == [".library.lock", "library.json"]
    # Adding the same path again replaces its entry instead of duplicating it.
    library.add(tiny_sd15, name="renamed")
    assert [e.name for e in library.entries("base", usable_only=True)] == ["renamed"]


def test_image_encoder_is_picked_by_the_width_the_adapter_reads(
    library: ModelLibrary, tmp_path: Path, tiny_sd15: Path, tiny_image_encoder: Path
) -> None:
    other = build_image_encoder_folder(tmp_path / "encoder-48", hidden_size=48, projection_dim=40)
    library.add(tiny_image_encoder, name="enc-32")
    library.add(other, name="enc-48")
    for variant, encoder, expected in [
        ("global", tiny_image_encoder, "enc-32"),  # reads image_embeds: projection 24
        ("plus", tiny_image_encoder, "enc-32"),  # reads hidden states: 32
        ("global", other, "enc-48"),  # projection 40
        ("full", other, "enc-48"),  # hidden 48
    ]:
        path = write_ip_adapter(
            tmp_path / f"{variant}-{expected}.safetensors",
            variant=variant,  # type: ignore[arg-type]
            sd15_folder=tiny_sd15,
            image_encoder_folder=encoder,
            fmt="safetensors",
        )
        entry = library.add(path)
        assert library.image_encoder_for(entry).name == expected, (variant, expected)


def test_sd15_adapters_get_the_vit_h_encoder_and_vit_g_ones_are_told_what_is_missing(
    library: ModelLibrary, tmp_path: Path
) -> None:
    library.add(_vit_h_encoder_folder(tmp_path / "image_encoder"))
    for variant in ("global", "plus", "full"):
        path = write_shapes_only(tmp_path / f"ip-adapter-{variant}.safetensors", adapter_shapes(variant))
        assert library.image_encoder_for(path).name == "image_encoder"
    vit_g = write_shapes_only(
        tmp_path / "ip-adapter_sd15_vit-G.safetensors", adapter_shapes("global", embed=1280)
    )
    with pytest.raises(LibraryError, match="needs the ViT-bigG/14 image encoder"):
        library.image_encoder_for(library.add(vit_g))


def test_remove_deletes_only_what_the_library_owns(
    library: ModelLibrary, tmp_path: Path, tiny_adapters: dict
) -> None:
    source = tiny_adapters[("global", "safetensors")]
    copied = library.add(source, copy=True, name="copied")
    referenced = library.add(source, name="referenced")
    assert copied.owned and copied.path.parent == library.root.resolve()
    assert not referenced.owned and referenced.path == source.resolve()
    library.remove("copied")
    assert not copied.path.exists()
    library.remove("referenced")
    assert source.exists()  # the user's own file is never deleted
    library.add_folder(source.parent)  # scanning that folder does not bring it back
    assert "referenced" not in {e.name for e in library.entries()}
    with pytest.raises(LibraryError, match="no model called 'ghost'"):
        library.remove("ghost")


def test_refresh_finds_files_dropped_into_the_folder_and_forgets_deleted_ones(
    library: ModelLibrary, tiny_adapters: dict
) -> None:
    library.root.mkdir(parents=True)
    dropped = library.root / "dropped.safetensors"
    dropped.write_bytes(tiny_adapters[("full", "safetensors")].read_bytes())
    (library.root / "notes.txt").write_text("not a model")
    names = {e.name: e for e in library.refresh()}
    assert set(names) == {"dropped"}
    assert names["dropped"].source.type == "scan" and names["dropped"].owned
    dropped.unlink()
    assert library.refresh() == []


def test_verify_notices_changed_and_damaged_files(
    library: ModelLibrary, tmp_path: Path, tiny_adapters: dict
) -> None:
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(tiny_adapters[("global", "safetensors")].read_bytes())
    library.add(path)
    assert [r.ok for r in library.verify()] == [True]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, different contents
    path.write_bytes(bytes(data))
    (result,) = library.verify()
    assert not result.ok and "contents changed" in result.problems[0]
    path.write_bytes(bytes(data[: len(data) // 2]))
    (result,) = library.verify(["adapter"])
    assert any("truncated" in p for p in result.problems)
    path.unlink()
    (result,) = library.verify()
    assert "missing" in result.problems[0]


def test_pickle_is_converted_to_safetensors_once_on_import(
    library: ModelLibrary, tiny_adapters: dict
) -> None:
    source = tiny_adapters[("plus", "bin")]
    entry = library.add(source, convert=True)
    assert entry.path == (library.root / "ip-adapter-plus_tiny.safetensors").resolve()
    assert entry.format == "safetensors" and entry.source.converted_from == str(source.resolve())
    original, converted = read_checkpoint(source), read_checkpoint(entry.path)
    assert original.image_proj.keys() == converted.image_proj.keys()
    assert all(torch.equal(original.image_proj[k], converted.image_proj[k]) for k in original.image_proj)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(original.layers, converted.layers, strict=True))


def test_a_pickle_that_would_run_code_is_not_converted(library: ModelLibrary, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = write_malicious_pickle(tmp_path / "evil.bin", marker)
    with pytest.raises(ModelFileError, match="unsafe"):
        library.add(evil, convert=True)
    listed = library.add(evil)  # without converting it is listed, refused, with the reason
    assert listed.kind == "invalid" and "unsafe" in listed.reason
    assert not marker.exists()


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_add_from_hub_repo_ids_and_catalog_names(
    library: ModelLibrary, tiny_sd15: Path, tiny_adapters: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    adapter_bytes = tiny_adapters[("global", "safetensors")].read_bytes()
    hub = FakeHub(
        repos={
            "someone/tiny-sd15": _folder_files(tiny_sd15),
            "someone/tiny-adapter": {"tiny-adapter.safetensors": adapter_bytes, "README.md": b"# hi"},
            "h94/IP-Adapter": {"models/ip-adapter_sd15_light.safetensors": adapter_bytes},
        }
    )
    progress: list[tuple[int, int]] = []
    with loopback_only() as refused, serve_fake_hub(hub):
        base = library.add(
            "someone/tiny-sd15", endpoint=hub.url, on_progress=lambda d, t: progress.append((d, t))
        )
        adapter = library.add("someone/tiny-adapter", endpoint=hub.url)
        light = library.add("ip-adapter_sd15_light", endpoint=hub.url)
        with pytest.raises(LibraryError, match="not in the repo"):
            library.add("someone/tiny-adapter/missing.safetensors", endpoint=hub.url)
    assert not refused
    assert (base.kind, base.usable, base.source.type, base.source.ref) == (
        "base",
        True,
        "hub",
        "someone/tiny-sd15",
    )
    assert (
        base.path == (library.root / "tiny-sd15").resolve() and (base.path / "unet" / "config.json").is_file()
    )
    assert progress[-1][0] == progress[-1][1] == sum(len(b) for b in hub.repos["someone/tiny-sd15"].values())
    assert adapter.kind == "adapter" and adapter.path.name == "tiny-adapter.safetensors"
    assert (light.name, light.source.type, light.kind) == ("ip-adapter_sd15_light", "catalog", "adapter")
    assert light.path == (library.root / "ip-adapter_sd15_light.safetensors").resolve()
    assert not list(library.root.rglob("*.part"))


def test_unknown_sources_are_explained(library: ModelLibrary) -> None:
    with pytest.raises(LibraryError, match="neither a file or folder"):
        library.add("no such thing")
