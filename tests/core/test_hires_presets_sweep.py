"""Second pass, block presets and the λ sweep, on the tiny models.

- a second pass in one job equals generating, upscaling (Lanczos) and running img2img by hand;
- the presets map to the right layers (ComfyUI's layer numbers → module names), save and reload;
- the sweep's CSV scores equal a direct CLIP-I / CLIP-T computation of each picture.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from ipa_studio.cli import main
from ipa_studio.core import hires
from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import Cancelled, RequestError
from ipa_studio.core.evaluate import ClipScorer, clip_i, clip_t
from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.metadata import request_from_metadata
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.presets import (
    BUILTIN_PRESETS,
    SD15_LAYERS,
    BlockPreset,
    delete_preset,
    find_preset,
    layer_map,
    layer_weights,
    load_presets,
    match_preset,
    save_preset,
)
from ipa_studio.core.request import GenerationRequest, HiresSpec, InitImage, ModelSpec, Reference
from ipa_studio.core.sweep import CSV_COLUMNS, balance_scores, contact_sheet, run_sweep, sweep_requests


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def ref():
    return make_reference_image(51, (70, 60))


def _request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref, **kw) -> GenerationRequest:
    base = dict(
        models=ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder),
        references=(Reference(ref),),
        prompt="a lighthouse",
        steps=3,
        seed=5,
        width=64,
        height=64,
        scale=0.7,
    )
    base.update(kw)
    return GenerationRequest(**base)


# ------------------------------------------------------------------------------- second pass


@pytest.mark.parametrize("start", ["txt2img", "img2img"])
def test_second_pass_equals_the_two_steps_by_hand(
    start, engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref
):
    req = _request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref, num_images=2)
    if start == "img2img":
        req = req.replace(init=InitImage(make_reference_image(52, (64, 72)), 0.8))
    spec = HiresSpec(scale=1.5, strength=0.6, steps=4)
    steps = []
    one_job = engine.generate(req.replace(hires=spec), on_step=steps.append)

    first = engine.generate(req)
    by_hand = []
    for image in first.images:
        size = (round(image.width * 1.5 / 8) * 8, round(image.height * 1.5 / 8) * 8)
        bigger = image.resize(size, Image.Resampling.LANCZOS)
        second = req.replace(
            init=InitImage(bigger, 0.6), width=size[0], height=size[1], steps=4, num_images=1
        )
        by_hand.append(engine.generate(second))
    assert [im.size for im in one_job.images] == [r.images[0].size for r in by_hand]
    assert torch.equal(one_job.latents, torch.cat([r.latents for r in by_hand]))
    for ours, theirs in zip(one_job.images, by_hand, strict=True):
        assert ours.tobytes() == theirs.images[0].tobytes()
    # Progress counts both passes, once each, ending at the total.
    total = steps[-1].total
    assert [s.step for s in steps] == list(range(1, total + 1))
    first_steps = 3 if start == "txt2img" else int(3 * 0.8)
    assert total == first_steps + 2 * int(4 * 0.6)
    assert one_job.request.hires == spec and "+hires" in one_job.request.mode


def test_second_pass_is_refused_clearly(engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref):
    req = _request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref)
    with pytest.raises(RequestError, match="upscaler 'esrgan' is not available"):
        engine.generate(req.replace(hires=HiresSpec(upscaler="esrgan")))
    with pytest.raises(RequestError, match="upscale factor"):
        engine.generate(req.replace(hires=HiresSpec(scale=9)))
    with pytest.raises(RequestError, match="second pass's strength is too low"):
        engine.generate(req.replace(hires=HiresSpec(strength=0.2, steps=3)))
    with pytest.raises(RequestError, match="at most 4096"):
        engine.generate(req.replace(width=2048, height=2048, hires=HiresSpec(scale=3)))


def test_an_upscaler_plugs_in_by_name(engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref, monkeypatch):
    seen = []

    def nearest(image, size):
        seen.append(size)
        return image.resize(size, Image.Resampling.NEAREST)

    monkeypatch.setitem(hires.UPSCALERS, "nearest", nearest)
    req = _request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref, hires=HiresSpec(2.0, 0.5, 2, "nearest"))
    result = engine.generate(req)
    assert seen == [(128, 128)] and result.images[0].size == (128, 128)


# ------------------------------------------------------------------------------- presets


def test_layer_map_matches_the_unet_and_comfyui_numbering(
    engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref
):
    engine.load(_request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref))
    names = list(engine._adapter.installed.processors)
    assert layer_map(names) == SD15_LAYERS  # the tiny UNet has SD1.5's block structure
    assert len(SD15_LAYERS) == 16
    assert [layer.order for layer in SD15_LAYERS] == list(range(16))
    # Official checkpoints number the layers in diffusers' processor order: down, up, then mid.
    assert [layer.checkpoint_key for layer in SD15_LAYERS if layer.part == "mid"] == [31]
    assert sorted(layer.checkpoint_key for layer in SD15_LAYERS) == list(range(1, 32, 2))
    assert [layer.downscale for layer in SD15_LAYERS] == [
        8,
        8,
        16,
        16,
        32,
        32,
        64,
        32,
        32,
        32,
        16,
        16,
        16,
        8,
        8,
        8,
    ]


def test_builtin_presets_are_comfyui_weight_types_on_comfyui_layer_numbers():
    # ComfyUI_IPAdapter_plus (ipadapter_execute, SD1.5): layer numbers = forward order.
    comfy = {
        "Style": {0: 1, 1: 1, 2: 1, 3: 1, 9: 1, 10: 1, 11: 1, 12: 1, 13: 1, 14: 1, 15: 1},
        "Composition": {4: 0.25, 5: 1},
        "Style and composition": {
            **{i: 1 for i in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)},
            4: 0.25,
            5: 1,
        },
        "Style (InstantStyle)": {7: 1, 8: 1, 9: 1},
        "Everything": {i: 1 for i in range(16)},
    }
    for preset in BUILTIN_PRESETS:
        expected = [float(comfy[preset.name].get(i, 0)) for i in range(16)]
        assert layer_weights(preset.weights) == expected, preset.name


def test_presets_scale_match_and_drive_the_engine(engine, tiny_sd15, tiny_adapters, tiny_image_encoder, ref):
    style = find_preset("style")
    scale = style.scale(0.8)
    assert match_preset(scale)[0].name == "Style" and match_preset(scale)[1] == pytest.approx(0.8)
    assert match_preset(0.6) == (BUILTIN_PRESETS[0], 0.6)
    assert match_preset({"up_blocks.3.attentions.2": 1.0, "default": 0.0}) is None
    req = _request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref, scale=scale)
    engine.generate(req)
    procs = engine._adapter.installed.processors
    by_layer = {name.split(".transformer_blocks.")[0]: p.scale for name, p in procs.items()}
    assert [by_layer[layer.name] for layer in SD15_LAYERS] == pytest.approx(
        [0.8 * w for w in layer_weights(style.weights)]
    )


def test_user_presets_save_reload_and_refuse_bad_ones(tmp_path: Path):
    path = tmp_path / "config" / "block_presets.json"
    mine = BlockPreset("Mostly layout", {"down_blocks.2": 1.0, "up_blocks.1.attentions.0": 0.5}, "mine")
    save_preset(mine, path)
    loaded = load_presets(path)
    assert [p.name for p in loaded][: len(BUILTIN_PRESETS)] == [p.name for p in BUILTIN_PRESETS]
    assert loaded[-1] == mine and not loaded[-1].builtin
    assert json.loads(path.read_text())["presets"][0]["weights"] == {
        "down_blocks.2": 1.0,
        "up_blocks.1.attentions.0": 0.5,
    }
    save_preset(BlockPreset("Mostly layout", {"default": 0.3}), path)  # replaces by name
    assert [p.weights for p in load_presets(path) if p.name == "Mostly layout"] == [{"default": 0.3}]
    with pytest.raises(RequestError, match="built-in preset"):
        save_preset(BlockPreset("Style", {"default": 1.0}), path)
    with pytest.raises(RequestError, match="'down_blocks.9' is not an SD1.5 block"):
        save_preset(BlockPreset("x", {"down_blocks.9": 1.0}), path)
    with pytest.raises(RequestError, match="must be from 0 to 2"):
        save_preset(BlockPreset("x", {"default": 3.0}), path)
    delete_preset("Mostly layout", path)
    assert len(load_presets(path)) == len(BUILTIN_PRESETS)
    path.write_text("{ damaged")
    assert len(load_presets(path)) == len(BUILTIN_PRESETS)  # a damaged file never stops the app


# ------------------------------------------------------------------------------- sweep


def test_balance_point_rule():
    # Scaled: CLIP-I 0, .5, 1 ; CLIP-T 1, .5, 0 → harmonic means 0, .5, 0.
    assert balance_scores([0.1, 0.2, 0.3], [0.9, 0.6, 0.3]) == pytest.approx([0.0, 0.5, 0.0])
    assert balance_scores([0.5, 0.5], [0.2, 0.4]) == pytest.approx([0.0, 1.0])  # a flat score counts 1
    assert balance_scores([0.7], [0.3]) == [1.0]


def test_sweep_csv_scores_equal_a_direct_clip_computation(
    engine, tiny_sd15, tiny_adapters, tiny_image_encoder, tiny_clip, tmp_path, ref
):
    ref2 = make_reference_image(53, (60, 80))
    out = tmp_path / "sheet.png"
    code = main(
        [
            "sweep",
            "--model", str(tiny_sd15),
            "--adapter", str(tiny_adapters[("global", "safetensors")]),
            "--image-encoder", str(tiny_image_encoder),
            "--ref", str(_save(ref, tmp_path / "r1.png")),
            "--ref", str(_save(ref2, tmp_path / "r2.png")),
            "--prompt", "a lighthouse at night",
            "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
            "--lambdas", "0,0.5,1",
            "--sweep-preset", "Everything", "--sweep-preset", "Style",
            "--clip-model", str(tiny_clip),
            "--device", "cpu", "--precision", "fp32", "--quiet",
            "--save-images", str(tmp_path / "cells"),
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "sheet.csv").open()))
    assert list(rows[0]) == list(CSV_COLUMNS) and len(rows) == 6
    scorer = ClipScorer(tiny_clip)
    references = scorer.image_embeddings([ref, ref2])
    text = scorer.text_embeddings(["a lighthouse at night"])
    for row in rows:
        picture = Image.open(row["image_file"]).convert("RGB")
        generated = scorer.image_embeddings([picture])
        assert float(row["clip_i"]) == pytest.approx(float(clip_i(generated, references).mean()), abs=1e-6)
        assert float(row["clip_t"]) == pytest.approx(float(clip_t(generated, text)[0]), abs=1e-6)
        # Each saved cell is its own request: λ (and the preset's shape) restored from the PNG.
        cell = request_from_metadata(read_png_metadata(row["image_file"]))
        expected = find_preset(row["preset"]).scale(float(row["lambda"]))
        assert cell.scale == expected and cell.seed == 3
    scores = balance_scores([float(r["clip_i"]) for r in rows], [float(r["clip_t"]) for r in rows])
    assert [int(r["balance"]) for r in rows].index(1) == max(range(6), key=lambda i: (scores[i], -i))
    sheet = Image.open(out)
    assert sheet.width > 3 * 256 and sheet.height > 2 * 256
    meta = read_png_metadata(out)
    assert "sweep_balance_lambda" in meta["parameters"]


def test_sweep_has_progress_and_cancel(engine, tiny_sd15, tiny_adapters, tiny_image_encoder, tiny_clip, ref):
    scorer = ClipScorer(tiny_clip)
    req = _request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref, steps=2)
    seen = []
    result = run_sweep(engine, req, [0.0, 1.0], scorer, on_progress=seen.append)
    finished = [p for p in seen if p.cell is not None]
    assert [p.done for p in finished] == [1, 2] and all(p.total == 2 for p in seen)
    assert sum(p.step is not None for p in seen) == 4  # two steps per cell
    assert result.cells[0].request.scale == 0.0 and result.cells[1].request.scale == 1.0
    sheet = contact_sheet(result, thumb=96)
    assert sheet.size[0] >= 2 * 96

    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        run_sweep(engine, req, [0.0, 0.5, 1.0], scorer, should_cancel=cancel)


def test_sweep_refuses_what_it_cannot_weigh(
    engine, tiny_sd15, tiny_adapters, tiny_image_encoder, tiny_clip, ref
):
    scorer = ClipScorer(tiny_clip)
    req = _request(tiny_sd15, tiny_adapters, tiny_image_encoder, ref)
    with pytest.raises(RequestError, match="type a prompt"):
        run_sweep(engine, req.replace(prompt=" "), [0.5], scorer)
    with pytest.raises(RequestError, match="add a reference"):
        run_sweep(engine, req.replace(references=()), [0.5], scorer)
    with pytest.raises(RequestError, match="at most 64"):
        sweep_requests(req, [0.1] * 65)
    with pytest.raises(RequestError, match="λ"):
        run_sweep(engine, req, [math.inf], scorer)


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path
