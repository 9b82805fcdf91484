"""Prompt weights, long prompts and BREAK (core/prompts.py) against A1111's published rules.

The expected parses are the doctests of A1111's ``modules/prompt_parser.py``
(``parse_prompt_attention``); the weighting rule is A1111's ``modules/sd_emphasis.py``
``EmphasisOriginal.after_transformers``; the chunking is ``modules/sd_hijack_clip.py``
``tokenize_line``. Encodings are computed by hand here, with the tiny text encoder, and compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import RequestError
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.prompts import (
    MAX_CHUNKS,
    encode_chunks,
    encode_prompt,
    parse_prompt,
    same_length,
    tokenize_prompt,
)
from ipa_studio.core.request import ControlSpec, GenerationRequest, ModelSpec, Reference
from tests.fixtures.reference import diffusers_pipeline

WORDS = "red green blue cat dog house tree river stone cloud".split()


@pytest.fixture(scope="module")
def tokenizer(tiny_sd15: Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(tiny_sd15 / "tokenizer")


@pytest.fixture(scope="module")
def text_encoder(tiny_sd15: Path) -> CLIPTextModel:
    return CLIPTextModel.from_pretrained(tiny_sd15 / "text_encoder").eval()


def pairs(text: str) -> list[tuple[str, float]]:
    return [("BREAK", -1.0) if f.is_break else (f.text, f.weight) for f in parse_prompt(text)]


def plain_ids(tokenizer: CLIPTokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chunk_row(tokenizer: CLIPTokenizer, ids: list[int]) -> list[int]:
    """BOS + ids + EOS, padded to 77 with the pad token: one chunk, built by hand."""
    row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    return row + [tokenizer.pad_token_id] * (77 - len(row))


def words(n: int, sep: str = " ") -> str:
    """n single-token words (each of WORDS is one CLIP token)."""
    return sep.join(WORDS[i % len(WORDS)] for i in range(n))


# --- parsing: A1111's doctests -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("a red car, (masterpiece:1.2)", [("a red car, ", 1.0), ("masterpiece", 1.2)]),
        ("[[faded]]", [("faded", 1 / 1.1 / 1.1)]),
        ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]),
        ("smile :) 1girl (x)8k", [("smile :) 1girl ", 1.0), ("x", 1.1), ("8k", 1.0)]),
    ],
)
def test_parse_follows_a1111(text: str, expected: list[tuple[str, float]]) -> None:
    assert pairs(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("apricots++ from a tree", [("apricots", 1.1**2), (" from a tree", 1.0)]),
        ("mountain- man", [("mountain", 0.9), (" man", 1.0)]),
        ("a (picking apricots)1.3, x", [("a ", 1.0), ("picking apricots", 1.3), (", x", 1.0)]),
        ("(picking apricots)+", [("picking apricots", 1.1)]),
        ("(a (b)1.3)1.1", [("a ", 1.1), ("b", 1.3 * 1.1)]),
        ("(cat:1.2)+", [("cat", 1.2 * 1.1)]),
        ("1girl, close-up, well-lit", [("1girl, close-up, well-lit", 1.0)]),
    ],
)
def test_compel_spellings(text: str, expected: list[tuple[str, float]]) -> None:
    got = pairs(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], abs=1e-12)


# --- chunks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "a watercolor fox in the snow", "a cat: cute, 4k", words(75)])
def test_short_unweighted_prompt_gives_the_tokenizers_own_ids(tokenizer, text: str) -> None:
    chunks = tokenize_prompt(tokenizer, text)
    expected = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert chunks.ids == (tuple(expected),)
    assert not chunks.weighted


def test_150_tokens_fill_two_chunks_and_151_make_three(tokenizer) -> None:
    two = tokenize_prompt(tokenizer, words(150))
    assert (two.token_count, two.chunk_count, two.describe()) == (150, 2, "150 / 150 tokens · 2 chunks")
    three = tokenize_prompt(tokenizer, words(151))
    assert (three.token_count, three.chunk_count) == (151, 3)
    assert three.ids[2] == tuple(chunk_row(tokenizer, plain_ids(tokenizer, WORDS[150 % 10])))
    assert tokenize_prompt(tokenizer, words(12)).describe() == "12 / 75 tokens"


def test_a_full_chunk_breaks_after_its_last_comma(tokenizer) -> None:
    # 150 tokens in phrases of 6 words and a comma (7 tokens): 75 is not a multiple of 7, so each
    # chunk fills up 5 tokens into a phrase. A1111 moves those 5 words (the comma lies within 20
    # tokens of the end) to the next chunk: 70 + 70 + 10 tokens, 3 chunks where 150 would fit in 2.
    text = ", ".join(words(6) for _ in range(21)) + " " + words(4)
    chunks = tokenize_prompt(tokenizer, text)
    assert chunks.token_count == 150
    assert chunks.chunk_count == 3
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    for row in chunks.ids[:2]:
        real = list(row[1 : row.index(tokenizer.eos_token_id)])
        assert len(real) == 70 and real[-1] == comma  # each ends on a phrase's comma
    assert chunks.describe() == "150 / 225 tokens · 3 chunks"
    # Without the backtrack (ComfyUI's way) the same text is cut at exactly 75 tokens.
    assert tokenize_prompt(tokenizer, text, comma_backtrack=0).chunk_count == 2


def test_break_starts_a_new_chunk(tokenizer, text_encoder) -> None:
    chunks = tokenize_prompt(tokenizer, "a cat BREAK a dog")
    assert chunks.chunk_count == 2
    assert chunks.ids[0] == tuple(chunk_row(tokenizer, plain_ids(tokenizer, "a cat")))
    assert chunks.ids[1] == tuple(chunk_row(tokenizer, plain_ids(tokenizer, "a dog")))
    with torch.no_grad():
        both = encode_prompt(tokenizer, text_encoder, "a cat BREAK a dog", "cpu")
        cat = encode_prompt(tokenizer, text_encoder, "a cat", "cpu")
        dog = encode_prompt(tokenizer, text_encoder, "a dog", "cpu")
    assert both.shape == (1, 154, text_encoder.config.hidden_size)
    assert torch.equal(both, torch.cat([cat, dog], dim=1))


# --- encodings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "a watercolor fox in the snow", "a cat: cute, 4k"])
def test_unweighted_short_prompt_is_bit_identical_to_the_plain_encoding(
    tokenizer, text_encoder, text
) -> None:
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        plain = text_encoder(ids)[0]
        ours = encode_prompt(tokenizer, text_encoder, text, "cpu")
    assert torch.equal(ours, plain)


def test_weighted_prompt_equals_the_a1111_rule_computed_by_hand(tokenizer, text_encoder) -> None:
    text = "a red car, (masterpiece:1.2), [blurry]"
    # By hand: each run tokenized on its own, BOS/EOS weight 1, hidden states × weight, then the
    # chunk rescaled to its unweighted mean.
    runs = [("a red car, ", 1.0), ("masterpiece", 1.2), (", ", 1.0), ("blurry", 1 / 1.1)]
    ids, weights = [], []
    for run, weight in runs:
        run_ids = plain_ids(tokenizer, run)
        ids += run_ids
        weights += [weight] * len(run_ids)
    row = chunk_row(tokenizer, ids)
    w = torch.tensor([1.0, *weights] + [1.0] * (77 - 1 - len(weights)))
    with torch.no_grad():
        z = text_encoder(torch.tensor([row]))[0]
        ours = encode_prompt(tokenizer, text_encoder, text, "cpu")
    expected = z * w[None, :, None]
    expected = expected * (z.mean() / expected.mean())
    assert torch.allclose(ours, expected, atol=1e-6, rtol=0)
    assert (ours - z).abs().max() > 1e-3  # the weights did something


def test_long_prompt_chunks_equal_each_chunk_encoded_alone(tokenizer, text_encoder) -> None:
    text = "(" + words(60) + ":1.3), " + words(170)
    chunks = tokenize_prompt(tokenizer, text)
    assert chunks.chunk_count == 4
    with torch.no_grad():
        ours = encode_prompt(tokenizer, text_encoder, text, "cpu")
        assert ours.shape == (1, 4 * 77, text_encoder.config.hidden_size)
        for k, (ids, weights) in enumerate(zip(chunks.ids, chunks.weights, strict=True)):
            alone = text_encoder(torch.tensor([ids]))[0]
            w = torch.tensor(weights)
            if k == 0:
                alone = alone * w[None, :, None] * (alone.mean() / (alone * w[None, :, None]).mean())
            assert torch.allclose(ours[:, 77 * k : 77 * (k + 1)], alone, atol=1e-6, rtol=0), k


def test_too_long_a_prompt_is_refused_clearly(tokenizer, text_encoder) -> None:
    chunks = tokenize_prompt(tokenizer, words(75 * MAX_CHUNKS + 1))
    with pytest.raises(
        RequestError, match=r"needs 21 chunks of 75 tokens \(1501 tokens\); at most 20 can be used"
    ):
        encode_chunks(text_encoder, chunks, "cpu")


def test_repeating_the_shorter_encoding_gives_what_separate_passes_give(
    tiny_sd15: Path, tokenizer, text_encoder
):
    """Guidance runs negative and positive in one batch; the lengths are matched by repetition,
    which must not change the UNet's prediction for either (A1111 runs them separately)."""
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15 / "unet").eval()
    with torch.no_grad():
        negative = encode_prompt(tokenizer, text_encoder, "blurry", "cpu")
        positive = encode_prompt(tokenizer, text_encoder, words(100), "cpu")
        neg, pos = same_length(negative, positive, lambda: encode_prompt(tokenizer, text_encoder, "", "cpu"))
        assert neg.shape == pos.shape == (1, 154, negative.shape[-1])
        latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        batched = unet(latents, 500, encoder_hidden_states=torch.cat([neg, pos])).sample
        alone_neg = unet(latents[:1], 500, encoder_hidden_states=negative).sample
        alone_pos = unet(latents[1:], 500, encoder_hidden_states=positive).sample
    assert torch.allclose(batched[:1], alone_neg, atol=1e-5, rtol=0)
    assert torch.allclose(batched[1:], alone_pos, atol=1e-5, rtol=0)


def test_lengths_past_the_repeat_limit_are_padded_with_empty_chunks() -> None:
    empty = torch.full((1, 77, 3), 7.0)
    a, b = torch.zeros(1, 77 * 19, 3), torch.ones(1, 77 * 20, 3)
    neg, pos = same_length(a, b, lambda: empty)
    assert neg.shape == pos.shape == (1, 77 * 20, 3)
    assert torch.equal(neg[:, -77:], empty) and torch.equal(pos, b)


# --- the engine: same encoding for the UNet and the ControlNet, as diffusers uses it ---------------


def _diffusers_latents(pipe, prompt_embeds, negative_embeds, **kwargs):
    with torch.no_grad():
        return pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            num_inference_steps=3,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(5),
            output_type="latent",
            height=64,
            width=64,
            **kwargs,
        ).images


@pytest.mark.parametrize("with_controlnet", [False, True])
def test_long_weighted_prompt_through_the_engine_equals_diffusers_fed_the_same_encoding(
    with_controlnet, tiny_sd15, tiny_image_encoder, tiny_adapters, tiny_controlnet, tokenizer, text_encoder
):
    """A 2-chunk weighted prompt with a 1-chunk negative, an IP-Adapter and (optionally) a
    ControlNet: diffusers' own pipeline, given our text encodings as ``prompt_embeds``, makes the
    same latents. This holds the decoupled attention's text half (154 tokens) and the ControlNet's
    text input to diffusers' handling of a long text sequence."""
    adapter = tiny_adapters[("plus", "safetensors")]
    prompt = "a (watercolor:1.3) fox, " + words(90)
    negative = "blurry"
    reference, control = make_reference_image(21), make_reference_image(22, (64, 64))
    request = GenerationRequest(
        models=ModelSpec(tiny_sd15, adapter, tiny_image_encoder),
        references=(Reference(reference),),
        prompt=prompt,
        negative_prompt=negative,
        scale=0.7,
        steps=3,
        seed=5,
        width=64,
        height=64,
        controls=(ControlSpec(control, tiny_controlnet, 0.8),) if with_controlnet else (),
    )
    ours = Engine(device="cpu", dtype=torch.float32).generate(request).latents

    with torch.no_grad():
        pos = encode_prompt(tokenizer, text_encoder, prompt, "cpu")
        neg = encode_prompt(tokenizer, text_encoder, negative, "cpu")
    neg, pos = same_length(neg, pos, lambda: None)
    assert pos.shape[1] == 154
    if with_controlnet:
        pipe = diffusers_pipeline(
            StableDiffusionControlNetPipeline,
            tiny_sd15,
            tiny_image_encoder,
            adapter,
            controlnet=ControlNetModel.from_pretrained(tiny_controlnet),
        )
        extra = {"image": control, "controlnet_conditioning_scale": 0.8}
    else:
        pipe = diffusers_pipeline(StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, adapter)
        extra = {}
    pipe.set_ip_adapter_scale(0.7)
    theirs = _diffusers_latents(pipe, pos, neg, ip_adapter_image=reference, **extra)
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4, f"max |Δlatent| = {diff:.2e}"


def test_training_captions_stay_plain(
    tiny_sd15: Path, tiny_image_encoder: Path, tokenizer, text_encoder
) -> None:
    """The paper's recipe trains on plain captions: brackets in a caption are characters there, and a
    long caption is cut at 77 tokens, as before."""
    from ipa_studio.core.train.recipe import FrozenModels, encode_conditioning

    frozen = FrozenModels.load(tiny_sd15, tiny_image_encoder, torch.device("cpu"), torch.float32)
    captions = ["a (cat:1.5) on a mat", words(100)]
    size = frozen.image_encoder.config.image_size
    cond = encode_conditioning(
        frozen,
        captions,
        torch.zeros(2, 3, size, size),
        torch.tensor([False, False]),
        torch.tensor([False, False]),
        hidden_states=False,
    )
    ids = tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        assert torch.equal(cond.text_embeds, frozen.text_encoder(ids)[0])
        weighted = encode_prompt(tokenizer, text_encoder, captions[0], "cpu")
    assert cond.text_embeds.shape[1] == 77
    assert not torch.allclose(cond.text_embeds[:1], weighted, atol=1e-4)
