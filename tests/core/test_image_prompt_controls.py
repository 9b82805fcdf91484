"""The image-prompt controls, each shown by its exact effect.

- regional masks against diffusers' own ``ip_adapter_masks`` (≤ 1e-4 on the latents);
- the step window runs the adapter's attention on exactly the steps asked (processor calls counted);
- a negative image changes only the unconditional branch;
- an encoder view changes exactly the encoder's input pixels (the default is CLIP's own path);
- a saved reference is bit-identical to a fresh encoding and costs 0 encoder calls in a new engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.image_processor import IPAdapterMaskProcessor
from PIL import Image

from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import RequestError
from ipa_studio.core.image_prompt import in_window
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.references import ReferenceStore, encoder_inputs, noised, normalise, tile_boxes
from ipa_studio.core.request import (
    EncoderView,
    GenerationRequest,
    InitImage,
    ModelSpec,
    NegativeImage,
    Reference,
)
from tests.fixtures.reference import diffusers_pipeline

TOL = 1e-4
SEED = 99


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def pictures():
    return {
        "a": make_reference_image(31, (80, 60)),
        "b": make_reference_image(32, (50, 70)),
        "neg": make_reference_image(33, (64, 64)),
        # Left and right halves, with a soft-ish step so binarising matters.
        "left": make_mask((64, 64), (0, 0, 32, 64)),
        "right": make_mask((64, 64), (32, 0, 64, 64)),
        "blob": make_mask((64, 64), (8, 16, 40, 56)),
    }


def _request(tiny_sd15, adapter, encoder, refs, **kw) -> GenerationRequest:
    base = dict(
        models=ModelSpec(tiny_sd15, adapter, encoder),
        references=tuple(refs),
        prompt="a red kite",
        steps=4,
        guidance=7.5,
        seed=SEED,
        width=64,
        height=64,
        scale=0.8,
    )
    base.update(kw)
    return GenerationRequest(**base)


# ------------------------------------------------------------------------------- regional masks


@pytest.fixture(scope="module")
def diffusers_txt2img(tiny_sd15, tiny_image_encoder):
    cache = {}

    def get(adapter):
        if adapter not in cache:
            cache[adapter] = diffusers_pipeline(
                StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, adapter
            )
        return cache[adapter]

    return get


def _diffusers_masked(pipe, images, masks, scale):
    processor = IPAdapterMaskProcessor()
    prepared = processor.preprocess(masks, height=64, width=64)
    prepared = prepared.reshape(1, prepared.shape[0], prepared.shape[2], prepared.shape[3])
    pipe.set_ip_adapter_scale(scale)
    with torch.no_grad():
        return pipe(
            prompt="a red kite",
            ip_adapter_image=[images],
            cross_attention_kwargs={"ip_adapter_masks": [prepared]},
            num_inference_steps=4,
            guidance_scale=7.5,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="latent",
        ).images


@pytest.mark.parametrize("variant", ["global", "plus"])
def test_two_regional_references_match_diffusers_ip_adapter_masks(
    variant, engine, pictures, diffusers_txt2img, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    adapter = tiny_adapters[(variant, "safetensors")]
    refs = [Reference(pictures["a"], mask=pictures["left"]), Reference(pictures["b"], mask=pictures["right"])]
    ours = engine.generate(_request(tiny_sd15, adapter, tiny_image_encoder, refs)).latents
    theirs = _diffusers_masked(
        diffusers_txt2img(adapter), [pictures["a"], pictures["b"]], [pictures["left"], pictures["right"]], 0.8
    )
    diff = (ours - theirs).abs().max().item()
    assert diff <= TOL, f"max |Δlatent| = {diff:.2e}"
    # Guard: the masks matter (the same two references without masks share one attention instead).
    unmasked = engine.generate(
        _request(tiny_sd15, adapter, tiny_image_encoder, [Reference(pictures["a"]), Reference(pictures["b"])])
    ).latents
    assert (ours - unmasked).abs().max().item() > 1e-3


def test_one_regional_reference_matches_diffusers(
    engine, pictures, diffusers_txt2img, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    adapter = tiny_adapters[("global", "bin")]
    refs = [Reference(pictures["a"], mask=pictures["blob"])]
    ours = engine.generate(_request(tiny_sd15, adapter, tiny_image_encoder, refs, scale=1.0)).latents
    theirs = _diffusers_masked(diffusers_txt2img(adapter), [pictures["a"]], [pictures["blob"]], 1.0)
    assert (ours - theirs).abs().max().item() <= TOL


def test_a_region_mask_of_another_shape_is_refused_in_words(
    engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    refs = [Reference(pictures["a"], mask=Image.new("L", (64, 20), 255))]
    req = _request(tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder, refs)
    with pytest.raises(RequestError, match="mask of reference image 1 is 64×20"):
        engine.generate(req)


# ------------------------------------------------------------------------------- step window


def _count_image_attention(engine, request):
    result = engine.generate(request)
    ctx = engine._adapter.installed.context
    return result, ctx.image_attention_calls


def test_window_runs_the_image_attention_on_exactly_the_steps_asked(
    engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    adapter = tiny_adapters[("global", "safetensors")]
    steps = 8
    full = _request(tiny_sd15, adapter, tiny_image_encoder, [Reference(pictures["a"])], steps=steps)
    engine.load(full)
    layers = len(engine._adapter.installed.processors)
    ctx = engine._adapter.installed.context

    ctx.image_attention_calls = 0
    engine.generate(full)
    assert ctx.image_attention_calls == steps * layers

    windowed = full.replace(references=(Reference(pictures["a"], start=0.25, end=0.75),))
    ctx.image_attention_calls = 0
    engine.generate(windowed)
    expected_steps = [i for i in range(steps) if in_window(i, steps, 0.25, 0.75)]
    assert expected_steps == [2, 3, 4, 5]
    assert ctx.image_attention_calls == len(expected_steps) * layers

    # Two references with different windows share one attention while both are in; a step where
    # only one is in still runs one attention per layer; the group is skipped when neither is.
    two = full.replace(
        references=(
            Reference(pictures["a"], start=0.0, end=0.5),
            Reference(pictures["b"], start=0.25, end=0.75),
        )
    )
    ctx.image_attention_calls = 0
    engine.generate(two)
    active = [i for i in range(steps) if in_window(i, steps, 0, 0.5) or in_window(i, steps, 0.25, 0.75)]
    assert ctx.image_attention_calls == len(active) * layers


def test_window_covering_no_step_equals_the_plain_model_and_full_window_is_the_default(
    engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    adapter = tiny_adapters[("plus", "safetensors")]
    base = _request(tiny_sd15, adapter, tiny_image_encoder, [Reference(pictures["a"])])
    plain = engine.generate(base.replace(scale=0.0)).latents
    # A window narrower than one of the 4 steps holds no step: the adapter never runs.
    never = engine.generate(base.replace(references=(Reference(pictures["a"], start=0.3, end=0.4),))).latents
    assert torch.equal(never, plain)
    default = engine.generate(base).latents
    explicit = engine.generate(
        base.replace(references=(Reference(pictures["a"], start=0.0, end=1.0),))
    ).latents
    assert torch.equal(default, explicit)
    late = engine.generate(base.replace(references=(Reference(pictures["a"], start=0.5),))).latents
    assert (late - default).abs().max() > 1e-3 and (late - plain).abs().max() > 1e-3


def test_window_rule_is_the_controlnet_rule():
    # diffusers: keep = 1 - float(i / n < start or (i + 1) / n > end)
    for n in (1, 3, 7, 50):
        for start, end in ((0, 1), (0.2, 0.8), (0.5, 1), (0, 0.3)):
            ours = [in_window(i, n, start, end) for i in range(n)]
            theirs = [not (i / n < start or (i + 1) / n > end) for i in range(n)]
            assert ours == theirs


# ------------------------------------------------------------------------------- negative image


def _first_step_noise(engine, request):
    """The UNet's output on the first step, both halves of the guidance batch."""
    outputs = []
    unet = engine.base.unet
    handle = unet.register_forward_hook(lambda _m, _a, out: outputs.append(out[0].clone()))
    try:
        engine.generate(request.replace(steps=1))
    finally:
        handle.remove()
    return outputs[0].chunk(2)


@pytest.mark.parametrize("variant", ["global", "plus"])
@pytest.mark.parametrize("negative", ["image", "noised image", "noised references"])
def test_negative_image_changes_only_the_unconditional_branch(
    variant, negative, engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    adapter = tiny_adapters[(variant, "safetensors")]
    base = _request(tiny_sd15, adapter, tiny_image_encoder, [Reference(pictures["a"])])
    spec = {
        "image": NegativeImage(pictures["neg"]),
        "noised image": NegativeImage(pictures["neg"], noise=0.5),
        "noised references": NegativeImage(noise=0.7),
    }[negative]
    engine.load(base)
    uncond_plain, cond_plain = _first_step_noise(engine, base)
    uncond_neg, cond_neg = _first_step_noise(engine, base.replace(negative_image=spec))
    assert torch.equal(cond_neg, cond_plain)
    assert (uncond_neg - uncond_plain).abs().max() > 1e-4
    # And the unconditional tokens are exactly the conditional ones of the negative as a reference.
    if negative == "image":
        ctx = engine._adapter.installed.context
        seen = []
        original = ctx.set_groups
        ctx.set_groups = lambda groups: (seen.append([g.tokens for g in groups]), original(groups))
        try:
            engine.generate(base.replace(negative_image=spec, steps=1))
            engine.generate(base.replace(references=(Reference(pictures["neg"]),), steps=1))
        finally:
            del ctx.set_groups
        with_negative, negative_as_reference = (tokens[0] for tokens in seen if tokens)
        assert torch.equal(with_negative[0], negative_as_reference[1])


def test_noised_image_is_seeded_by_the_picture_and_fades_to_noise():
    square = encoder_inputs(make_reference_image(5, (90, 60)), size=32)[0]
    assert noised(square, 0.0) is square
    half = np.asarray(noised(square, 0.5), dtype=float)
    assert np.array_equal(half, np.asarray(noised(square, 0.5), dtype=float))  # same picture, same noise
    full = np.asarray(noised(square, 1.0), dtype=float)
    original = np.asarray(square, dtype=float)
    assert abs(np.corrcoef(full.ravel(), original.ravel())[0, 1]) < 0.1
    assert np.corrcoef(half.ravel(), original.ravel())[0, 1] > 0.5


def test_negative_image_needs_a_picture_or_noise(
    engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    req = _request(
        tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder, [Reference(pictures["a"])]
    ).replace(negative_image=NegativeImage())
    with pytest.raises(RequestError, match="negative image prompt needs"):
        engine.generate(req)


# ------------------------------------------------------------------------------- encoder views


def _processor_pixels(image, size=32):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size=size, crop_size=size)(image, return_tensors="pt").pixel_values


@pytest.mark.parametrize("size", [(300, 201), (201, 300), (64, 64), (397, 301), (1000, 333)])
def test_default_view_is_clip_preprocessing_bit_for_bit(size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    for side in (32, 224):
        squares = encoder_inputs(image, EncoderView(), side)
        assert len(squares) == 1 and squares[0].size == (side, side)
        assert torch.equal(normalise(squares, side), _processor_pixels(image, side))


def test_a_crop_square_changes_exactly_the_encoder_input():
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (120, 200, 3), dtype=np.uint8))  # 200×120
    box = (130, 20, 64)
    square = encoder_inputs(image, EncoderView("crop", box), 32)[0]
    # Exactly CLIP's preprocessing of that square of the picture, nothing else.
    cut = image.crop((130, 20, 194, 84))
    assert torch.equal(normalise([square], 32), _processor_pixels(cut))
    centre = encoder_inputs(image, EncoderView(), 32)[0]
    assert not np.array_equal(np.asarray(square), np.asarray(centre))
    # Pixels of the picture outside the square have no effect on what the encoder gets.
    scribbled = image.copy()
    scribbled.paste((255, 0, 255), (0, 0, 120, 120))
    assert np.array_equal(
        np.asarray(encoder_inputs(scribbled, EncoderView("crop", box), 32)[0]), np.asarray(square)
    )


def test_pad_and_tile_show_the_whole_picture():
    image = Image.new("RGB", (300, 100), (200, 10, 10))
    padded = np.asarray(encoder_inputs(image, EncoderView("pad"), 30)[0])
    assert padded.shape == (30, 30, 3)
    assert padded[:8].max() < 5 and padded[-8:].max() < 5  # black bands above and below
    assert padded[15, :, 0].min() > 150  # the picture spans the full width
    assert tile_boxes((300, 100)) == [(0, 0, 100, 100), (100, 0, 200, 100), (200, 0, 300, 100)]
    assert tile_boxes((100, 250)) == [(0, 0, 100, 100), (0, 75, 100, 175), (0, 150, 100, 250)]
    assert len(tile_boxes((1000, 100))) == 4  # at most four tiles
    tiles = encoder_inputs(image, EncoderView("tile"), 30)
    assert len(tiles) == 3 and all(t.size == (30, 30) for t in tiles)


def test_views_reach_the_encoder(engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder):
    adapter = tiny_adapters[("plus", "bin")]
    base = _request(tiny_sd15, adapter, tiny_image_encoder, [Reference(pictures["a"])], steps=2)
    engine.load(base)
    seen = []
    hook = engine._encoder.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        latents = {}
        for name, view in {
            "centre": EncoderView(),
            "box": EncoderView("crop", (20, 0, 60)),
            "pad": EncoderView("pad"),
            "tile": EncoderView("tile"),
        }.items():
            seen.clear()
            engine._features.clear()
            latents[name] = engine.generate(
                base.replace(references=(Reference(pictures["a"], view=view),))
            ).latents
            pixels = seen[0]  # the reference's encoder call comes first
            expected = normalise(encoder_inputs(pictures["a"], view, 32), 32)
            assert torch.equal(pixels, expected)
    finally:
        hook.remove()
    assert seen  # the hook saw the calls
    for name in ("box", "pad", "tile"):
        assert (latents[name] - latents["centre"]).abs().max() > 1e-4


def test_a_crop_square_outside_the_picture_is_refused(
    engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    bad = Reference(pictures["a"], view=EncoderView("crop", (40, 10, 60)))  # 80×60 picture
    req = _request(tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder, [bad])
    with pytest.raises(RequestError, match="reaches outside the picture"):
        engine.generate(req)
    with pytest.raises(RequestError, match="Unknown encoder view"):
        engine.generate(req.replace(references=(Reference(pictures["a"], view=EncoderView("stretch")),)))


# ------------------------------------------------------------------------------- saved references


@pytest.mark.parametrize("variant", ["global", "plus"])
def test_saved_reference_is_bit_identical_and_costs_no_encoder_call_after_a_restart(
    variant, tmp_path, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    adapter = tiny_adapters[(variant, "safetensors")]
    store = ReferenceStore(tmp_path / "library")
    saved = store.add(pictures["a"], name="kite")
    assert store.entries() == [saved] and saved.name == "kite"
    view = EncoderView("crop", (10, 0, 60))
    req = _request(tiny_sd15, adapter, tiny_image_encoder, [Reference(str(saved.path), view=view)], steps=2)

    fresh = Engine(device="cpu", dtype=torch.float32)  # no library: a plain encoding
    fresh_latents = fresh.generate(req).latents
    hidden = fresh._adapter.installed.adapter.uses_hidden_states
    fresh_features = fresh.reference_features(pictures["a"], view, hidden=hidden)

    first = Engine(device="cpu", dtype=torch.float32, reference_store=store)
    first.generate(req)
    assert store.entries()[0].features == 1  # written on first use

    restarted = Engine(
        device="cpu", dtype=torch.float32, reference_store=ReferenceStore(tmp_path / "library")
    )
    restarted.load(req)
    before = restarted.stats.image_encoder_calls
    latents = restarted.generate(req).latents
    # The only encoder call left is the unconditional zero image of the plus variant.
    assert restarted.stats.image_encoder_calls - before == (1 if variant == "plus" else 0)
    stored = restarted.reference_features(pictures["a"], view, hidden=hidden)
    assert torch.equal(stored, fresh_features)
    assert torch.equal(latents, fresh_latents)


def test_a_damaged_features_file_is_encoded_again(
    tmp_path, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    store = ReferenceStore(tmp_path / "library")
    saved = store.add(pictures["b"])
    req = _request(
        tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder, [Reference(str(saved.path))]
    )
    good = Engine(device="cpu", dtype=torch.float32, reference_store=store).generate(req).latents
    for file in (tmp_path / "library" / "features").rglob("*.safetensors"):
        file.write_bytes(b"broken")
    engine = Engine(device="cpu", dtype=torch.float32, reference_store=store)
    assert torch.equal(engine.generate(req).latents, good)
    assert engine.stats.image_encoder_calls == 1
    store.remove(saved.content)
    assert store.entries() == [] and not (tmp_path / "library" / "features" / saved.content).exists()


def test_a_reference_saved_after_it_was_encoded_stores_its_features_on_the_next_use(
    tmp_path, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    # The window's order: use a picture, then "Save to library" it. Its features are in the
    # engine's memory by then, so the next generation writes them to disk without encoding again.
    store = ReferenceStore(tmp_path / "library")
    path = tmp_path / "late.png"
    pictures["a"].save(path)
    req = _request(tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder, [Reference(str(path))])
    engine = Engine(device="cpu", dtype=torch.float32, reference_store=store)
    engine.generate(req)
    assert engine.stats.image_encoder_calls == 1
    saved = store.add(path)
    assert saved.features == 0
    engine.generate(req)
    assert engine.stats.image_encoder_calls == 1 and store.entries()[0].features == 1
    restarted = Engine(
        device="cpu", dtype=torch.float32, reference_store=ReferenceStore(tmp_path / "library")
    )
    restarted.generate(req)
    assert restarted.stats.image_encoder_calls == 0


def test_features_are_kept_per_view_and_per_encoder(
    tmp_path, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    store = ReferenceStore(tmp_path / "library")
    saved = store.add(pictures["a"])
    engine = Engine(device="cpu", dtype=torch.float32, reference_store=store)
    req = _request(
        tiny_sd15, tiny_adapters[("global", "bin")], tiny_image_encoder, [Reference(str(saved.path))]
    )
    engine.generate(req)
    engine.generate(req.replace(references=(Reference(str(saved.path), view=EncoderView("pad")),)))
    assert store.entries()[0].features == 2


# ------------------------------------------------------------------------------- the rest still holds


def test_img2img_with_window_mask_and_negative_runs(
    engine, pictures, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    refs = [
        Reference(pictures["a"], 0.7, start=0.2, end=0.9, mask=pictures["left"], view=EncoderView("pad")),
        Reference(pictures["b"], 1.0, view=EncoderView("tile")),
    ]
    req = _request(tiny_sd15, tiny_adapters[("plus", "safetensors")], tiny_image_encoder, refs).replace(
        init=InitImage(make_reference_image(40, (64, 64)), 0.7),
        negative_image=NegativeImage(pictures["neg"], 0.2),
    )
    result = engine.generate(req)
    assert torch.isfinite(result.latents).all() and result.images[0].size == (64, 64)


def test_region_masks_follow_the_masked_area_crop_and_are_scaled_with_a_notice(pictures):
    from ipa_studio.core.models.tiny import make_mask as mask_of
    from ipa_studio.core.prepare import prepare
    from ipa_studio.core.request import MaskSpec

    picture = make_reference_image(41, (128, 128))
    region = mask_of((128, 128), (0, 0, 64, 128))
    req = GenerationRequest(
        models=ModelSpec("unused", "unused.safetensors", "unused"),
        references=(Reference(pictures["a"], mask=region),),
        init=InitImage(picture, 0.8),
        mask=MaskSpec(mask_of((128, 128), (40, 40, 80, 80)), only_masked=True, padding=8),
        width=64,
        height=64,
    )
    p = prepare(req)
    box = p.crop
    expected = region.crop(box).resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(p.references[0].region.work), np.asarray(expected))
    # A region painted at half size (same shape) is scaled to the picture, and the user is told.
    small = req.replace(
        mask=None, references=(Reference(pictures["a"], mask=mask_of((64, 64), (0, 0, 32, 64))),)
    )
    q = prepare(small)
    assert q.references[0].region.original.size == (128, 128)
    assert any("mask of reference image 1 (64×64) was scaled" in n for n in q.notices)
