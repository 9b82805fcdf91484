"""Switching base models in one session: each model's files are read once; a switch back is served
from the kept previous model when it fits the memory budget, and re-read when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ipa_studio.core import engine as engine_module
from ipa_studio.core.engine import Engine, base_model_bytes
from ipa_studio.core.models.tiny import build_sd15_folder, make_reference_image
from ipa_studio.core.request import GenerationRequest, ModelSpec, Reference


@pytest.fixture(scope="module")
def second_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny SD1.5 folder with different weights (a "community fine-tune")."""
    return build_sd15_folder(tmp_path_factory.mktemp("models") / "tiny-sd15-b", seed=5)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every base model the engine reads from disk, in order."""
    seen: list[Path] = []
    real = engine_module.load_base_model

    def counting(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(engine_module, "load_base_model", counting)
    return seen


def _request(base: Path, adapter: Path, encoder: Path) -> GenerationRequest:
    return GenerationRequest(
        models=ModelSpec(base, adapter, encoder),
        references=(Reference(make_reference_image(3, (64, 64))),),
        prompt="a red boat",
        steps=2,
        width=64,
        height=64,
        seed=4,
        scale=0.8,
    )


def test_switching_back_reads_no_file_and_gives_the_same_image(
    reads: list[Path], tiny_sd15: Path, second_sd15: Path, tiny_adapters: dict, tiny_image_encoder: Path
) -> None:
    adapter = tiny_adapters[("plus", "safetensors")]
    engine = Engine("cpu", torch.float32)
    a, b = (
        _request(tiny_sd15, adapter, tiny_image_encoder),
        _request(second_sd15, adapter, tiny_image_encoder),
    )
    first_a = engine.generate(a).latents
    first_b = engine.generate(b).latents
    assert engine.cached_base_path == tiny_sd15
    again_a = engine.generate(a).latents
    again_b = engine.generate(b).latents
    assert reads == [tiny_sd15, second_sd15]  # four switches, two reads
    assert engine.stats.base_cache_hits == 2
    assert not torch.allclose(first_a, first_b)  # really two different models
    # The kept model is the same tensors, and the adapter moved back onto it.
    assert torch.equal(first_a, again_a) and torch.equal(first_b, again_b)
    assert engine.adapter is not None


def test_no_budget_means_every_switch_reads_the_files(
    reads: list[Path], tiny_sd15: Path, second_sd15: Path, tiny_adapters: dict, tiny_image_encoder: Path
) -> None:
    adapter = tiny_adapters[("global", "safetensors")]
    engine = Engine("cpu", torch.float32, base_cache_bytes=0)
    for base in (tiny_sd15, second_sd15, tiny_sd15, second_sd15):
        engine.load(_request(base, adapter, tiny_image_encoder))
    assert reads == [tiny_sd15, second_sd15, tiny_sd15, second_sd15]
    assert engine.stats.base_cache_hits == 0 and engine.cached_base_path is None


def test_a_model_bigger_than_the_budget_is_not_kept(
    reads: list[Path], tiny_sd15: Path, second_sd15: Path, tiny_adapters: dict, tiny_image_encoder: Path
) -> None:
    adapter = tiny_adapters[("global", "safetensors")]
    engine = Engine("cpu", torch.float32)
    engine.load(_request(tiny_sd15, adapter, tiny_image_encoder))
    size = base_model_bytes(engine.base)
    assert 0 < size < 50e6
    engine.base_cache_bytes = size - 1  # just too small for the tiny model
    engine.load(_request(second_sd15, adapter, tiny_image_encoder))
    assert engine.cached_base_path is None
    engine.base_cache_bytes = size + 1  # now it fits
    engine.load(_request(tiny_sd15, adapter, tiny_image_encoder))
    assert engine.cached_base_path == second_sd15
    assert reads == [tiny_sd15, second_sd15, tiny_sd15]


def test_kept_model_whose_files_changed_is_read_again(
    reads: list[Path], tiny_sd15: Path, second_sd15: Path, tiny_adapters: dict, tiny_image_encoder: Path
) -> None:
    adapter = tiny_adapters[("global", "safetensors")]
    engine = Engine("cpu", torch.float32)
    engine.load(_request(second_sd15, adapter, tiny_image_encoder))
    engine.load(_request(tiny_sd15, adapter, tiny_image_encoder))
    weights = second_sd15 / "unet" / "diffusion_pytorch_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # "saved again"
    engine.load(_request(second_sd15, adapter, tiny_image_encoder))
    assert reads == [second_sd15, tiny_sd15, second_sd15]
    assert engine.stats.base_cache_hits == 0
