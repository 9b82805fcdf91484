"""Every request field survives a trip through PNG metadata."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from ipa_studio.core.errors import RequestError
from ipa_studio.core.images import content_hash, read_png_metadata, save_png
from ipa_studio.core.metadata import (
    FORMAT_VERSION,
    JSON_KEY,
    PARAMETERS_KEY,
    request_from_metadata,
    request_to_metadata,
)
from ipa_studio.core.request import (
    ControlSpec,
    EncoderView,
    GenerationRequest,
    HiresSpec,
    InitImage,
    LoraSpec,
    MaskSpec,
    ModelSpec,
    NegativeImage,
    Reference,
)


def full_request() -> GenerationRequest:
    """A request in which no field has its default value, nested ones included."""
    return GenerationRequest(
        models=ModelSpec(
            base="models/dreamshaper_8.safetensors",
            adapter="models/ip-adapter-plus_sd15.safetensors",
            image_encoder="models/image_encoder",
        ),
        references=(
            Reference(
                "refs/cat.png", 0.7, 0.1, 0.8, mask="masks/left.png", view=EncoderView("crop", (10, 20, 300))
            ),
            Reference(
                "refs/hat, red.jpg",
                0.3,
                0.25,
                0.9,
                mask="masks/right.png",
                view=EncoderView("crop", (0, 0, 64)),
            ),
        ),
        prompt='a cat in a hat, "studio" light: soft\nsecond line — café 猫',
        negative_prompt="blurry, lowres",
        scale={"default": 0.4, "down_blocks.2": 1.0, "up_blocks.0.attentions.1": 0.25},
        steps=31,
        guidance=6.25,
        seed=2**63 - 1,
        width=640,
        height=384,
        scheduler="euler-a",
        num_images=3,
        init=InitImage("init.png", strength=0.55),
        mask=MaskSpec("mask.png", only_masked=True, padding=48, blur=2),
        controls=(
            ControlSpec("pose.png", "controlnets/openpose", scale=0.8, start=0.1, end=0.9),
            ControlSpec("depth.png", "controlnets/depth", scale=0.5, start=0.2, end=0.5),
        ),
        negative_image=NegativeImage("negative.png", noise=0.25),
        hires=HiresSpec(scale=1.5, strength=0.4, steps=12, upscaler="4x-model"),
        loras=(
            LoraSpec("loras/detail, tweaker.safetensors", 0.8, 0.4, enabled=False),
            LoraSpec("loras/style.pt", -0.5, 1.5, enabled=False),
        ),
        embeddings=("embeddings/easynegative.safetensors", "embeddings/bad-hands-5.pt"),
    )


def assert_no_defaults(obj: object) -> None:
    """Guards the round-trip test itself: a field added later must be given a non-default value here."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            assert value != f.default, f"{type(obj).__name__}.{f.name} has its default value"
        if f.default_factory is not dataclasses.MISSING:
            assert value != f.default_factory(), f"{type(obj).__name__}.{f.name} has its default value"
        if dataclasses.is_dataclass(value):
            assert_no_defaults(value)
        if isinstance(value, tuple):
            for item in value:
                if dataclasses.is_dataclass(item):
                    assert_no_defaults(item)


def test_fixture_sets_every_field() -> None:
    assert_no_defaults(full_request())


def test_every_field_round_trips_through_a_png(tmp_path: Path) -> None:
    request = full_request()
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "out.png", request_to_metadata(request))

    restored = request_from_metadata(read_png_metadata(path))

    assert restored == request


def test_paths_come_back_as_strings() -> None:
    request = GenerationRequest(
        models=ModelSpec(base=Path("m/base"), adapter=Path("a.bin")),
        references=(Reference(Path("r.png")),),
    )
    restored = request_from_metadata(request_to_metadata(request))
    assert restored.models == ModelSpec(base=str(Path("m/base")), adapter=str(Path("a.bin")))
    assert restored.references[0].image == str(Path("r.png"))


def test_defaults_and_float_scale_round_trip() -> None:
    request = GenerationRequest(models=ModelSpec(base="runwayml/stable-diffusion-v1-5"), scale=0.6)
    restored = request_from_metadata(request_to_metadata(request))
    assert restored == request
    assert isinstance(restored.scale, float)
    assert isinstance(restored.guidance, float)


def test_integer_valued_floats_stay_floats() -> None:
    request = GenerationRequest(models=ModelSpec(base="m"), guidance=7.0, scale=1.0)
    data = request_to_metadata(request)
    data[JSON_KEY] = data[JSON_KEY].replace("7.0", "7")  # as another JSON writer might store it
    restored = request_from_metadata(data)
    assert restored.guidance == 7.0 and isinstance(restored.guidance, float)


def test_parameters_line_is_human_readable() -> None:
    request = GenerationRequest(
        models=ModelSpec(base="models/dreamshaper_8.safetensors", adapter="ip-adapter_sd15.bin"),
        prompt="a cat",
        negative_prompt="blurry",
        scale=0.6,
        steps=30,
        seed=1,
    )
    text = request_to_metadata(request, extra={"Time taken": "3.2 s"})[PARAMETERS_KEY]
    lines = text.split("\n")
    assert lines[0] == "a cat"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        "Steps: 30, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: dreamshaper_8, "
        "IP-Adapter scale: 0.6, Adapter: ip-adapter_sd15"
    )
    assert "Time taken: 3.2 s" in lines[2]


def test_parameters_quote_values_with_separators() -> None:
    request = full_request()
    line = request_to_metadata(request)[PARAMETERS_KEY].split("\n")[-1]
    assert "Reference weights: 0.7; 0.3" in line
    assert 'ControlNet 0: "Model: openpose, Weight: 0.8, Start: 0.1, End: 0.9"' in line
    assert "Denoising strength: 0.55" in line
    assert "Mode: inpaint+controlnet" in line


def test_json_records_version_and_extra() -> None:
    document = json.loads(request_to_metadata(full_request(), extra={"index": 2})[JSON_KEY])
    assert document["version"] == FORMAT_VERSION
    assert document["extra"] == {"index": 2}
    assert document["request"]["references"][1] == {
        "image": "refs/hat, red.jpg",
        "weight": 0.3,
        "start": 0.25,
        "end": 0.9,
        "mask": "masks/right.png",
        "view": {"fit": "crop", "box": [0, 0, 64]},
    }


# --- images that existed only in memory ----------------------------------------------------------


def in_memory_request() -> tuple[GenerationRequest, Image.Image]:
    pasted = Image.new("RGB", (4, 4), (9, 9, 9))
    request = GenerationRequest(
        models=ModelSpec(base="m"),
        references=(Reference(pasted, 0.5), Reference("on_disk.png")),
        init=InitImage("init.png"),
        mask=MaskSpec("mask.png"),
    )
    return request, pasted


def test_in_memory_image_is_recorded_by_hash() -> None:
    request, pasted = in_memory_request()
    document = json.loads(request_to_metadata(request)[JSON_KEY])
    assert document["request"]["references"][0]["image"] == {
        "in_memory": True,
        "sha256": content_hash(pasted),
        "size": [4, 4],
        "mode": "RGB",
    }


def test_missing_in_memory_image_raises_by_default() -> None:
    request, _ = in_memory_request()
    with pytest.raises(RequestError, match="reference image 1 was only in memory"):
        request_from_metadata(request_to_metadata(request))


def test_missing_in_memory_image_can_be_supplied_or_dropped() -> None:
    request, pasted = in_memory_request()
    meta = request_to_metadata(request)

    supplied = request_from_metadata(meta, images={content_hash(pasted): pasted})
    assert supplied == request

    dropped = request_from_metadata(meta, missing="drop")
    assert dropped == request.replace(references=(Reference("on_disk.png"),))


def test_dropping_the_init_image_drops_its_mask() -> None:
    request = GenerationRequest(
        models=ModelSpec(base="m"),
        init=InitImage(Image.new("RGB", (2, 2))),
        mask=MaskSpec("mask.png"),
    )
    dropped = request_from_metadata(request_to_metadata(request), missing="drop")
    assert dropped.init is None and dropped.mask is None and dropped.mode == "txt2img"


# --- damaged or foreign metadata -----------------------------------------------------------------


def test_no_settings() -> None:
    with pytest.raises(RequestError, match="no IPA Studio settings"):
        request_from_metadata({"parameters": "a cat\nSteps: 20"})


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "{not json", "damaged"),
        (lambda d: json.dumps({**d, "version": 0}), "no format version"),
        (lambda d: json.dumps({**d, "request": {**d["request"], "steps": "many"}}), "whole number"),
        (lambda d: json.dumps({**d, "request": {**d["request"], "scheduler": "plms"}}), "sampler 'plms'"),
        (lambda d: json.dumps({**d, "request": {**d["request"], "colour": 1}}), "unknown setting colour"),
        (
            lambda d: json.dumps({**d, "version": FORMAT_VERSION + 1, "request": {**d["request"], "x": 1}}),
            "newer IPA Studio",
        ),
        (lambda d: json.dumps({**d, "request": {"prompt": "no models"}}), "damaged"),
    ],
)
def test_damaged_settings_are_reported(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    meta = request_to_metadata(GenerationRequest(models=ModelSpec(base="m")))
    document = json.loads(meta[JSON_KEY])
    with pytest.raises(RequestError, match=message):
        request_from_metadata({JSON_KEY: mutate(document)})


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(RequestError, match="cannot be saved"):
        request_to_metadata(GenerationRequest(models=ModelSpec(base="m"), guidance=float("nan")))


# --- image-prompt controls -------------------------------------------------------------------------


def test_image_prompt_controls_in_the_parameters_line() -> None:
    line = request_to_metadata(full_request())[PARAMETERS_KEY].split("\n")[-1]
    assert 'Reference windows: "0.1-0.8, 0.25-0.9"' in line
    assert 'Reference masks: "yes, yes"' in line
    assert 'Reference views: "crop:10,20,300, crop:0,0,64"' in line
    assert 'Negative image: "image, noise 0.25"' in line
    assert "Hires upscale: 1.5, Hires steps: 12, Hires upscaler: 4x-model, Hires strength: 0.4" in line
    plain = request_to_metadata(GenerationRequest(models=ModelSpec(base="m")))[PARAMETERS_KEY]
    assert "Reference" not in plain and "Hires" not in plain and "Negative image" not in plain


def test_in_memory_region_mask_and_negative_image_round_trip_or_drop() -> None:
    painted = Image.new("L", (8, 8), 255)
    negative = Image.new("RGB", (4, 4), (1, 2, 3))
    request = GenerationRequest(
        models=ModelSpec(base="m"),
        references=(Reference("a.png", mask=painted, view=EncoderView("pad")), Reference("b.png")),
        negative_image=NegativeImage(negative, 0.5),
    )
    meta = request_to_metadata(request)
    images = {content_hash(painted): painted, content_hash(negative): negative}
    assert request_from_metadata(meta, images=images) == request
    with pytest.raises(
        RequestError, match="mask of reference image 1 and negative image were only in memory"
    ):
        request_from_metadata(meta)
    dropped = request_from_metadata(meta, missing="drop")
    # The reference stays (acting everywhere); the negative image goes.
    assert dropped.references == (Reference("a.png", view=EncoderView("pad")), Reference("b.png"))
    assert dropped.negative_image is None


def test_a_damaged_crop_square_is_reported() -> None:
    meta = request_to_metadata(
        GenerationRequest(models=ModelSpec(base="m"), references=(Reference("a.png"),))
    )
    document = json.loads(meta[JSON_KEY])
    document["request"]["references"][0]["view"] = {"fit": "crop", "box": [1, 2]}
    meta[JSON_KEY] = json.dumps(document)
    with pytest.raises(RequestError, match="crop square must be three whole numbers"):
        request_from_metadata(meta)
