"""Existing model folders, in place: a ComfyUI install, an A1111 install, the Hugging Face cache and
IPA Studio's own default layout, each with files of every kind, links, and files that are not models.

The trees follow the installs' own folder names (ComfyUI ``folder_paths.py``, A1111
``modules/paths_internal.py``, huggingface_hub's cache layout); the files are header-only stubs with
the real key layouts (``tests/fixtures/checkpoints.py``), so detection sees what it sees in real files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ipa_studio.core import settings
from ipa_studio.core.models.library import ModelLibrary
from ipa_studio.core.models.scan import find_models, recognise
from tests.fixtures.checkpoints import (
    adapter_shapes,
    controlnet_shapes,
    sd15_shapes,
    sdxl_shapes,
    write_shapes_only,
    write_shapes_only_pickle,
)

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"


def _vit_h_shapes() -> dict[str, tuple[int, ...]]:
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from ipa_studio.core.models.convert import vision_config

    with init_empty_weights():
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision_config()))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


LORA = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 768),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": (320, 8),
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.alpha": (),
}
VAE = {"encoder.down.0.block.0.conv1.weight": (128, 128, 3, 3), "decoder.conv_in.weight": (512, 4, 3, 3)}


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint kept on another disk, linked into the installs."""
    return write_shapes_only(
        tmp_path_factory.mktemp("other-disk") / "deliberate_v2.safetensors", sd15_shapes()
    )


def _comfyui(root: Path, elsewhere: Path, tiny_sd15: Path) -> Path:
    m = root / "models"
    write_shapes_only(m / "checkpoints" / "v1-5-pruned-emaonly.safetensors", sd15_shapes())
    write_shapes_only(m / "checkpoints" / "sd_xl_base_1.0.safetensors", sdxl_shapes())
    (m / "checkpoints" / "v1-5-pruned-emaonly.yaml").write_text("model:\n  target: ldm\n")  # not a model
    (m / "checkpoints" / "put_checkpoints_here").write_text("")
    (m / "checkpoints" / "deliberate_v2.safetensors").symlink_to(elsewhere)
    (m / "diffusers").mkdir(parents=True)
    (m / "diffusers" / "tiny-sd15").symlink_to(tiny_sd15, target_is_directory=True)
    write_shapes_only(m / "loras" / "add_detail.safetensors", LORA, "F32")
    (m / "loras" / "add_detail.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    write_shapes_only(
        m / "controlnet" / "control_v11p_sd15_openpose_fp16.safetensors", controlnet_shapes(prefix="")
    )
    write_shapes_only(m / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", _vit_h_shapes())
    write_shapes_only(m / "ipadapter" / "ip-adapter-plus_sd15.safetensors", adapter_shapes("plus"))
    write_shapes_only(m / "embeddings" / "easynegative.safetensors", {"emb_params": (8, 768)}, "F32")
    write_shapes_only(m / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors", VAE)
    # Not IPA Studio's business: upscalers and CLIP text encoders are never listed.
    write_shapes_only(
        m / "upscale_models" / "4x-UltraSharp.pth.safetensors", {"model.0.weight": (64, 3, 3, 3)}
    )
    (root / "comfy").mkdir()
    (root / "custom_nodes" / "some_node").mkdir(parents=True)
    (root / "output").mkdir()
    write_shapes_only(root / "output" / "not-a-model.safetensors", LORA, "F32")
    (m / "loras" / "loop").symlink_to(m, target_is_directory=True)  # a link loop must not hang the scan
    (m / "loras" / "dangling.safetensors").symlink_to(root / "nowhere.safetensors")
    return root


def _a1111(root: Path, elsewhere: Path) -> Path:
    m = root / "models"
    write_shapes_only(m / "Stable-diffusion" / "sd-v1-5-inpainting.safetensors", sd15_shapes(in_channels=9))
    (m / "Stable-diffusion" / "deliberate_v2.safetensors").symlink_to(elsewhere)
    (m / "Stable-diffusion" / "Put Stable Diffusion checkpoints here.txt").write_text("")
    write_shapes_only(m / "Lora" / "epi_noiseoffset2.safetensors", LORA, "F32")
    write_shapes_only_pickle(m / "ControlNet" / "control_v11f1p_sd15_depth.pth", controlnet_shapes())
    write_shapes_only(m / "VAE" / "kl-f8-anime2.safetensors", VAE)
    write_shapes_only(m / "ESRGAN" / "4x_foolhardy_Remacri.safetensors", {"model.0.weight": (64, 3, 3, 3)})
    write_shapes_only(
        root / "embeddings" / "bad_prompt_version2.safetensors", {"emb_params": (8, 768)}, "F32"
    )
    ext = root / "extensions" / "sd-webui-controlnet" / "models"
    write_shapes_only(ext / "ip-adapter_sd15.pth.safetensors", adapter_shapes("global"))
    (root / "venv" / "lib").mkdir(parents=True)
    write_shapes_only(root / "venv" / "lib" / "stray.safetensors", LORA, "F32")
    return root


def _by_name(entries) -> dict[str, tuple[str, bool]]:
    return {e.name: (e.kind, e.usable) for e in entries}


def test_comfyui_install_is_listed_in_place_by_kind(tmp_path: Path, elsewhere: Path, tiny_sd15: Path) -> None:
    root = _comfyui(tmp_path / "ComfyUI", elsewhere, tiny_sd15)
    assert recognise(root).name == "ComfyUI"
    assert recognise(root / "models").root == root  # pointing at its models folder works too
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    lib = ModelLibrary(tmp_path / "library")
    entries = lib.add_folder(root)
    assert _by_name(entries) == {
        "v1-5-pruned-emaonly": ("base", True),
        "sd_xl_base_1.0": ("base", False),
        "deliberate_v2": ("base", True),  # through the link, under the link's name
        "tiny-sd15": ("base", True),  # a diffusers folder, linked
        "add_detail": ("lora", True),
        "control_v11p_sd15_openpose_fp16": ("controlnet", True),
        "CLIP-ViT-H-14-laion2B-s32B-b79K": ("image_encoder", True),
        "ip-adapter-plus_sd15": ("adapter", True),
        "easynegative": ("embedding", True),
        "vae-ft-mse-840000-ema-pruned": ("vae", False),
    }
    link = next(e for e in entries if e.name == "deliberate_v2")
    assert link.path == root / "models" / "checkpoints" / "deliberate_v2.safetensors"
    assert {e.source.type for e in entries} == {"scan"}
    assert not any(
        p.is_file()
        for p in (tmp_path / "library").rglob("*")
        if p.name not in ("library.json", ".library.lock")
    )
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before  # nothing touched
    adapter = next(e for e in entries if e.kind == "adapter")
    assert lib.image_encoder_for(adapter).name == "CLIP-ViT-H-14-laion2B-s32B-b79K"
    assert [e.name for e in lib.entries("base", usable_only=True)] == [
        "deliberate_v2",
        "tiny-sd15",
        "v1-5-pruned-emaonly",
    ]


def test_changes_in_the_folder_show_on_refresh(tmp_path: Path, elsewhere: Path, tiny_sd15: Path) -> None:
    root = _comfyui(tmp_path / "ComfyUI", elsewhere, tiny_sd15)
    lib = ModelLibrary(tmp_path / "library")
    lib.add_folder(root)
    m = root / "models"
    (m / "loras" / "add_detail.safetensors").unlink()  # deleted
    write_shapes_only(m / "loras" / "new_style.safetensors", LORA, "F32")  # added
    # Replaced under the same name by another kind of file (an IP-Adapter saved as the "embedding").
    write_shapes_only(m / "embeddings" / "easynegative.safetensors", adapter_shapes("global"))
    names = _by_name(lib.refresh(hash_new=False))
    assert "add_detail" not in names
    assert names["new_style"] == ("lora", True)
    assert names["easynegative"] == ("adapter", True)
    lib.remove_folder(root)
    assert lib.entries() == []
    assert (m / "checkpoints" / "v1-5-pruned-emaonly.safetensors").is_file()  # files stay


def test_a1111_install_is_listed_in_place_by_kind(tmp_path: Path, elsewhere: Path) -> None:
    root = _a1111(tmp_path / "stable-diffusion-webui", elsewhere)
    install = recognise(root)
    assert install.name == "A1111 / Forge"
    found = {f.name: f.folder_kind for f in find_models(root)}
    assert found == {
        "sd-v1-5-inpainting": "base",
        "deliberate_v2": "base",
        "epi_noiseoffset2": "lora",
        "control_v11f1p_sd15_depth": "controlnet",
        "kl-f8-anime2": "vae",
        "bad_prompt_version2": "embedding",
        "ip-adapter_sd15.pth": "controlnet",  # sd-webui-controlnet's folder holds adapters too
    }
    entries = ModelLibrary(tmp_path / "library").add_folder(root)
    kinds = _by_name(entries)
    assert kinds["sd-v1-5-inpainting"] == ("base", True)
    assert kinds["control_v11f1p_sd15_depth"] == ("controlnet", True)
    assert kinds["ip-adapter_sd15.pth"] == ("adapter", True)  # detection, not the folder, decides
    assert kinds["bad_prompt_version2"] == ("embedding", True)


def test_hugging_face_cache_lists_each_repo_at_its_newest_snapshot(tmp_path: Path, tiny_sd15: Path) -> None:
    # huggingface_hub's cache: blobs named by hash, snapshots/<revision>/ full of links to them.
    hub = tmp_path / "huggingface" / "hub"

    def cached(repo: str, files: dict[str, Path], revision: str = "a" * 40, main: bool = True) -> None:
        folder = hub / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        if main:
            (folder / "refs" / "main").write_text(revision)
        for rel, source in files.items():
            data = source.read_bytes()
            blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = folder / "snapshots" / revision / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))

    stubs = tmp_path / "stubs"
    encoder = stubs / "image_encoder"
    encoder.mkdir(parents=True)
    (encoder / "config.json").write_text(
        '{"model_type": "clip_vision_model", "hidden_size": 1280, "projection_dim": 1024}'
    )
    write_shapes_only(
        encoder / "model.safetensors", {"vision_model.embeddings.patch_embedding.weight": (1280, 3, 14, 14)}
    )
    adapter = write_shapes_only(stubs / "ip-adapter_sd15.safetensors", adapter_shapes("global"))
    cached(
        "h94/IP-Adapter",
        {
            "models/ip-adapter_sd15.safetensors": adapter,
            "models/image_encoder/config.json": encoder / "config.json",
            "models/image_encoder/model.safetensors": encoder / "model.safetensors",
        },
    )
    sd_files = {p.relative_to(tiny_sd15).as_posix(): p for p in tiny_sd15.rglob("*") if p.is_file()}
    cached("someone/tiny-sd15", sd_files)
    cached(
        "someone/tiny-sd15",
        {"model_index.json": tiny_sd15 / "model_index.json"},
        revision="b" * 40,
        main=False,
    )  # old

    assert recognise(hub).name == "Hugging Face cache"
    assert recognise(hub.parent).root == hub
    entries = ModelLibrary(tmp_path / "library").add_folder(hub.parent)
    kinds = _by_name(entries)
    assert kinds == {
        "ip-adapter_sd15": ("adapter", True),
        "IP-Adapter/models/image_encoder": ("image_encoder", True),
        "someone/tiny-sd15": ("base", True),
    }
    adapter_entry = next(e for e in entries if e.kind == "adapter")
    assert adapter_entry.path.suffix == ".safetensors"  # the link's name, not the blob's hash
    assert "a" * 40 in str(next(e for e in entries if e.kind == "base").path)


def test_repository_models_folder_is_the_default_layout_and_used_from_a_checkout(tmp_path: Path) -> None:
    # The checkout's models/ folder: one folder per kind, a README, the marker that names the layout.
    assert (REPO_MODELS / "README.md").is_file()
    assert {p.name for p in REPO_MODELS.iterdir() if p.is_dir()} >= {
        "checkpoints",
        "ipadapter",
        "clip_vision",
        "controlnet",
        "loras",
        "embeddings",
        "vae",
        "annotators",
    }
    assert settings.portable_models_dir([REPO_MODELS]) == REPO_MODELS  # the app's default from a checkout
    assert settings.portable_models_dir([tmp_path]) is None  # an ordinary folder is not one

    # The same layout anywhere (a portable build's copy): files in the kind folders and at the top.
    copy = tmp_path / "portable" / "models"
    copy.mkdir(parents=True)
    (copy / settings.PORTABLE_MARKER).write_text("")
    write_shapes_only(copy / "ipadapter" / "ip-adapter_sd15.safetensors", adapter_shapes("global"))
    write_shapes_only(copy / "loras" / "style.safetensors", LORA, "F32")
    write_shapes_only(copy / "ip-adapter-plus_sd15.safetensors", adapter_shapes("plus"))  # a download
    write_shapes_only(copy / "annotators" / "body_pose_model.safetensors", {"conv1_1.weight": (64, 3, 3, 3)})
    assert recognise(copy).name == "IPA Studio"
    lib = ModelLibrary(copy)
    assert _by_name(lib.refresh(hash_new=False)) == {
        "ip-adapter_sd15": ("adapter", True),
        "style": ("lora", True),
        "ip-adapter-plus_sd15": ("adapter", True),
    }


def test_installs_are_named_when_added_as_one_model(tmp_path: Path, elsewhere: Path, tiny_sd15: Path) -> None:
    from ipa_studio.core.models.detect import detect

    found = detect(_comfyui(tmp_path / "ComfyUI", elsewhere, tiny_sd15))
    assert (found.kind, found.usable) == ("unknown", False)
    assert "a ComfyUI folder, not one model: 'ipa-studio models add-folder'" in found.reason


def test_cli_add_folder_lists_an_install_by_kind(
    tmp_path: Path, elsewhere: Path, tiny_sd15: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ipa_studio.cli import main

    root = _comfyui(tmp_path / "ComfyUI", elsewhere, tiny_sd15)
    library = tmp_path / "library"
    assert main(["models", "--library", str(library), "add-folder", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"ComfyUI folder {root}: 10 models (4 base, 1 adapter" in out and "8 usable by IPA Studio" in out
    assert main(["models", "--library", str(library), "folders"]) == 0
    assert f"{root}  (ComfyUI)" in capsys.readouterr().out
    assert main(["models", "--library", str(library), "list", "--kind", "lora"]) == 0
    assert "add_detail" in capsys.readouterr().out
    assert main(["models", "--library", str(library), "remove-folder", str(root)]) == 0
    assert main(["models", "--library", str(library), "list"]) == 0
    assert "No models" in capsys.readouterr().out


def test_invokeai_install_is_listed_in_place(tmp_path: Path) -> None:
    # InvokeAI keeps models under models/<base>/<type>/ (invokeai/backend/model_manager).
    root = tmp_path / "invokeai"
    root.mkdir()
    (root / "invokeai.yaml").write_text("schema_version: 4.0.2\n")
    write_shapes_only(root / "models" / "sd-1" / "main" / "dreamshaper_8.safetensors", sd15_shapes())
    write_shapes_only(root / "models" / "sd-1" / "lora" / "detail.safetensors", LORA, "F32")
    write_shapes_only(
        root / "models" / "sd-1" / "ip_adapter" / "ip_adapter_sd15.safetensors", adapter_shapes("global")
    )
    (root / "databases").mkdir()
    (root / "databases" / "invokeai.db").write_bytes(b"SQLite format 3\x00")
    assert recognise(root).name == "InvokeAI"
    kinds = _by_name(ModelLibrary(tmp_path / "library").add_folder(root))
    assert kinds == {
        "dreamshaper_8": ("base", True),
        "detail": ("lora", True),
        "ip_adapter_sd15": ("adapter", True),
    }
