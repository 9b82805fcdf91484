"""The view state on its own: requests it builds, refuses, and restores."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipa_studio.core.errors import RequestError
from ipa_studio.core.request import GenerationRequest, InitImage, ModelSpec, Reference
from ipa_studio.core.settings import LastValues, ModelPaths
from ipa_studio.gui.state import ViewState

MODELS = ModelPaths("/m/sd15", "/m/ip.safetensors", "/m/encoder")


def test_defaults_are_the_artist_defaults(qapp) -> None:
    state = ViewState()
    assert (state.steps, state.guidance, state.scale, state.num_images) == (30, 7.5, 0.6, 1)


def test_changed_fires_once_per_real_change(qapp) -> None:
    state = ViewState()
    seen: list[str] = []
    state.changed.connect(seen.append)
    state.set("steps", 12)
    state.set("steps", 12)
    state.set("prompt", "x")
    assert seen == ["steps", "prompt"]
    with pytest.raises(AttributeError):
        state.set("nonsense", 1)


@pytest.mark.parametrize(
    "preset, scale, prompt_after", [("image", 1.0, ""), ("balanced", 0.6, "a cat"), ("text", 0.3, "a cat")]
)
def test_presets(qapp, preset: str, scale: float, prompt_after: str) -> None:
    state = ViewState(LastValues(prompt="a cat", scale=0.42))
    state.apply_preset(preset)
    assert state.scale == scale and state.prompt == prompt_after


def test_refusals_say_what_is_missing(qapp, tmp_path: Path) -> None:
    state = ViewState(LastValues(prompt="a cat"))
    with pytest.raises(RequestError, match="base model"):
        state.build_request()
    state.set_models(ModelPaths(base="/m/sd15"))
    assert state.build_request().models == ModelSpec("/m/sd15")  # text only works without an adapter
    state.add_reference(tmp_path / "r.png")
    with pytest.raises(RequestError, match="IP-Adapter"):
        state.build_request()
    state.set_models(ModelPaths("/m/sd15", "/m/ip.safetensors"))
    with pytest.raises(RequestError, match="image encoder"):
        state.build_request()
    state.clear_references()
    state.set("prompt", "  ")
    with pytest.raises(RequestError, match="reference image or type a prompt"):
        state.build_request()


def test_seed_is_drawn_per_job_unless_locked(qapp, tmp_path: Path) -> None:
    state = ViewState(LastValues(prompt="p", seed=5), MODELS)
    seeds = {state.next_request().seed for _ in range(5)}
    assert len(seeds) > 1 and state.seed in seeds  # the panel shows the seed that was used
    state.set("seed_locked", True)
    state.set("seed", 77)
    assert [state.next_request().seed for _ in range(3)] == [77, 77, 77]


def test_a_refused_job_does_not_use_up_a_seed(qapp) -> None:
    state = ViewState(LastValues(prompt="p", seed=5))
    with pytest.raises(RequestError):
        state.next_request()
    assert state.seed == 5


def test_apply_request_restores_per_block_scale_and_reports_what_it_cannot(qapp, tmp_path: Path) -> None:
    ref = tmp_path / "r.png"
    ref.write_bytes(b"")  # only its existence matters here
    request = GenerationRequest(
        models=ModelSpec("/elsewhere/sd15", "/elsewhere/ip.bin", "/elsewhere/enc"),
        references=(Reference(str(ref), 0.5), Reference(str(tmp_path / "gone.png"))),
        prompt="p",
        scale={"down_blocks": 0.0, "up_blocks": 1.0},
        init=InitImage(str(ref)),
    )
    state = ViewState(models=MODELS)
    notes = state.apply_request(request)
    # No preset gives this map: the block map shows it as it is, at λ 1.
    assert state.block_weights == {"down_blocks": 0.0, "up_blocks": 1.0}
    assert (state.block_preset, state.scale) == ("", 1.0)
    assert [r.path for r in state.references] == [str(ref)]
    assert state.models == MODELS  # the image's models are not on this computer
    assert len(notes) == 2
    assert "could not be found" in notes[0] and "not on this computer" in notes[1]
    assert (state.mode, state.init_path) == ("img2img", str(ref))  # the window does img2img now
    assert state.build_request().scale == {"down_blocks": 0.0, "up_blocks": 1.0}
    state.set("scale", 0.5)  # the slider scales the map
    assert state.build_request().scale == {"down_blocks": 0.0, "up_blocks": 0.5}
