"""Inpainting and img2img at any size; "masked area only" keeps every unmasked pixel exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ipa_studio.core import compose
from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import ImageInputError, RequestError
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.request import GenerationRequest, InitImage, MaskSpec, ModelSpec, Reference


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


def _request(models, init, mask=None, **kw) -> GenerationRequest:
    return GenerationRequest(
        models=models,
        references=(Reference(make_reference_image(9, (64, 64))),),
        prompt="stone wall",
        steps=3,
        seed=3,
        width=64,
        height=64,
        init=InitImage(init, kw.pop("strength", 0.9)),
        mask=mask,
        **kw,
    )


@pytest.fixture()
def models(tiny_sd15, tiny_adapters, tiny_image_encoder):
    return ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)


@pytest.mark.parametrize("only_masked", [False, True])
@pytest.mark.parametrize("base", ["tiny_sd15", "tiny_sd15_inpaint"])
def test_pixels_outside_mask_are_bit_identical(engine, models, only_masked, base, request):
    models = ModelSpec(request.getfixturevalue(base), models.adapter, models.image_encoder)
    init = make_reference_image(4, (517, 389))
    mask = make_mask((517, 389), (300, 120, 380, 200))
    result = engine.generate(_request(models, init, MaskSpec(mask, only_masked=only_masked, blur=3)))
    out = np.asarray(result.images[0])
    assert result.images[0].size == (517, 389)
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(init)[outside])
    inside = np.asarray(mask) == 255
    assert np.abs(out[inside].astype(int) - np.asarray(init)[inside].astype(int)).mean() > 5


def test_odd_sizes_round_trip(engine, models):
    init = make_reference_image(5, (517, 389))
    assert engine.generate(_request(models, init, strength=0.5)).images[0].size == (517, 389)
    txt = GenerationRequest(models=models, prompt="x", steps=2, width=100, height=76)
    assert engine.generate(txt).images[0].size == (100, 76)


def test_mask_of_same_shape_is_scaled_with_notice(engine, models):
    init = make_reference_image(6, (96, 64))
    mask = make_mask((192, 128), (20, 20, 100, 100))
    result = engine.generate(_request(models, init, MaskSpec(mask)))
    assert any("scaled" in n for n in result.notices)
    with pytest.raises(ImageInputError, match="different shapes"):
        engine.generate(_request(models, init, MaskSpec(make_mask((64, 64), (0, 0, 8, 8)))))


def test_empty_mask_with_masked_only_is_refused(engine, models):
    init = make_reference_image(7, (64, 64))
    with pytest.raises(RequestError, match="empty"):
        engine.generate(_request(models, init, MaskSpec(Image.new("L", (64, 64)), only_masked=True)))


def test_crop_box_pads_keeps_aspect_and_stays_inside():
    mask = make_mask((400, 300), (190, 140, 210, 160))
    box = compose.crop_box(mask, padding=10, aspect=1.0)
    left, top, right, bottom = box
    assert right - left == bottom - top == 40
    assert left <= 180 and right >= 220 and top <= 130 and bottom >= 170
    edge = compose.crop_box(make_mask((400, 300), (0, 0, 10, 10)), padding=32, aspect=2.0)
    assert edge[0] == 0 and edge[1] == 0 and edge[2] <= 400 and edge[3] <= 300
    assert (edge[2] - edge[0]) == 2 * (edge[3] - edge[1])


def test_blend_alpha_feathers_inwards_only():
    mask = make_mask((64, 64), (16, 16, 48, 48))
    alpha = compose.blend_alpha(mask, blur=4)
    assert alpha[np.asarray(mask) == 0].max() == 0.0
    assert 0.0 < alpha[16, 32] < 1.0 and alpha[32, 32] == pytest.approx(1.0, abs=1e-3)
