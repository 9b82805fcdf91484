"""SD1.5 single files in every layout people have, held against diffusers before IPA Studio reads them.

Each case is one real-world layout (evidence in ``tests/fixtures/real_layouts.py``), written as a tiny
random-weight file from the published key layout, not by IPA Studio's writer. For each:

1. the independent reader — diffusers' ``StableDiffusionPipeline.from_single_file`` with a weights-free
   config folder, offline — loads it and gets exactly the weights the file was made from;
2. then IPA Studio: detection calls it usable (with the layout facts in ``details``), ``models add``
   lists it as usable, the loader gets the same tensors diffusers got, and a 2-step generation with an
   IP-Adapter equals diffusers' own on the same file (≤ 1e-4 on latents).

The app's bundled SD1.5 configs are swapped for the tiny ones (``tiny_as_bundled``), so the files go
through the same code path as full-size files, with no config override.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

from ipa_studio.core.engine import Engine
from ipa_studio.core.models.detect import detect
from ipa_studio.core.models.library import ModelLibrary
from ipa_studio.core.models.loader import load_base_model
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from ipa_studio.core.request import GenerationRequest, InitImage, MaskSpec, ModelSpec, Reference
from tests.fixtures.real_layouts import folder_state, sd15_original_state, write_checkpoint
from tests.fixtures.reference import diffusers_single_file_pipeline, load_adapter

CPU = torch.device("cpu")
TOL = 1e-4

# A1111 modules/sd_models.py checkpoint_dict_replacements_sd1 (the same map as ComfyUI's
# SD15.process_clip_state_dict): how the readers that accept the bare text-encoder layout read it.
A1111_SD1_REPLACEMENTS = {
    "cond_stage_model.transformer.embeddings.": "cond_stage_model.transformer.text_model.embeddings.",
    "cond_stage_model.transformer.encoder.": "cond_stage_model.transformer.text_model.encoder.",
    "cond_stage_model.transformer.final_layer_norm.": (
        "cond_stage_model.transformer.text_model.final_layer_norm."
    ),
}

# (id, text layout, position_ids, EMA, dtype, suffix, .ckpt wrapper) — what each stands for:
CASES = [
    # runwayml v1-5-pruned-emaonly.safetensors: text_model names, int64 ids, EMA counters, fp32.
    ("v1-5-pruned-emaonly", "text_model", "int64", "counters", torch.float32, ".safetensors", False),
    # v1-5-pruned.ckpt: a Lightning checkpoint with full EMA copies next to the live weights.
    ("v1-5-pruned-ckpt-full-ema", "text_model", "int64", "full", torch.float32, ".ckpt", True),
    # Community fp16 fine-tunes (A1111 / kohya / ComfyUI saves): fp16, no EMA.
    ("fine-tune-fp16", "text_model", "int64", "none", torch.float16, ".safetensors", False),
    # Merges that stored position_ids as floats (ComfyUI rounds them).
    ("merge-float-position-ids", "text_model", "float", "counters", torch.float16, ".safetensors", False),
    # Files saved without position_ids; bf16 weights.
    ("no-position-ids-bf16", "text_model", "absent", "none", torch.bfloat16, ".safetensors", False),
    # NovelAI-era files: the text encoder without the text_model. level, as a bare pickle.
    ("bare-text-encoder", "bare", "int64", "counters", torch.float32, ".ckpt", False),
    ("bare-text-encoder-fp16", "bare", "absent", "none", torch.float16, ".safetensors", False),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("real-sd15")
    unet, vae, text = folder_state(tiny_sd15)
    out = {}
    for name, layout, ids, ema, dtype, suffix, wrapper in CASES:
        state = sd15_original_state(
            unet, vae, text, text_layout=layout, position_ids=ids, ema=ema, dtype=dtype
        )
        out[name] = write_checkpoint(folder / f"{name}{suffix}", state, lightning=wrapper)
    return out


def _as_diffusers_reads_it(path: Path, tmp_path: Path) -> Path:
    """The file as the independent readers see it: the bare layout mapped the way A1111 maps it."""
    from ipa_studio.core.models.safe_load import load_weights

    state = dict(load_weights(path))
    state = state.get("state_dict", state)
    if not any(k.startswith("cond_stage_model.transformer.text_model.") for k in state):
        mapped = {}
        for key, value in state.items():
            for old, new in A1111_SD1_REPLACEMENTS.items():
                if key.startswith(old):
                    key = new + key[len(old) :]
            mapped[key] = value
        return write_checkpoint(tmp_path / "a1111-mapped.safetensors", mapped)
    return path


def _reference_parts(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {part: {k: v.clone() for k, v in getattr(pipe, part).state_dict().items()} for part in PARTS}


PARTS = ("unet", "vae", "text_encoder")


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_real_layout_reads_like_diffusers_and_generates_the_same(
    case: str,
    files: dict[str, Path],
    tiny_sd15: Path,
    tiny_configs_only: Path,
    tiny_image_encoder: Path,
    tiny_adapters: dict,
    tiny_as_bundled: Path,
    tmp_path: Path,
) -> None:
    name, layout, ids, ema, dtype, suffix, wrapper = next(c for c in CASES if c[0] == case)
    path = files[name]
    adapter = tiny_adapters[("global", "safetensors")]

    # 1. The independent reader accepts the file and reads the weights it was made from.
    if layout == "bare":
        with pytest.raises(Exception, match="CLIPTextModel"):  # diffusers itself needs A1111's map first
            StableDiffusionPipeline.from_single_file(
                str(path), config=str(tiny_configs_only), local_files_only=True, safety_checker=None
            )
    theirs = diffusers_single_file_pipeline(
        StableDiffusionPipeline, _as_diffusers_reads_it(path, tmp_path), tiny_configs_only, tiny_image_encoder
    )
    source = dict(zip(("unet", "vae", "text_encoder"), folder_state(tiny_sd15), strict=True))
    reference = _reference_parts(theirs)
    load_adapter(theirs, adapter)
    for part in ("unet", "text_encoder"):
        for key, value in reference[part].items():
            want = source[part].get(key, source[part].get(f"text_model.{key}"))
            assert torch.equal(value, want.to(dtype).float()), (part, key)

    # 2. Detection: usable, with the layout facts for later readers of the library.
    found = detect(path)
    assert (found.kind, found.usable, found.reason) == ("base", True, None), found.reason
    assert found.details["text_encoder_layout"] == layout
    assert (
        found.details["ema"] == {"full": "full copy (not used)", "counters": "counters", "none": "none"}[ema]
    )
    if ids == "float":
        assert found.details["position_ids"].endswith("(rounded)")
    else:
        assert found.details["position_ids"] == ids
    assert (
        found.details["dtype"] == {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[dtype]
    )

    # 3. models add: in the library as a usable base model.
    entry = ModelLibrary(tmp_path / "library").add(path, hash_files=False)
    assert (entry.kind, entry.usable, entry.reason) == ("base", True, None)
    assert entry.details["text_encoder_layout"] == layout

    # 4. The loader gets diffusers' tensors, every one of them.
    ours = load_base_model(path, CPU, torch.float32)
    for part in ("unet", "vae", "text_encoder"):
        mine = getattr(ours, part).state_dict()
        assert mine.keys() == reference[part].keys(), part
        assert all(torch.equal(mine[k], reference[part][k]) for k in mine), part

    # 5. The same 2-step generation as diffusers on the same file.
    ref = make_reference_image(7, (64, 64))
    theirs.set_ip_adapter_scale(0.7)
    with torch.no_grad():
        expected = theirs(
            prompt="a lighthouse",
            ip_adapter_image=ref,
            num_inference_steps=2,
            guidance_scale=7.5,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(3),
            output_type="latent",
        ).images
    request = GenerationRequest(
        models=ModelSpec(path, adapter, tiny_image_encoder),
        references=(Reference(ref),),
        prompt="a lighthouse",
        scale=0.7,
        steps=2,
        seed=3,
        width=64,
        height=64,
        scheduler="ddim",
    )
    got = Engine("cpu", torch.float32).generate(request).latents
    diff = (got - expected).abs().max().item()
    assert diff <= TOL, f"max |Δlatent| = {diff:.2e}"


def test_full_ema_copies_are_not_what_is_loaded(
    files: dict[str, Path], tiny_sd15: Path, tiny_as_bundled: Path
):
    # Guards the test above: the EMA copies differ from the live weights, so taking them would show.
    from ipa_studio.core.models.safe_load import load_weights

    state = load_weights(files["v1-5-pruned-ckpt-full-ema"])["state_dict"]
    live = state["model.diffusion_model.out.2.weight"]
    assert not torch.equal(state["model_ema.diffusion_modelout2weight"], live)
    base = load_base_model(files["v1-5-pruned-ckpt-full-ema"], CPU, torch.float32)
    assert torch.equal(base.unet.conv_out.weight, live)


def test_inpainting_file_reads_like_diffusers_and_inpaints_the_same(
    tmp_path: Path,
    tiny_sd15_inpaint: Path,
    tiny_inpaint_configs_only: Path,
    tiny_image_encoder: Path,
    tiny_adapters: dict,
    tiny_as_bundled: Path,
) -> None:
    # sd-v1-5-inpainting: the same layout with a 9-channel first convolution (latents, mask, image).
    unet, vae, text = folder_state(tiny_sd15_inpaint)
    path = write_checkpoint(tmp_path / "sd-v1-5-inpainting.safetensors", sd15_original_state(unet, vae, text))
    adapter = tiny_adapters[("plus", "safetensors")]
    theirs = diffusers_single_file_pipeline(
        StableDiffusionInpaintPipeline, path, tiny_inpaint_configs_only, tiny_image_encoder, adapter
    )
    assert theirs.unet.config.in_channels == 9
    found = detect(path)
    assert (found.architecture, found.usable, found.details["in_channels"]) == (
        "SD1.x-shaped inpainting (32-wide text)",
        True,
        9,
    )
    entry = ModelLibrary(tmp_path / "library").add(path, hash_files=False)
    assert entry.usable and entry.details["in_channels"] == 9

    init, mask, ref = (
        make_reference_image(13, (64, 64)),
        make_mask((64, 64), (16, 8, 48, 40)),
        make_reference_image(2),
    )
    theirs.set_ip_adapter_scale(0.6)
    with torch.no_grad():
        expected = theirs(
            prompt="moss",
            image=init,
            mask_image=mask,
            strength=0.8,
            ip_adapter_image=ref,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(5),
            output_type="latent",
        ).images
    request = GenerationRequest(
        models=ModelSpec(path, adapter, tiny_image_encoder),
        references=(Reference(ref),),
        prompt="moss",
        scale=0.6,
        steps=2,
        seed=5,
        width=64,
        height=64,
        scheduler="ddim",
        init=InitImage(init, 0.8),
        mask=MaskSpec(mask),
    )
    got = Engine("cpu", torch.float32).generate(request).latents
    diff = (got - expected).abs().max().item()
    assert diff <= TOL, f"max |Δlatent| = {diff:.2e}"


# ----------------------------------------------------------------------------------------------
# Full-size header-only stubs: detection at SD1.5's real widths (768-wide text, 320…1280 blocks)
# ----------------------------------------------------------------------------------------------

STUBS = [
    # (text layout, position_ids, EMA, weight dtype, in_channels)
    ("text_model", "int64", "counters", "F32", 4),  # v1-5-pruned-emaonly.safetensors
    ("text_model", "int64", "full", "F32", 4),  # v1-5-pruned (EMA copies alongside)
    ("text_model", "float", "none", "F16", 4),  # a merge with float position_ids
    ("text_model", "absent", "none", "BF16", 4),
    ("bare", "int64", "counters", "F16", 4),  # NovelAI-era layout
    ("text_model", "int64", "counters", "F32", 9),  # sd-v1-5-inpainting
]


def _stub(tmp_path: Path, layout: str, ids: str, ema: str, dtype: str, in_channels: int) -> Path:
    from tests.fixtures.checkpoints import sd15_shapes, write_shapes_only

    shapes = sd15_shapes(in_channels, text_layout=layout, position_ids=ids, ema=ema)
    # As in the real files: int64 (or float) ids, float32 scheduler buffers and EMA counters.
    kinds = {k: ("I64" if ids == "int64" else "F32") for k in shapes if k.endswith("position_ids")}
    kinds |= {k: "F32" for k in shapes if "." not in k or k in ("model_ema.decay", "model_ema.num_updates")}
    return write_shapes_only(
        tmp_path / f"{layout}-{ids}-{ema}-{dtype}-{in_channels}.safetensors", shapes, dtype, kinds
    )


@pytest.mark.parametrize("layout, ids, ema, dtype, in_channels", STUBS)
def test_full_size_stub_is_recognised_by_diffusers_and_usable(
    tmp_path: Path, layout: str, ids: str, ema: str, dtype: str, in_channels: int
) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, is_clip_model

    from ipa_studio.core.models.detect import read_safetensors_header

    path = _stub(tmp_path, layout, ids, ema, dtype, in_channels)
    # Independent reader first: diffusers names the file an SD1.5 (inpainting) checkpoint with a CLIP
    # text encoder it can read — directly for the standard layout, after A1111's map for the bare one.
    header, _ = read_safetensors_header(path)
    meta = {k: torch.empty(shape, device="meta") for k, (_, shape) in header.items()}
    assert infer_diffusers_model_type(meta) == ("inpainting" if in_channels == 9 else "v1")
    if layout == "bare":
        assert not is_clip_model(meta)
        meta = {
            next(
                (new + k[len(old) :] for old, new in A1111_SD1_REPLACEMENTS.items() if k.startswith(old)), k
            ): v
            for k, v in meta.items()
        }
    assert is_clip_model(meta)

    found = detect(path)
    assert (found.kind, found.usable, found.reason) == ("base", True, None), found.reason
    assert found.architecture == ("SD1.x inpainting" if in_channels == 9 else "SD1.x")
    assert (found.details["cross_attention_dim"], found.details["in_channels"]) == (768, in_channels)
    assert found.details["text_encoder_layout"] == layout
    assert found.details["dtype"] == dtype
    assert found.size_bytes > 1_500_000_000  # the real file's size: its data is a sparse hole here


@pytest.mark.parametrize(
    "damage, words",
    [
        ("drop-text-layer", "its text encoder lacks 16 of its 196 weights"),
        ("narrow-vae", "its VAE weight"),
        ("drop-unet-block", "its UNet lacks"),
        ("stray-unet-weight", "its UNet has 1 weight the UNet does not"),
    ],
)
def test_damaged_full_size_file_is_refused_with_what_is_wrong(
    tmp_path: Path, damage: str, words: str
) -> None:
    # What the loader would refuse, detection refuses first — naming the damage, not "incomplete".
    from tests.fixtures.checkpoints import sd15_shapes, write_shapes_only

    shapes = sd15_shapes()
    if damage == "drop-text-layer":
        shapes = {k: v for k, v in shapes.items() if ".encoder.layers.11." not in k}
    elif damage == "narrow-vae":
        shapes["first_stage_model.decoder.conv_in.weight"] = (256, 4, 3, 3)
    elif damage == "drop-unet-block":
        shapes = {
            k: v for k, v in shapes.items() if not k.startswith("model.diffusion_model.output_blocks.11.")
        }
    else:
        shapes["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_x.weight"] = (320, 768)
    found = detect(write_shapes_only(tmp_path / f"{damage}.safetensors", shapes))
    assert (found.kind, found.usable) == ("base", False)
    assert words in found.reason, found.reason


# ----------------------------------------------------------------------------------------------
# Writing: our export and --convert produce the standard layout diffusers reads directly
# ----------------------------------------------------------------------------------------------


def _hub_style_folder(tiny_sd15: Path, dest: Path, *, fp16_variant: bool = False) -> Path:
    """The tiny folder as hub folders are: transformers 4's ``text_model.`` names in the text encoder
    (every SD1.5 repo), optionally only ``*.fp16.safetensors`` variant files (most repos)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_sd15, dest)
    text = load_file(dest / "text_encoder" / "model.safetensors")
    save_file({f"text_model.{k}": v for k, v in text.items()}, dest / "text_encoder" / "model.safetensors")
    if fp16_variant:
        for part, name in (
            ("unet", "diffusion_pytorch_model"),
            ("vae", "diffusion_pytorch_model"),
            ("text_encoder", "model"),
        ):
            weights = load_file(dest / part / f"{name}.safetensors")
            save_file({k: v.half() for k, v in weights.items()}, dest / part / f"{name}.fp16.safetensors")
            (dest / part / f"{name}.safetensors").unlink()
    return dest


@pytest.mark.parametrize("source", ["transformers-5-folder", "hub-folder", "hub-fp16-variant-folder"])
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_export_round_trips_through_diffusers(
    source: str, suffix: str, tmp_path: Path, tiny_sd15: Path, tiny_configs_only: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    from ipa_studio.core.models.convert import export_single_file

    folder = tiny_sd15
    if source != "transformers-5-folder":
        folder = _hub_style_folder(tiny_sd15, tmp_path / "folder", fp16_variant="fp16" in source)
    variant = "fp16" if "fp16" in source else None
    original = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, variant=variant)
    exported = export_single_file(folder, tmp_path / f"exported{suffix}")
    # The standard layout, keys as v1-5-pruned-emaonly has them.
    from ipa_studio.core.models.safe_load import load_weights

    state = load_weights(exported)
    state = state.get("state_dict", state)
    assert state["cond_stage_model.transformer.text_model.embeddings.position_ids"].dtype == torch.int64
    assert not any(
        k.startswith("cond_stage_model.transformer.")
        and not k.startswith("cond_stage_model.transformer.text_model.")
        for k in state
    )
    back = StableDiffusionPipeline.from_single_file(
        str(exported), config=str(tiny_configs_only), local_files_only=True, safety_checker=None
    )
    for part in PARTS:
        want, got = getattr(original, part).state_dict(), getattr(back, part).state_dict()
        assert want.keys() == got.keys(), part
        assert all(torch.equal(want[k], got[k]) for k in want), part


def test_convert_on_add_writes_the_standard_layout(
    files: dict[str, Path], tiny_sd15: Path, tiny_configs_only: Path, tiny_as_bundled: Path, tmp_path: Path
) -> None:
    # A bare-layout .ckpt that diffusers cannot read as it is; --convert writes what it reads.
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    lib = ModelLibrary(tmp_path / "library")
    entry = lib.add(files["bare-text-encoder"], convert=True, hash_files=False)
    assert entry.path.suffix == ".safetensors" and entry.usable
    with safe_open(str(entry.path), "pt") as f:
        keys = set(f.keys())
        assert (
            f.get_tensor("cond_stage_model.transformer.text_model.embeddings.position_ids").dtype
            == torch.int64
        )
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    back = StableDiffusionPipeline.from_single_file(
        str(entry.path), config=str(tiny_configs_only), local_files_only=True, safety_checker=None
    )
    source = folder_state(tiny_sd15)[2]
    assert all(torch.equal(v, source[k]) for k, v in back.text_encoder.state_dict().items())


# ----------------------------------------------------------------------------------------------
# Diffusers folders and hub repos that hold only *.fp16.safetensors variant files
# ----------------------------------------------------------------------------------------------


def test_fp16_variant_repo_is_downloaded_and_generates_like_diffusers(
    tmp_path: Path,
    tiny_sd15: Path,
    tiny_image_encoder: Path,
    tiny_adapters: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ipa_studio.core.models.tiny import make_reference_image as picture
    from tests.fixtures.network import FakeHub, loopback_only, serve_fake_hub
    from tests.fixtures.reference import diffusers_pipeline

    # Most hub repos (diffusers' variant naming): unet/diffusion_pytorch_model.fp16.safetensors …
    folder = _hub_style_folder(tiny_sd15, tmp_path / "hub-repo", fp16_variant=True)
    adapter = tiny_adapters[("global", "safetensors")]
    theirs = diffusers_pipeline(
        StableDiffusionPipeline,
        folder,
        tiny_image_encoder,
        adapter,
        variant="fp16",
        torch_dtype=torch.float32,
    )
    assert theirs.unet.dtype == torch.float32

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = FakeHub(
        repos={
            "someone/sd15-fp16": {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*"))
                if p.is_file()
            }
        }
    )
    lib = ModelLibrary(tmp_path / "library")
    with loopback_only() as refused, serve_fake_hub(hub):
        entry = lib.add("someone/sd15-fp16", endpoint=hub.url)
    assert not refused
    assert (entry.kind, entry.usable, entry.reason) == ("base", True, None)
    assert entry.details["weights_variant"] == {"unet": "fp16", "vae": "fp16", "text_encoder": "fp16"}
    assert (entry.path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()

    ref = picture(4, (64, 64))
    theirs.set_ip_adapter_scale(0.8)
    with torch.no_grad():
        expected = theirs(
            prompt="a red boat",
            ip_adapter_image=ref,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(9),
            output_type="latent",
        ).images
    request = GenerationRequest(
        models=ModelSpec(entry.path, adapter, tiny_image_encoder),
        references=(Reference(ref),),
        prompt="a red boat",
        scale=0.8,
        steps=2,
        seed=9,
        width=64,
        height=64,
        scheduler="ddim",
    )
    got = Engine("cpu", torch.float32).generate(request).latents
    assert (got - expected).abs().max().item() <= TOL
