"""Engine behaviour beyond equality: caching, reuse, progress, cancel, bad input, reproducibility."""

from __future__ import annotations

import pytest
import torch

from ipa_studio.core import engine as engine_module
from ipa_studio.core.engine import Engine, StepInfo
from ipa_studio.core.errors import (
    AdapterMismatchError,
    Cancelled,
    ImageInputError,
    RequestError,
    UnsafeFileError,
)
from ipa_studio.core.models.tiny import (
    make_mask,
    make_reference_image,
    write_ip_adapter,
)
from ipa_studio.core.request import ControlSpec, GenerationRequest, InitImage, MaskSpec, ModelSpec, Reference
from tests.fixtures.malicious import write_malicious_pickle


@pytest.fixture()
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def ref():
    return make_reference_image(21, (72, 56))


def _req(tiny_sd15, adapter, encoder, ref, **kw) -> GenerationRequest:
    base = dict(
        models=ModelSpec(tiny_sd15, adapter, encoder),
        references=(Reference(ref),),
        prompt="a cat",
        steps=3,
        width=64,
        height=64,
        seed=7,
    )
    base.update(kw)
    return GenerationRequest(**base)


def test_second_run_with_same_reference_skips_image_encoder(
    engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref
):
    req = _req(tiny_sd15, tiny_adapters[("plus", "safetensors")], tiny_image_encoder, ref)
    engine.generate(req)
    calls = engine.stats.image_encoder_calls
    assert calls == 2  # the reference and the unconditional zero image
    # A copy of the same picture (a new object, same pixels) hits the cache too.
    engine.generate(req.replace(seed=8, references=(Reference(ref.copy()),)))
    assert engine.stats.image_encoder_calls == calls
    assert engine.stats.projection_calls == 2  # once per generation, never per step


def test_projection_runs_once_per_generation_not_per_step(
    engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref, monkeypatch
):
    req = _req(tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder, ref, steps=5)
    engine.load(req)
    calls = []
    proj = engine.adapter.image_proj
    proj.register_forward_hook(lambda *a: calls.append(1))
    engine.generate(req)
    assert len(calls) == 1


def test_mode_switches_read_no_weight_file_again(
    engine, tiny_sd15, tiny_adapters, tiny_image_encoder, tiny_controlnet, ref, monkeypatch
):
    init = make_reference_image(3, (64, 64))
    control = make_reference_image(4, (64, 64))
    base = _req(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder, ref)
    with_control = base.replace(controls=(ControlSpec(control, tiny_controlnet, 1.0),))
    engine.generate(with_control)
    loaded = list(engine.stats.components_loaded)

    def refuse(*a, **k):
        raise AssertionError("a weight file was read again")

    for name in ("load_base_model", "load_image_encoder", "load_controlnet", "read_checkpoint"):
        monkeypatch.setattr(engine_module, name, refuse)
    unet = engine.base.unet
    engine.generate(base)
    engine.generate(base.replace(init=InitImage(init, 0.5)))
    engine.generate(
        base.replace(init=InitImage(init, 0.9), mask=MaskSpec(make_mask((64, 64), (8, 8, 40, 40))))
    )
    engine.generate(with_control)
    assert engine.stats.components_loaded == loaded
    assert engine.base.unet is unet


def test_progress_preview_and_reproducible(engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref):
    steps: list[StepInfo] = []
    req = _req(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder, ref, steps=4)
    first = engine.generate(req, on_step=steps.append)
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert all(s.total == 4 for s in steps)
    assert steps[-1].preview.size == (8, 8)  # latent resolution of a 64 px image
    second = engine.generate(req)
    assert torch.equal(first.latents, second.latents)
    assert first.images[0].tobytes() == second.images[0].tobytes()
    other = engine.generate(req.replace(seed=99))
    assert not torch.equal(first.latents, other.latents)


def test_cancel_stops_within_one_step_and_engine_stays_usable(
    engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref
):
    req = _req(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder, ref, steps=10)
    seen = []
    with pytest.raises(Cancelled):
        engine.generate(req, on_step=seen.append, should_cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2
    result = engine.generate(req.replace(steps=2))
    assert len(result.images) == 1


def test_num_images_and_weights(engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref):
    other = make_reference_image(5, (64, 64))
    req = _req(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder, ref, num_images=2)
    result = engine.generate(req)
    assert len(result.images) == 2
    both = req.replace(num_images=1, references=(Reference(ref, 1.0), Reference(other, 1.0)))
    only_first = engine.generate(both.replace(references=(Reference(ref, 1.0),))).latents
    weight_zero = engine.generate(
        both.replace(references=(Reference(ref, 1.0), Reference(other, 0.0)))
    ).latents
    # Weight 0 removes a reference exactly; a reduced weight gives something in between.
    assert torch.equal(weight_zero, only_first)
    mixed = engine.generate(both.replace(references=(Reference(ref, 1.0), Reference(other, 0.3)))).latents
    full = engine.generate(both).latents
    assert (mixed - only_first).abs().max() > 1e-4 and (mixed - full).abs().max() > 1e-4
    with pytest.raises(RequestError):
        engine.generate(both.replace(references=(Reference(ref, -1.0),)))


def test_mismatched_adapter_is_refused_and_previous_stays(
    engine, tmp_path, tiny_sd15, tiny_adapters, tiny_image_encoder, ref
):
    good = _req(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder, ref)
    before = engine.generate(good).latents
    sdxl = write_ip_adapter(
        tmp_path / "ip-adapter_sdxl.safetensors",
        variant="global",
        sd15_folder=tiny_sd15,
        image_encoder_folder=tiny_image_encoder,
        fmt="safetensors",
        cross_attention_dim=2048,
    )
    with pytest.raises(AdapterMismatchError, match="SDXL"):
        engine.generate(good.replace(models=ModelSpec(tiny_sd15, sdxl, tiny_image_encoder)))
    bigg = write_ip_adapter(
        tmp_path / "ip-adapter_bigG.bin",
        variant="global",
        sd15_folder=tiny_sd15,
        image_encoder_folder=tiny_image_encoder,
        fmt="bin",
        embed_dim=1280,
    )
    with pytest.raises(AdapterMismatchError, match="image encoder"):
        engine.generate(good.replace(models=ModelSpec(tiny_sd15, bigg, tiny_image_encoder)))
    after = engine.generate(good).latents
    assert torch.equal(before, after)


def test_malicious_pickle_adapter_never_runs(
    engine, tmp_path, tiny_sd15, tiny_adapters, tiny_image_encoder, ref
):
    marker = tmp_path / "pwned"
    evil = write_malicious_pickle(tmp_path / "ip-adapter_evil.bin", marker)
    good = _req(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder, ref)
    engine.generate(good)
    with pytest.raises(UnsafeFileError, match="unsafe"):
        engine.generate(good.replace(models=ModelSpec(tiny_sd15, evil, tiny_image_encoder)))
    assert not marker.exists()
    assert len(engine.generate(good).images) == 1


def test_bad_inputs_are_named(engine, tmp_path, tiny_sd15, tiny_adapters, tiny_image_encoder, ref):
    good = _req(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder, ref)
    with pytest.raises(ImageInputError, match="missing.png"):
        engine.generate(good.replace(references=(Reference(tmp_path / "missing.png"),)))
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(ImageInputError, match="notes.png"):
        engine.generate(good.replace(references=(Reference(not_image),)))
    init = make_reference_image(1, (64, 64))
    with pytest.raises(ImageInputError, match="mask"):
        engine.generate(
            good.replace(init=InitImage(init, 0.7), mask=MaskSpec(make_mask((80, 64), (0, 0, 8, 8))))
        )
    with pytest.raises(RequestError):
        engine.generate(good.replace(width=40))
    with pytest.raises(RequestError):
        engine.generate(good.replace(models=ModelSpec(tiny_sd15, None, tiny_image_encoder)))
    with pytest.raises(RequestError, match="λ block"):
        engine.generate(good.replace(scale={"side_blocks": 1.0}))


def test_switching_base_model_keeps_adapter(
    engine, tiny_sd15, tiny_sd15_inpaint, tiny_adapters, tiny_image_encoder, ref
):
    req = _req(tiny_sd15, tiny_adapters[("plus", "bin")], tiny_image_encoder, ref)
    first = engine.generate(req).latents
    adapter = engine.adapter
    init = make_reference_image(2, (64, 64))
    engine.generate(
        req.replace(
            models=ModelSpec(tiny_sd15_inpaint, req.models.adapter, tiny_image_encoder),
            init=InitImage(init, 1.0),
            mask=MaskSpec(make_mask((64, 64), (0, 0, 32, 32))),
        )
    )
    assert engine.adapter is adapter
    assert torch.allclose(engine.generate(req).latents, first, atol=1e-6)
