"""The view state's img2img / inpainting half: the requests it builds and refuses, and the way back."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ipa_studio.core.errors import RequestError
from ipa_studio.core.request import GenerationRequest, InitImage, MaskSpec, ModelSpec
from ipa_studio.core.settings import LastValues, ModelPaths
from ipa_studio.gui.state import ViewState

MODELS = ModelPaths("/m/sd15", "/m/ip.safetensors", "/m/encoder")


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    init, mask = tmp_path / "start.png", tmp_path / "mask.png"
    Image.new("RGB", (96, 80)).save(init)
    Image.new("L", (96, 80), 255).save(mask)
    return str(init), str(mask)


def test_each_mode_builds_its_request_and_refuses_what_is_missing(qapp, files) -> None:
    init, mask = files
    state = ViewState(LastValues(prompt="a boat"), MODELS)
    request = state.build_request()
    assert (request.init, request.mask, request.mode) == (None, None, "txt2img")

    state.set("mode", "img2img")
    with pytest.raises(RequestError, match="starts from a picture"):
        state.build_request()
    state.set("init_path", init)
    state.set("strength", 0.4)
    request = state.build_request()
    assert request.init == InitImage(init, 0.4) and request.mask is None and request.mode == "img2img"

    state.set("mode", "inpaint")
    with pytest.raises(RequestError, match="Paint the part to repaint"):
        state.build_request()
    state.set("mask_path", mask)
    for name, value in (("only_masked", True), ("mask_padding", 48), ("mask_blur", 7)):
        state.set(name, value)
    request = state.build_request()
    assert request.mask == MaskSpec(mask, only_masked=True, padding=48, blur=7)
    assert request.init == InitImage(init, 0.4) and request.mode == "inpaint"

    state.set("mode", "txt2img")  # the picture and mask stay, unused, for when the mode comes back
    assert state.build_request().init is None and state.init_path == init


def test_values_are_checked_on_the_way_in(qapp) -> None:
    state = ViewState()
    for given, kept in ((0.0, 0.01), (1.7, 1.0), (float("nan"), 0.01), (0.333333, 0.3333)):
        state.set("strength", given)
        assert state.strength == kept
    state.set("mask_padding", -5)
    assert state.mask_padding == 0
    with pytest.raises(ValueError, match="mode"):
        state.set("mode", "outpaint")
    seen: list[str] = []
    state.changed.connect(seen.append)
    state.set("mode", "inpaint")
    state.set("mode", "inpaint")
    assert seen == ["mode"]


def test_apply_request_restores_picture_mask_and_options(qapp, files, tmp_path: Path) -> None:
    init, mask = files
    request = GenerationRequest(
        models=ModelSpec("/elsewhere/sd15"),
        prompt="p",
        init=InitImage(init, 0.55),
        mask=MaskSpec(mask, only_masked=True, padding=16, blur=2),
    )
    state = ViewState(models=MODELS)
    seen: list[str] = []
    state.changed.connect(seen.append)
    notes = state.apply_request(request)
    assert not [n for n in notes if "picture" in n or "mask" in n]
    assert (state.mode, state.init_path, state.strength, state.mask_path) == ("inpaint", init, 0.55, mask)
    assert (state.only_masked, state.mask_padding, state.mask_blur) == (True, 16, 2)
    assert seen.index("init_path") < seen.index("mask_path")  # the canvas opens the picture first
    rebuilt = state.build_request()
    assert (rebuilt.init, rebuilt.mask) == (request.init, request.mask)

    # A mask that is gone: the picture is still worth having, as img2img.
    gone = request.replace(mask=MaskSpec(str(tmp_path / "gone.png")))
    notes = ViewState(models=MODELS).apply_request(gone)
    assert any("mask could not be found" in n for n in notes)
    # The picture gone too (or only pasted in memory): back to a new picture, said plainly.
    state = ViewState(models=MODELS)
    notes = state.apply_request(gone.replace(init=InitImage(Image.new("RGB", (64, 64)))))
    assert state.mode == "txt2img" and any("could not be found" in n for n in notes)
    # A plain text-to-image request puts the mode back too.
    state.set("mode", "img2img")
    state.apply_request(GenerationRequest(models=ModelSpec("/m/sd15"), prompt="p"))
    assert state.mode == "txt2img"
