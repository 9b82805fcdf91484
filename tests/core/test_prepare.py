"""Every setting of a request is range-checked, in words that name it, before any model is read."""

from __future__ import annotations

import math

import pytest
import torch

from ipa_studio.cli import main
from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import RequestError
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.prepare import MAX_SIDE, check_request, prepare
from ipa_studio.core.request import ControlSpec, GenerationRequest, InitImage, MaskSpec, ModelSpec, Reference

NOWHERE = "/nonexistent/model-that-would-fail-to-load"


def _request(**changes) -> GenerationRequest:
    ref = make_reference_image(1, (64, 64))
    base = GenerationRequest(
        models=ModelSpec(NOWHERE, NOWHERE + "/adapter.safetensors", NOWHERE + "/encoder"),
        references=(Reference(ref),),
        steps=4,
        width=64,
        height=64,
    )
    return base.replace(**changes)


def _init(strength: float = 0.5) -> InitImage:
    return InitImage(make_reference_image(2, (64, 64)), strength)


def _mask(**kw) -> MaskSpec:
    return MaskSpec(make_mask((64, 64), (8, 8, 40, 40)), **kw)


BAD = [
    ({"steps": 0}, "Steps"),
    ({"steps": 100_000}, "Steps"),
    ({"steps": 2.5}, "Steps must be a whole number"),
    ({"guidance": 1e308}, "Guidance"),
    ({"guidance": math.nan}, "Guidance must be a finite number"),
    ({"guidance": -1.0}, "Guidance"),
    ({"scale": -1.0}, "λ"),
    ({"scale": 1e9}, "λ"),
    ({"scale": math.inf}, "λ"),
    ({"scale": {"down_blocks": math.nan}}, "λ for 'down_blocks'"),
    ({"scale": {}}, "Per-block λ"),
    ({"seed": 2**70}, "Seed"),
    ({"seed": -1}, "Seed"),
    ({"seed": True}, "Seed must be a whole number"),
    ({"num_images": 0}, "number of images"),
    ({"num_images": 1000}, "number of images"),
    ({"width": 100_000}, "Width"),
    ({"height": 40}, "Height"),
    ({"scheduler": "plms"}, "Unknown scheduler 'plms'"),
    ({"references": (Reference(make_reference_image(1, (64, 64)), math.nan),)}, "reference image 1"),
    ({"references": (Reference(make_reference_image(1, (64, 64)), -0.5),)}, "reference image 1"),
    ({"init": _init(0.0)}, "Strength must be above 0"),
    ({"init": _init(math.nan)}, "Strength"),
    ({"init": _init(), "mask": _mask(padding=-4)}, "Mask padding"),
    ({"init": _init(), "mask": _mask(blur=10_000)}, "Mask edge blend"),
    ({"mask": _mask()}, "Inpainting needs an init image"),
    ({"controls": (ControlSpec(make_reference_image(3, (64, 64)), NOWHERE, 1e30),)}, "strength of control 1"),
    ({"controls": (ControlSpec(make_reference_image(3, (64, 64)), NOWHERE, 1.0, 0.8, 0.2),)}, "start"),
    ({"controls": (ControlSpec(make_reference_image(3, (64, 64)), NOWHERE, 1.0, -0.1, 0.5),)}, "start"),
]


@pytest.mark.parametrize(("changes", "named"), BAD, ids=[str(sorted(c)) for c, _ in BAD])
def test_each_bad_setting_is_named(changes, named):
    with pytest.raises(RequestError, match=named):
        check_request(_request(**changes))


@pytest.mark.parametrize(("changes", "named"), BAD[:12], ids=[str(sorted(c)) for c, _ in BAD[:12]])
def test_engine_refuses_before_reading_any_model(changes, named):
    # The model paths do not exist: had the engine tried to load anything, the error would be
    # about the missing model instead of the setting.
    engine = Engine(device="cpu", dtype=torch.float32)
    with pytest.raises(RequestError, match=named):
        engine.generate(_request(**changes))
    assert engine.base is None and engine.stats.components_loaded == []


def test_good_request_passes_and_edges_are_inclusive():
    check_request(_request())
    check_request(_request(steps=1, guidance=0.0, scale=0.0, seed=0, num_images=1))
    check_request(_request(seed=2**64 - 1, width=MAX_SIDE, height=64, scale={"up_blocks": 2.0}))
    check_request(_request(init=_init(1.0), mask=_mask(padding=0, blur=0)))


def test_start_picture_too_large_is_refused_unless_masked_only():
    big = InitImage(make_reference_image(4, (MAX_SIDE + 8, 64)), 0.5)
    with pytest.raises(RequestError, match="at most 4096 pixels"):
        prepare(_request(init=big))
    mask = MaskSpec(make_mask((MAX_SIDE + 8, 64), (8, 8, 40, 40)), only_masked=True)
    prepared = prepare(_request(init=big, mask=mask))
    assert prepared.size == (64, 64) and prepared.crop is not None


def test_prepared_inputs_say_what_each_mode_needs():
    txt = prepare(_request())
    assert txt.start is None and txt.mask is None and txt.controls == ()
    assert len(txt.references) == 1 and txt.weights == (1.0,)
    img = prepare(_request(init=InitImage(make_reference_image(2, (90, 70)), 0.5)))
    assert img.original_size == (90, 70) and img.size == (88, 72)
    assert img.start.work.size == (88, 72) and img.mask is None
    # A reference at weight 0 is left out, with its weight.
    two = prepare(
        _request(
            references=(Reference(make_reference_image(1, (64, 64)), 0.0), Reference(img.start.original))
        )
    )
    assert len(two.references) == 1 and two.weights == (1.0,)


def test_cli_names_the_setting_and_writes_nothing(tmp_path, capsys):
    ref = tmp_path / "ref.png"
    make_reference_image(1, (64, 64)).save(ref)
    out = tmp_path / "out.png"
    argv = ["generate", "--model", NOWHERE, "--ref", str(ref), "--adapter", NOWHERE + "/a.safetensors",
            "--image-encoder", NOWHERE, "--out", str(out), "--quiet"]  # fmt: skip
    for flag, value, named in [
        ("--guidance", "1e308", "Guidance"),
        ("--scale", "-1", "λ"),
        ("--steps", "100000", "Steps"),
        ("--seed", str(2**70), "Seed"),
        ("--num-images", "0", "number of images"),
        ("--width", "100000", "Width"),
        ("--guidance", "nan", "Guidance must be a finite number"),
    ]:
        assert main([*argv, flag, value]) == 2
        err = capsys.readouterr().err
        assert named in err, err
        assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [ref]
