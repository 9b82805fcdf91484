"""Shared pytest fixtures. Tiny models are built once per session, in the real on-disk formats.

Nothing here may reach the network: the hub is switched to offline mode before anything imports
huggingface_hub, so an accidental ``from_pretrained("some/hub-id")`` fails fast instead of hanging.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
# A developer's own model library must never receive the tiny test models.
os.environ.pop("IPA_STUDIO_MODELS", None)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the tokenizers pool

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ipa_studio.core import settings as _settings  # noqa: E402
from ipa_studio.core.models.tiny import (  # noqa: E402
    build_controlnet_folder,
    build_image_encoder_folder,
    build_sd15_folder,
    make_reference_image,
    write_ip_adapter,
)

# Nor a checkout's own models/ folder (the default models folder when the app runs from a checkout).
_settings.program_models_dirs = lambda: []

# One thread: the tiny models' ops are far too small to gain from more, and on a busy 2-core machine
# (parallel test runs) multi-threaded torch spin-waits: a 2-step 64 px generation took 0.05 s with one
# thread and up to 19 s with two. IPA_TEST_THREADS overrides it for heavier local runs.
torch.set_num_threads(int(os.environ.get("IPA_TEST_THREADS", "1")))

ADAPTER_VARIANTS = ("global", "plus", "full")
ADAPTER_FORMATS = ("bin", "safetensors")


@pytest.fixture(scope="session", autouse=True)
def model_hash_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model hashes the tests compute go to a cache of their own, never the developer's."""
    path = tmp_path_factory.mktemp("cache") / "model-hashes.json"
    os.environ["IPA_STUDIO_HASH_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1.5-shaped diffusers folder (4-channel UNet)."""
    return build_sd15_folder(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def tiny_sd15_inpaint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD1.5 inpainting folder (9-channel UNet)."""
    return build_sd15_folder(tmp_path_factory.mktemp("models") / "tiny-sd15-inpaint", in_channels=9, seed=10)


@pytest.fixture(scope="session")
def tiny_image_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIPVisionModelWithProjection folder (hidden 32, projection 24, 32 px)."""
    return build_image_encoder_folder(tmp_path_factory.mktemp("models") / "image_encoder")


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path) -> Path:
    """A tiny ControlNet for ``tiny_sd15`` whose residuals are non-zero."""
    return build_controlnet_folder(tmp_path_factory.mktemp("models") / "controlnet", tiny_sd15)


@pytest.fixture(scope="session")
def tiny_adapters(
    tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path, tiny_image_encoder: Path
) -> dict[tuple[str, str], Path]:
    """IP-Adapter checkpoints for the tiny models, keyed (variant, fmt): variants global/plus/full."""
    folder = tmp_path_factory.mktemp("adapters")
    adapters = {}
    for seed, variant in enumerate(ADAPTER_VARIANTS, start=3):
        for fmt in ADAPTER_FORMATS:
            adapters[(variant, fmt)] = write_ip_adapter(
                folder / f"ip-adapter-{variant}_tiny.{fmt}",
                variant=variant,  # type: ignore[arg-type]
                sd15_folder=tiny_sd15,
                image_encoder_folder=tiny_image_encoder,
                fmt=fmt,  # type: ignore[arg-type]
                seed=seed,
            )
    return adapters


@pytest.fixture(scope="session")
def reference_images() -> list[Image.Image]:
    """A few distinct, deterministic RGB reference pictures of different sizes."""
    return [
        make_reference_image(0),
        make_reference_image(1, size=(64, 64)),
        make_reference_image(2, size=(40, 90)),
    ]


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random transformers CLIPModel folder (config + weights only, like many local copies), for the
    CLIP-I / CLIP-T scores of evaluations and sweeps."""
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    torch.manual_seed(5)
    config = CLIPConfig(
        text_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_configs_only(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path) -> Path:
    """The tiny SD folder's configs and tokenizer without weights: ``from_single_file(config=…)``."""
    from tests.fixtures.real_layouts import config_only_copy

    return config_only_copy(tiny_sd15, tmp_path_factory.mktemp("configs") / "tiny-sd15-config")


@pytest.fixture(scope="session")
def tiny_inpaint_configs_only(tmp_path_factory: pytest.TempPathFactory, tiny_sd15_inpaint: Path) -> Path:
    from tests.fixtures.real_layouts import config_only_copy

    return config_only_copy(tiny_sd15_inpaint, tmp_path_factory.mktemp("configs") / "tiny-inpaint-config")


@pytest.fixture(scope="session")
def _tiny_resources(
    tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path, tiny_image_encoder: Path, tiny_controlnet: Path
) -> Path:
    from tests.fixtures.real_layouts import tiny_resources

    return tiny_resources(
        tmp_path_factory.mktemp("resources") / "resources", tiny_sd15, tiny_image_encoder, tiny_controlnet
    )


@pytest.fixture()
def tiny_as_bundled(monkeypatch: pytest.MonkeyPatch, _tiny_resources: Path) -> Path:
    """The app's bundled SD1.5 / image-encoder / ControlNet configs replaced by the tiny models' ones
    for this test: tiny single files are then what real SD1.5 files are to the app."""
    from ipa_studio.core.models import loader

    monkeypatch.setattr(loader, "bundled_resources", lambda: _tiny_resources)
    return _tiny_resources


def write_official_json_dataset(
    folder: Path, captions: dict[str, str], *, root_name: str = "images"
) -> tuple[Path, Path]:
    """Training data in the layout of the official IP-Adapter repository (tencent-ailab/IP-Adapter,
    ``tutorial_train.py``: ``--data_json_file`` / ``--data_root_path``): one JSON file holding a list
    of ``{"image_file": ..., "text": ...}``, the image paths relative to a separate root folder.
    Written here with ``json.dump`` after that script's own example, ``[{"image_file": "1.png", "text":
    "A dog"}]``, not by our code; the tests read it first with the official script's reader lines.
    Returns ``(json_file, root)``."""
    import json

    root = folder / root_name
    for index, name in enumerate(captions):
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        make_reference_image(60 + index, (72, 64)).save(target)
    json_file = folder / "data.json"
    with open(json_file, "w") as f:
        json.dump([{"image_file": name, "text": text} for name, text in captions.items()], f)
    return json_file, root


@pytest.fixture
def official_json_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """Four captioned images in the official IP-Adapter JSON layout (one in a subfolder)."""
    captions = {
        "1.png": "A dog",
        "2.png": "a red boat at sea",
        "more/3.jpg": "shapes on a grey ground",
        "4.png": "a cat on a sofa",
    }
    return write_official_json_dataset(tmp_path / "official", captions)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_sd15: Path, tiny_image_encoder: Path) -> Path:
    """A finished 3-step training run of the tiny models with a checkpoint at every step (the run
    folder ``ipa-studio train`` writes), for evaluating each saved checkpoint."""
    from ipa_studio.cli import main

    folder = tmp_path_factory.mktemp("run")
    json_file, root = write_official_json_dataset(
        folder, {f"{i}.png": f"shapes number {i}" for i in range(4)}, root_name="data"
    )
    run = folder / "run"
    args = [
        "train", "--data-json", str(json_file), "--data-root", str(root),
        "--model", str(tiny_sd15), "--image-encoder", str(tiny_image_encoder), "--output", str(run),
        "--resolution", "64", "--batch-size", "2", "--max-steps", "3", "--checkpoint-every", "1",
        "--keep-checkpoints", "0", "--lr", "0.05", "--num-workers", "0", "--device", "cpu", "--quiet",
    ]  # fmt: skip
    # A large learning rate, so the three checkpoints' adapters (and scores) clearly differ.
    assert main(args) == 0
    return run


@pytest.fixture
def eval_pairs(tmp_path: Path) -> Path:
    """Two image prompts with sidecar captions, the pairs folder of an evaluation."""
    folder = tmp_path / "pairs"
    folder.mkdir()
    for seed, (name, caption) in enumerate({"cat.png": "a cat on a sofa", "boat.png": "a red boat"}.items()):
        make_reference_image(seed + 30, (70, 56)).save(folder / name)
        (folder / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    return folder
