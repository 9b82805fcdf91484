"""Textual-inversion embeddings in the prompt and negative prompt, against diffusers'
``load_textual_inversion`` on the same tiny checkpoint (latents ≤ 1e-4, fp32), IP-Adapter on.

Fixtures follow the published layouts (builders and evidence in ``tests/fixtures/real_layouts.py``
and in ``ipa_studio/core/embeddings.py``); diffusers reads each before ours does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file

from ipa_studio.core.embeddings import describe_embedding, describe_shapes
from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import ModelFileError, RequestError
from ipa_studio.core.models.tiny import CROSS_DIM, make_reference_image
from ipa_studio.core.prompts import load_bundled_tokenizer, tokenize_prompt
from ipa_studio.core.request import GenerationRequest, ModelSpec, Reference
from tests.fixtures.real_layouts import a1111_embedding
from tests.fixtures.reference import diffusers_pipeline

TOL = 1e-4
SEED = 5


def _write(folder: Path, layout: str, name: str, vectors: torch.Tensor) -> tuple[Path, object]:
    """(file, what diffusers' load_textual_inversion is given for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "a1111.pt":
        path = folder / f"{name}.pt"
        torch.save(a1111_embedding(vectors), path)
        return path, str(path)
    if layout == "a1111-parameterdict.pt":
        path = folder / f"{name}.pt"
        torch.save(a1111_embedding(vectors, parameter_dict=True), path)
        # diffusers loads weights-only and refuses the pickled ParameterDict class (A1111 reads it
        # with its own restricted unpickler): it is given the same layout as plain data.
        return path, {"string_to_param": {"*": vectors}, "name": name}
    if layout == "a1111.safetensors":
        path = folder / f"{name}.safetensors"
        save_file({"emb_params": vectors.contiguous()}, path)  # A1111 Embedding.save for .safetensors
        return path, str(path)
    if layout == "learned_embeds.bin":
        path = folder / f"{name}.bin"
        torch.save({f"<{name}>": vectors[0]}, path)  # diffusers examples/textual_inversion save_progress
        return path, str(path)
    path = folder / f"{name}.safetensors"
    save_file({f"<{name}>": vectors[0].contiguous()}, path)
    return path, str(path)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(device="cpu", dtype=torch.float32)


def _request(models: ModelSpec, prompt: str, negative: str, embeddings) -> GenerationRequest:
    return GenerationRequest(
        models=models,
        references=(Reference(make_reference_image(31)),),
        prompt=prompt,
        negative_prompt=negative,
        scale=0.6,
        steps=3,
        guidance=7.5,
        seed=SEED,
        width=64,
        height=64,
        embeddings=tuple(embeddings),
    )


@pytest.mark.parametrize(
    "layout",
    [
        "a1111.pt",
        "a1111-parameterdict.pt",
        "a1111.safetensors",
        "learned_embeds.bin",
        "learned_embeds.safetensors",
    ],
)
def test_embedding_in_prompt_and_negative_matches_diffusers(
    layout, tmp_path, engine, tiny_sd15, tiny_image_encoder, tiny_adapters
):
    torch.manual_seed(3)
    style, style_src = _write(tmp_path / "a", layout, "my-style", torch.randn(3, CROSS_DIM))
    bad, bad_src = _write(tmp_path / "b", "a1111.safetensors", "easynegative", torch.randn(2, CROSS_DIM))
    adapter = tiny_adapters[("global", "safetensors")]
    prompt, negative = "a photo of my-style, in the snow", "blurry, easynegative"

    pipe = diffusers_pipeline(StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, adapter)
    pipe.load_textual_inversion(style_src, token="my-style")
    pipe.load_textual_inversion(bad_src, token="easynegative")
    pipe.set_ip_adapter_scale(0.6)
    with torch.no_grad():
        theirs = pipe(
            prompt=prompt,
            negative_prompt=negative,
            ip_adapter_image=make_reference_image(31),
            num_inference_steps=3,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(SEED),
            output_type="latent",
            height=64,
            width=64,
        ).images

    models = ModelSpec(tiny_sd15, adapter, tiny_image_encoder)
    ours = engine.generate(_request(models, prompt, negative, [style, bad])).latents
    assert (ours - theirs).abs().max().item() <= TOL
    # The embeddings act: without them the words are plain text and the picture differs.
    plain = engine.generate(_request(models, prompt, negative, [])).latents
    assert (ours - plain).abs().max().item() > 1e-3
    # ComfyUI's spelling means the same; case does not matter, as with A1111's tokens.
    comfy = engine.generate(
        _request(models, "a photo of embedding:my-style, in the snow", "blurry, EasyNegative", [style, bad])
    ).latents
    assert torch.equal(comfy, ours)


def test_weighted_long_prompts_keep_an_embedding_whole(tiny_sd15):
    tokenizer = load_bundled_tokenizer()
    chunks = tokenize_prompt(tokenizer, "(my-style:1.3), a cat", embeddings={"my-style": 3})
    assert chunks.inserts[0] == ((1, "my-style", 0), (2, "my-style", 1), (3, "my-style", 2))
    assert chunks.weights[0][1:4] == (1.3, 1.3, 1.3)
    assert chunks.token_count == 3 + 3  # three vectors, ", a cat"
    # Near the end of a chunk, an embedding that does not fit starts the next chunk (A1111).
    filler = " ".join(["cat"] * 74)
    long = tokenize_prompt(tokenizer, f"{filler} my-style", embeddings={"my-style": 3})
    assert long.chunk_count == 2
    assert long.inserts[0] == () and long.inserts[1][0] == (1, "my-style", 0)
    # A longer name wins, and a name inside another word is not the embedding.
    words = tokenize_prompt(tokenizer, "bad-hands-5 badge", embeddings={"bad": 1, "bad-hands-5": 2})
    assert [t[1] for t in words.inserts[0]] == ["bad-hands-5", "bad-hands-5"]
    # Without embeddings nothing changes (the ids diffusers' tokenizer call gives).
    plain = tokenize_prompt(tokenizer, "my-style, a cat")
    assert plain.inserts == ()
    assert list(plain.ids[0]) == tokenizer("my-style, a cat", padding="max_length")["input_ids"]


def test_embeddings_leave_the_model_as_it_was(tmp_path, tiny_sd15, tiny_image_encoder, tiny_adapters):
    engine = Engine(device="cpu", dtype=torch.float32)
    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    first = engine.generate(_request(models, "a photo of my-style", "", [])).latents
    vocab = len(engine.base.tokenizer)
    rows = engine.base.text_encoder.get_input_embeddings().weight.detach().clone()
    style, _ = _write(tmp_path, "a1111.safetensors", "my-style", torch.randn(2, CROSS_DIM))
    engine.generate(_request(models, "a photo of my-style", "", [style]))
    assert len(engine.base.tokenizer) == vocab
    assert torch.equal(engine.base.text_encoder.get_input_embeddings().weight, rows)
    again = engine.generate(_request(models, "a photo of my-style", "", [])).latents
    assert torch.equal(again, first)


def test_refusals_name_the_reason(tmp_path, engine, tiny_sd15, tiny_image_encoder, tiny_adapters):
    sd2 = tmp_path / "sd2-style.safetensors"
    save_file({"emb_params": torch.zeros(2, 1024)}, sd2)
    info = describe_embedding(sd2)
    assert (info.base, info.usable) == ("SD2.x", False)
    assert info.reason == (
        "it is an embedding for SD2.x with 1024-wide vectors; this model's text encoder takes 768-wide ones"
    )
    sdxl = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, sdxl)
    assert describe_embedding(sdxl).reason == (
        "it is an embedding for SDXL; IPA Studio runs SD1.5 models, which take 768-wide vectors"
    )
    good = describe_embedding(_write(tmp_path / "g", "a1111.safetensors", "fine", torch.zeros(4, 768))[0])
    assert (good.usable, good.vectors, good.base, good.name) == (True, 4, "SD1.x", "fine")
    # A lone weight is not an embedding unless it looks like a token at a text encoder's width.
    assert describe_shapes(Path("x.safetensors"), {"weight": (768,)}) is None
    assert describe_shapes(Path("x.safetensors"), {"<tok>": (77,)}) is None
    assert describe_shapes(Path("x.safetensors"), {"<tok>": (768,)}).usable

    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    with pytest.raises(ModelFileError, match="1024-wide vectors; this model's text encoder takes 32-wide"):
        engine.generate(_request(models, "sd2-style", "", [sd2]))
    a = _write(tmp_path / "x", "a1111.safetensors", "twin", torch.zeros(1, CROSS_DIM))[0]
    b = _write(tmp_path / "y", "a1111.pt", "twin", torch.zeros(1, CROSS_DIM))[0]
    with pytest.raises(RequestError, match="Two embeddings are called 'twin'"):
        engine.generate(_request(models, "twin", "", [a, b]))
