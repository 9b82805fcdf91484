"""PNG metadata other programs understand: what we write, read by a third-party reader
(sd-parsers), and what AUTOMATIC1111, ComfyUI and InvokeAI write, read by us.

The foreign fixtures are written here from each program's own published layout (named beside each)
and are first read by sd-parsers too, so they are pictures another reader recognises, not only ours.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image
from sd_parsers import ParserManager

from ipa_studio.core.foreign_metadata import parse_a1111_parameters, read_foreign_settings
from ipa_studio.core.hashes import HashCache, ModelHashes, short_hash
from ipa_studio.core.images import read_png_metadata, save_png
from ipa_studio.core.metadata import PARAMETERS_KEY, request_to_metadata
from ipa_studio.core.models.library import sha256_of
from ipa_studio.core.request import ControlSpec, GenerationRequest, InitImage, ModelSpec, Reference
from tests.fixtures.foreign_pngs import A1111_TEXT, COMFY_PROMPT, INVOKE_METADATA, comfy_workflow

HASHES = ModelHashes(base="6ce0161689" + "a" * 54, adapter="c4b5" + "b" * 60, loras=(("detail", "d" * 64),))


def png_with(path: Path, chunks: dict[str, str]) -> Path:
    return save_png(Image.new("RGB", (8, 8), (40, 80, 120)), path, chunks)


def third_party(path: Path):
    info = ParserManager().parse(str(path))
    assert info is not None, "sd-parsers did not recognise the picture"
    return info


# --- what we write, read by sd-parsers ----------------------------------------------------------


@pytest.mark.parametrize(
    "scheduler, sampler, schedule",
    [("ddim", "DDIM", None), ("dpm++", "DPM++ 2M", "SGM Uniform"), ("euler-a", "Euler a", "Uniform")],
)
def test_every_field_we_write_is_read_back_by_sd_parsers(
    tmp_path: Path, scheduler, sampler, schedule
) -> None:
    request = GenerationRequest(
        models=ModelSpec("models/dreamshaper_8.safetensors", "models/ip-adapter-plus_sd15.bin", "models/enc"),
        references=(Reference("a.png", 0.7), Reference("b.png", 0.3)),
        prompt="a (red:1.2) car, studio light\nBREAK chrome",
        negative_prompt="blurry, lowres",
        scale={"default": 0.6, "down_blocks.2": 1.0},
        steps=31,
        guidance=6.25,
        seed=4_000_000_123,
        width=640,
        height=384,
        scheduler=scheduler,  # type: ignore[arg-type]
        num_images=2,
        init=InitImage("init.png", 0.55),
    )
    meta = request_to_metadata(request, extra={"seconds": 3.25, "image_index": 1}, hashes=HASHES)
    info = third_party(png_with(tmp_path / "ours.png", meta))

    assert info.generator.value == "AUTOMATIC1111"
    assert info.full_prompt == request.prompt
    assert info.full_negative_prompt == request.negative_prompt
    [s] = info.samplers
    assert s.name == sampler
    expected_sampler = {"steps": "31", "cfg_scale": "6.25", "seed": "4000000123"}
    if schedule is not None:
        expected_sampler["scheduler"] = schedule
    assert s.parameters == expected_sampler
    assert (s.model.name, s.model.hash) == ("dreamshaper_8", "6ce0161689")
    # Everything else: exactly these keys with exactly these values, nothing lost or garbled.
    assert info.metadata == {
        "Size": "640x384",
        "IP-Adapter scale": "default=0.6; down_blocks.2=1",
        "Adapter": "ip-adapter-plus_sd15",
        "Adapter hash": "c4b5bbbbbb",
        "Image encoder": "enc",
        "Reference weights": "0.7; 0.3",
        "Mode": "img2img",
        "Denoising strength": "0.55",
        "Batch size": "2",
        "seconds": "3.25",
        "image_index": "1",
        "Version": "ipa-studio 0.1.0",
        "Hashes": {"model": "6ce0161689", "lora:detail": "dddddddddd"},
    }


def test_quoted_values_follow_a1111s_rule(tmp_path: Path) -> None:
    """A value with commas is written in double quotes, as A1111 does (its ControlNet extension's
    entries look the same). sd-parsers 0.6 splits lines at every comma and cannot read such values;
    A1111's own rule (``parse_generation_parameters``: a quoted value is JSON) can, and the rest of
    the line still reads back through sd-parsers."""
    request = GenerationRequest(
        models=ModelSpec("m/base, v2.safetensors"),
        prompt="a cat",
        controls=(ControlSpec("pose.png", "controlnets/openpose", 0.8, 0.1, 0.9),),
    )
    meta = request_to_metadata(request, hashes=ModelHashes())
    _, _, settings = parse_a1111_parameters(meta[PARAMETERS_KEY])
    assert settings["ControlNet 0"] == "Model: openpose, Weight: 0.8, Start: 0.1, End: 0.9"
    assert settings["Model"] == "base, v2"
    info = third_party(png_with(tmp_path / "q.png", meta))
    assert info.samplers[0].parameters == {"steps": "50", "cfg_scale": "7.5", "seed": "0"}
    assert info.metadata["Size"] == "512x512"


# --- model hashes ---------------------------------------------------------------------------------


def test_model_hash_is_a1111s_short_sha256(tmp_path: Path) -> None:
    base = tmp_path / "my_model.safetensors"
    base.write_bytes(b"not really a model, but bytes to hash" * 1000)
    adapter = tmp_path / "ip-adapter_sd15.bin"
    adapter.write_bytes(b"adapter bytes" * 100)
    request = GenerationRequest(models=ModelSpec(base, adapter, tmp_path / "enc"), prompt="x")
    line = request_to_metadata(request)[PARAMETERS_KEY]
    expected = hashlib.sha256(base.read_bytes()).hexdigest()[:10]
    assert f"Model hash: {expected}, Model: my_model" in line
    assert f"Adapter hash: {hashlib.sha256(adapter.read_bytes()).hexdigest()[:10]}" in line
    assert line.endswith(f'Hashes: {{"model": "{expected}"}}')


def test_a_diffusers_folder_gets_the_librarys_folder_hash(tiny_sd15: Path) -> None:
    line = request_to_metadata(GenerationRequest(models=ModelSpec(tiny_sd15), prompt="x"))[PARAMETERS_KEY]
    assert f"Model hash: {sha256_of(tiny_sd15)[:10]}, " in line


def test_a_hub_id_has_no_hash() -> None:
    line = request_to_metadata(GenerationRequest(models=ModelSpec("runwayml/stable-diffusion-v1-5")))[
        PARAMETERS_KEY
    ]
    assert "Model hash" not in line and "Hashes" not in line


def test_hashes_are_cached_until_the_file_changes(tmp_path: Path, monkeypatch) -> None:
    import ipa_studio.core.models.library as library

    calls = []
    real = library.sha256_of
    monkeypatch.setattr(library, "sha256_of", lambda p, *a: calls.append(p) or real(p, *a))
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"one")
    cache_file = tmp_path / "cache.json"
    assert HashCache(cache_file).sha256(model) == hashlib.sha256(b"one").hexdigest()
    assert HashCache(cache_file).sha256(model) == hashlib.sha256(b"one").hexdigest()  # a new run
    assert len(calls) == 1
    model.write_bytes(b"two, longer")
    assert HashCache(cache_file).sha256(model) == hashlib.sha256(b"two, longer").hexdigest()
    assert len(calls) == 2
    cache_file.write_text("{damaged")
    assert HashCache(cache_file).sha256(model) == hashlib.sha256(b"two, longer").hexdigest()
    assert short_hash("ABCDEF0123456789") == "abcdef0123"


# --- what others write, read by us ----------------------------------------------------------------


def test_a1111_picture(tmp_path: Path) -> None:
    path = png_with(tmp_path / "a1111.png", {"parameters": A1111_TEXT})
    theirs = third_party(path)
    assert theirs.generator.value == "AUTOMATIC1111"
    s = read_foreign_settings(read_png_metadata(path))
    assert s is not None and s.source == "AUTOMATIC1111"
    assert (
        s.prompt
        == theirs.full_prompt
        == "masterpiece, (best quality:1.2), a red car on a wet street\nat night"
    )
    assert s.negative_prompt == theirs.full_negative_prompt == "lowres, (blurry:1.3)"
    assert (s.seed, s.steps, s.guidance, s.width, s.height) == (3141592653, 28, 6.5, 512, 768)
    assert (s.sampler, s.schedule, s.scheduler) == ("DPM++ 2M", "Karras", "dpm++")
    assert (s.model_name, s.model_hash) == ("v1-5-pruned-emaonly", "6ce0161689")
    assert any("Karras" in note for note in s.notes)


@pytest.mark.parametrize(
    "sampler_text, sampler, schedule, ours, noted",
    [
        ("Sampler: DPM++ 2M Karras", "DPM++ 2M", "Karras", "dpm++", True),  # before A1111 1.9
        ("Sampler: Euler a", "Euler a", None, "euler-a", False),
        ("Sampler: DDIM", "DDIM", None, "ddim", False),
        ("Sampler: DPM++ 2M, Schedule type: SGM Uniform", "DPM++ 2M", "SGM Uniform", "dpm++", False),
        ("Sampler: UniPC", "UniPC", None, None, True),
    ],
)
def test_a1111_sampler_names(sampler_text, sampler, schedule, ours, noted) -> None:
    text = f"a cat\nSteps: 20, {sampler_text}, CFG scale: 7, Seed: 1, Size: 512x512"
    s = read_foreign_settings({"parameters": text})
    assert (s.sampler, s.schedule, s.scheduler, bool(s.notes)) == (sampler, schedule, ours, noted)


@pytest.mark.parametrize("chunks", ["both", "prompt only", "workflow only"])
def test_comfyui_picture(tmp_path: Path, chunks: str) -> None:
    meta = {}
    if chunks != "workflow only":
        meta["prompt"] = json.dumps(COMFY_PROMPT)
    if chunks != "prompt only":
        meta["workflow"] = json.dumps(comfy_workflow())
    path = png_with(tmp_path / "comfy.png", meta)
    if chunks == "both":  # sd-parsers reads ComfyUI pictures only with both chunks
        theirs = third_party(path)
        assert theirs.generator.value == "ComfyUI"
        assert [p.value for p in theirs.prompts] == ["beautiful scenery, (glass bottle:1.1)"]
    s = read_foreign_settings(read_png_metadata(path))
    assert s is not None and s.source == "ComfyUI"
    assert s.prompt == "beautiful scenery, (glass bottle:1.1)"
    assert s.negative_prompt == "text, watermark"
    assert (s.seed, s.steps, s.guidance, s.width, s.height) == (156680208700286, 20, 8.0, 576, 448)
    assert (s.sampler, s.schedule, s.scheduler, s.notes) == ("euler_ancestral", "normal", "euler-a", ())
    assert s.model_name == "dreamshaper_8"  # found through the LoRA loader


def test_invokeai_picture(tmp_path: Path) -> None:
    path = png_with(tmp_path / "invoke.png", {"invokeai_metadata": json.dumps(INVOKE_METADATA)})
    theirs = third_party(path)
    assert theirs.generator.value == "InvokeAI"
    assert theirs.full_prompt == INVOKE_METADATA["positive_prompt"]
    s = read_foreign_settings(read_png_metadata(path))
    assert s is not None and s.source == "InvokeAI"
    assert (s.prompt, s.negative_prompt) == ("a lighthouse at dusk, golden light", "blurry")
    assert (s.seed, s.steps, s.guidance, s.width, s.height) == (2718281828, 30, 7.0, 512, 640)
    assert (s.scheduler, s.notes) == ("dpm++", ())
    assert (s.model_name, s.model_hash) == ("Dreamshaper 8", "e" * 64)
    karras = dict(INVOKE_METADATA, scheduler="dpmpp_2m_k")
    s = read_foreign_settings({"invokeai_metadata": json.dumps(karras)})
    assert s.scheduler == "dpm++" and "karras" in s.notes[0]


@pytest.mark.parametrize(
    "meta",
    [
        {},
        {"parameters": "just a caption someone typed"},
        {"prompt": "{not json"},
        {"invokeai_metadata": "[]"},
    ],
)
def test_pictures_without_settings(meta) -> None:
    assert read_foreign_settings(meta) is None


@pytest.mark.parametrize("scheduler, schedule", [("dpm++", "SGM Uniform"), ("euler-a", "Uniform")])
def test_the_schedule_we_write_is_the_one_our_sampler_uses(
    tiny_sd15: Path, scheduler: str, schedule: str
) -> None:
    """The noise levels of the engine's scheduler against A1111's schedules (modules/sd_schedulers.py:
    "Uniform" = k-diffusion's get_sigmas, t = linspace(999, 0, n); "SGM Uniform" = linspace(999, 0,
    n + 1)[:-1]; both map t to sigma by interpolating log sigma), and against Karras (rho 7)."""
    import numpy as np
    import torch

    from ipa_studio.core.engine import Engine
    from ipa_studio.core.metadata import A1111_SAMPLERS

    engine = Engine(device="cpu", dtype=torch.float32)
    engine.load(GenerationRequest(models=ModelSpec(tiny_sd15)))
    sched = engine._make_scheduler(scheduler)
    n = 20
    sched.set_timesteps(n)
    ours = sched.sigmas.numpy()[:n].astype(np.float64)

    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    log_sigmas = (((1 - torch.cumprod(1 - betas, 0)) / torch.cumprod(1 - betas, 0)) ** 0.5).log().numpy()

    def t_to_sigma(t: float) -> float:
        low = int(np.floor(t))
        high, w = min(low + 1, 999), t - low
        return float(np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[high]))

    schedules = {
        "Uniform": [t_to_sigma(t) for t in np.linspace(999, 0, n)],
        "SGM Uniform": [t_to_sigma(t) for t in np.linspace(999, 0, n + 1)[:-1]],
    }
    lo, hi = np.exp(log_sigmas[0]), np.exp(log_sigmas[-1])
    ramp = np.linspace(0, 1, n)
    schedules["Karras"] = list((hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7)

    def off(name: str) -> float:
        return float(np.max(np.abs(ours - schedules[name]) / schedules[name]))

    assert A1111_SAMPLERS[scheduler][1] == schedule
    assert off(schedule) < 0.002  # the timesteps are whole numbers in diffusers: 0.2 % at most
    assert all(off(other) > 0.05 for other in schedules if other != schedule)
