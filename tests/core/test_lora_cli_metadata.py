"""``generate --lora / --embedding`` end to end, and what the PNG records of them: A1111's
``<lora:name:w>`` tags, ``Lora hashes`` and ``TI hashes``, Civitai's ``Hashes``, and the request JSON
that Reuse settings reads back."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from ipa_studio.cli import main
from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import RequestError
from ipa_studio.core.hashes import ModelHashes
from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.lora import parse_lora_argument
from ipa_studio.core.metadata import request_from_metadata, request_to_metadata
from ipa_studio.core.models.tiny import CROSS_DIM, make_reference_image
from ipa_studio.core.prepare import check_request
from ipa_studio.core.request import GenerationRequest, LoraSpec, ModelSpec
from tests.fixtures.real_layouts import kohya_lora, peft_lora


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("lora-cli")
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(tiny_sd15, subfolder="text_encoder")
    torch.manual_seed(8)
    detail = folder / "detail_tweaker.safetensors"
    save_file(kohya_lora(unet, text_encoder), detail, metadata={"ss_network_dim": "4"})
    style = folder / "pytorch_lora_weights.safetensors"
    save_file(peft_lora(unet), style)
    negative = folder / "easynegative.safetensors"
    save_file({"emb_params": torch.randn(2, CROSS_DIM)}, negative)
    ref = folder / "ref.png"
    make_reference_image(4, (80, 60)).save(ref)
    return {"detail": detail, "style": style, "negative": negative, "ref": ref, "dir": folder}


def _addnet(path: Path) -> str:
    """A1111's ``addnet_hash_safetensors``: sha256 of the bytes after the 8-byte length + header."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n :]).hexdigest()


def test_parse_lora_argument():
    assert parse_lora_argument("a.safetensors") == ("a.safetensors", 1.0, None)
    assert parse_lora_argument("C:\\loras\\a.safetensors:0.8") == ("C:\\loras\\a.safetensors", 0.8, None)
    assert parse_lora_argument("my:odd.pt:0.5:-.25") == ("my:odd.pt", 0.5, -0.25)


def test_generate_with_loras_and_embedding_records_and_restores_them(
    files, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    out = files["dir"] / "out.png"
    args = [
        "generate",
        "--model", str(tiny_sd15),
        "--adapter", str(tiny_adapters[("global", "safetensors")]),
        "--image-encoder", str(tiny_image_encoder),
        "--ref", str(files["ref"]),
        "--prompt", "a lighthouse",
        "--negative", "easynegative, blurry",
        "--lora", f"{files['detail']}:0.8",
        "--lora", f"{files['style']}:0.5:1.2",
        "--embedding", str(files["negative"]),
        "--steps", "2", "--seed", "5", "--width", "64", "--height", "64", "--quiet",
        "--precision", "fp32",  # replayed below by an fp32 engine, pixel for pixel
        "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    meta = read_png_metadata(out)
    prompt_line, negative_line, fields = meta["parameters"].split("\n")
    # A1111: tags in the prompt; <lora:name:te:unet> when the two differ.
    assert prompt_line == "a lighthouse <lora:detail_tweaker:0.8> <lora:pytorch_lora_weights:1.2:0.5>"
    assert negative_line == "Negative prompt: easynegative, blurry"
    detail_hash, style_hash = _addnet(files["detail"])[:12], _addnet(files["style"])[:12]
    assert f'Lora hashes: "detail_tweaker: {detail_hash}, pytorch_lora_weights: {style_hash}"' in fields
    ti = hashlib.sha256(files["negative"].read_bytes()).hexdigest()
    assert f'TI hashes: "easynegative: {ti[:12]}"' in fields
    site = json.loads(fields[fields.index("Hashes: {") + len("Hashes: ") :])
    assert site["lora:detail_tweaker"] == hashlib.sha256(files["detail"].read_bytes()).hexdigest()[:10]
    assert site["embed:easynegative"] == ti[:10]

    # Reuse settings: the same request back, which makes the same picture.
    request = request_from_metadata(meta)
    assert request.loras == (
        LoraSpec(str(files["detail"]), 0.8, None, True),
        LoraSpec(str(files["style"]), 0.5, 1.2, True),
    )
    assert request.embeddings == (str(files["negative"]),)
    engine = Engine(device="cpu", dtype=torch.float32)
    again = engine.generate(request).images[0]
    from PIL import Image

    with Image.open(out) as saved:
        assert list(saved.convert("RGB").getdata()) == list(again.getdata())


def test_disabled_lora_is_kept_in_settings_but_not_in_the_prompt_tags(files, tiny_sd15):
    request = GenerationRequest(
        models=ModelSpec(tiny_sd15),
        prompt="a cat",
        loras=(LoraSpec(files["detail"], 0.7, enabled=False), LoraSpec(files["style"], 1.0)),
    )
    meta = request_to_metadata(request, hashes=ModelHashes())
    assert meta["parameters"].split("\n")[0] == "a cat <lora:pytorch_lora_weights:1>"
    back = request_from_metadata(meta)
    assert back.loras[0] == LoraSpec(str(files["detail"]), 0.7, None, False)


def test_bad_lora_arguments_are_refused_in_words(files, tiny_sd15, capsys):
    request = GenerationRequest(models=ModelSpec(tiny_sd15), loras=(LoraSpec(files["detail"], float("nan")),))
    with pytest.raises(RequestError, match="The strength of the LoRA 'detail_tweaker.safetensors' must be"):
        check_request(request)
    request = GenerationRequest(models=ModelSpec(tiny_sd15), loras=(LoraSpec(files["detail"], 1, 50.0),))
    with pytest.raises(RequestError, match="text strength of the LoRA .* from -10 to 10"):
        check_request(request)
    missing = files["dir"] / "nope.safetensors"
    code = main(
        ["generate", "--model", str(tiny_sd15), "--lora", str(missing), "--steps", "1", "--width", "64",
         "--height", "64", "--quiet", "--out", str(files["dir"] / "x.png")]
    )  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "nope.safetensors" in err and "does not exist" in err
    assert not (files["dir"] / "x.png").exists()


def test_prompt_tags_are_read_as_a1111_does_and_never_reach_the_text_encoder(
    files, tiny_sd15, tiny_adapters, tiny_image_encoder
):
    from ipa_studio.core.lora import prompt_lora_tags

    tags = prompt_lora_tags("a <lora:a:0.5> b <lora:b:0.4:1.2>, <lyco:c> <lora:d:te=0.2:unet=0.7> <lora:e:x>")
    assert [(t.name, t.strength, t.text_strength) for t in tags] == [
        ("a", 0.5, 0.5),
        ("b", 1.2, 0.4),
        ("c", 1.0, 1.0),
        ("d", 0.7, 0.2),
    ]
    engine = Engine(device="cpu", dtype=torch.float32)
    models = ModelSpec(tiny_sd15, tiny_adapters[("global", "safetensors")], tiny_image_encoder)
    base = GenerationRequest(models=models, prompt="a lighthouse", steps=2, width=64, height=64, seed=3)
    listed = base.replace(loras=(LoraSpec(files["detail"], 0.8),))
    plain = engine.generate(listed)
    tagged = engine.generate(listed.replace(prompt="a lighthouse <lora:detail_tweaker:0.8>"))
    assert torch.equal(plain.latents, tagged.latents)
    assert tagged.notices == []
    # The tag is written once in A1111's line, not repeated from the list.
    meta = request_to_metadata(tagged.request, hashes=ModelHashes())
    assert meta["parameters"].split("\n")[0] == "a lighthouse <lora:detail_tweaker:0.8>"
    unlisted = engine.generate(base.replace(prompt="a lighthouse <lora:missing_style:1>"))
    assert unlisted.notices == [
        "The prompt names the LoRA 'missing_style' (<lora:missing_style:1>), which is not in the LoRA "
        "list: the tag was left out of the prompt. Add the LoRA file to use it."
    ]
    assert torch.equal(unlisted.latents, engine.generate(base).latents)


def test_cli_finds_tagged_loras_in_the_model_library(
    files, tiny_sd15, tiny_adapters, tiny_image_encoder, monkeypatch, tmp_path, tiny_as_bundled
):
    from ipa_studio.core.models.library import ModelLibrary

    # tiny_as_bundled: the tiny models' widths are what SD1.5's are to the library.

    monkeypatch.setenv("IPA_STUDIO_MODELS", str(tmp_path / "library"))
    entry = ModelLibrary(tmp_path / "library").add(files["style"], hash_files=False)
    assert entry.usable, entry.reason
    out = tmp_path / "tagged.png"
    args = [
        "generate", "--model", str(tiny_sd15), "--prompt", f"a lighthouse <lora:{entry.name}:0.6>",
        "--steps", "2", "--seed", "5", "--width", "64", "--height", "64", "--quiet", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    restored = request_from_metadata(read_png_metadata(out))
    assert [(Path(s.path).name, s.strength) for s in restored.loras] == [(files["style"].name, 0.6)]


def test_loras_in_other_programs_pictures_are_read(files, tiny_sd15):
    """A1111 prompt tags with ``Lora hashes`` and ComfyUI's LoraLoader (fixtures from their published
    layouts, tests/fixtures/foreign_pngs.py), and our own ``parameters`` line read as A1111's."""
    from ipa_studio.core.foreign_metadata import ForeignLora, read_foreign_settings
    from tests.fixtures.foreign_pngs import A1111_TEXT, COMFY_PROMPT, comfy_workflow

    tagged = A1111_TEXT.replace("a red car on a wet street", "a red car <lora:detail:0.8> <lora:other:0.5:1>")
    a1111 = read_foreign_settings({"parameters": tagged})
    assert a1111.loras == (ForeignLora("detail", 0.8, 0.8, "0123456789ab"), ForeignLora("other", 1.0, 0.5))
    assert read_foreign_settings({"parameters": A1111_TEXT}).loras == ()  # hashes alone name no strength
    for meta in ({"prompt": json.dumps(COMFY_PROMPT)}, {"workflow": json.dumps(comfy_workflow())}):
        assert read_foreign_settings(meta).loras == (ForeignLora("detail", 0.8, 0.8),)

    request = GenerationRequest(
        models=ModelSpec(tiny_sd15), prompt="a cat", loras=(LoraSpec(files["detail"], 0.6, 0.3),)
    )
    ours = request_to_metadata(request)
    back = read_foreign_settings({"parameters": ours["parameters"]})
    assert back.loras == (ForeignLora("detail_tweaker", 0.6, 0.3, _addnet(files["detail"])[:12]),)
