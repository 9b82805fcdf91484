"""Single-file SD1.5 checkpoints (original key layout): conversion both ways, offline loading, and the
same image as the same weights in diffusers-folder form."""

from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ipa_studio.core import engine as engine_module
from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import ModelFileError, UnsafeFileError
from ipa_studio.core.models.convert import export_single_file, from_single_file, to_single_file
from ipa_studio.core.models.loader import load_base_model, single_file_configs
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.request import GenerationRequest, ModelSpec, Reference
from tests.fixtures.checkpoints import sdxl_shapes, write_shapes_only
from tests.fixtures.network import loopback_only

CPU = torch.device("cpu")


def _folder_state(folder: Path) -> tuple[dict, dict, dict, dict, dict]:
    unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    return (
        load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
        load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"),
        load_file(folder / "text_encoder" / "model.safetensors"),
        unet_cfg,
        vae_cfg,
    )


@pytest.fixture(scope="module")
def tiny_file(tiny_sd15: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_single_file(tiny_sd15, tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors")


def test_layout_conversion_round_trips_every_tensor(tiny_sd15: Path) -> None:
    unet, vae, text, unet_cfg, vae_cfg = _folder_state(tiny_sd15)
    single = to_single_file(unet, vae, text, unet_cfg, vae_cfg)
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in single
    )
    back = from_single_file(single, unet_cfg, vae_cfg)
    for original, converted in zip((unet, vae, text), back, strict=True):
        assert original.keys() == converted.keys()
        assert all(torch.equal(original[k], converted[k]) for k in original)


def test_bundled_sd15_configs_match_the_original_layout_at_full_size() -> None:
    # Build the full-size models from the bundled configs on the meta device and convert their names
    # both ways: every SD1.5 weight has exactly one original-layout name and comes back to its place.
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg = single_file_configs()
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(cfg["unet"]).state_dict()
        vae = AutoencoderKL.from_config(cfg["vae"]).state_dict()
    single = to_single_file(unet, vae, {}, cfg["unet"], cfg["vae"])
    assert len(single) == 686 + 248  # the published SD1.5 checkpoints' UNet + VAE tensor counts
    unet2, vae2, _ = from_single_file(single, cfg["unet"], cfg["vae"])
    assert {k: v.shape for k, v in unet2.items()} == {k: v.shape for k, v in unet.items()}
    assert {k: v.shape for k, v in vae2.items()} == {k: v.shape for k, v in vae.items()}
    assert sum(v.numel() for v in unet.values()) == pytest.approx(860e6, rel=0.01)  # DESIGN §4: ≈860M


def _generate(engine: Engine, base: Path, adapter: Path, encoder: Path) -> torch.Tensor:
    request = GenerationRequest(
        models=ModelSpec(base, adapter, encoder),
        references=(Reference(make_reference_image(5, (64, 64))),),
        prompt="a lighthouse",
        steps=3,
        width=64,
        height=64,
        seed=11,
        scale=0.7,
    )
    return engine.generate(request).latents


def test_single_file_loads_offline_and_generates_the_same_image(
    tiny_file: Path,
    tiny_sd15: Path,
    tiny_adapters: dict,
    tiny_image_encoder: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    adapter = tiny_adapters[("global", "safetensors")]
    from_folder = _generate(Engine("cpu", torch.float32), tiny_sd15, adapter, tiny_image_encoder)

    # The tiny model's widths are not SD1.5's, so it is described by its own config folder; a real
    # SD1.5 file uses the bundled configs (the test above checks those at full size).
    monkeypatch.setattr(
        engine_module, "load_base_model", functools.partial(load_base_model, config=tiny_sd15)
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with loopback_only(allow_loopback=False) as refused:
        engine = Engine("cpu", torch.float32)
        from_file = _generate(engine, tiny_file, adapter, tiny_image_encoder)
    assert refused == []  # nothing even tried to connect
    assert engine.stats.components_loaded[0] == f"base:{tiny_file}"
    # Same weights, same image. Not bit-identical: CPU conv/matmul kernels round differently with
    # the tensors' memory alignment (re-allocating the folder model's own weights moves its output
    # by ~6e-7 too), so the bar is DESIGN §3's reference tolerance on latents.
    torch.testing.assert_close(from_file, from_folder, atol=1e-4, rtol=0)


def test_inpainting_single_file_keeps_its_nine_channels(tiny_sd15_inpaint: Path, tmp_path: Path) -> None:
    path = export_single_file(tiny_sd15_inpaint, tmp_path / "inpaint.safetensors")
    base = load_base_model(path, CPU, torch.float32, config=tiny_sd15_inpaint)
    assert base.is_inpainting and base.unet.conv_in.weight.shape[1] == 9
    reference = load_base_model(tiny_sd15_inpaint, CPU, torch.float32)
    assert torch.equal(base.unet.conv_in.weight, reference.unet.conv_in.weight)


def _lightning_ckpt(tiny_sd15: Path, dest: Path) -> Path:
    """A .ckpt as PyTorch Lightning wrote them: the ModelCheckpoint class as a dict key, numpy scalars."""
    unet, vae, text, unet_cfg, vae_cfg = _folder_state(tiny_sd15)
    names = (
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
    )
    fake = {name: types.ModuleType(name) for name in names}

    class ModelCheckpoint:  # pickled by name only; the loader must never import or run it
        pass

    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    fake[names[-1]].ModelCheckpoint = ModelCheckpoint
    payload = {
        "state_dict": to_single_file(unet, vae, text, unet_cfg, vae_cfg),
        "callbacks": {ModelCheckpoint: {"best_model_score": np.float64(0.25), "dirpath": "/ckpts"}},
        "global_step": np.int64(470000),
        "epoch": 5,
        "pytorch-lightning_version": "1.4.2",
    }
    saved = {n: sys.modules.get(n) for n in names}
    sys.modules.update(fake)
    try:
        torch.save(payload, dest)
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module
    return dest


def test_lightning_ckpt_loads_without_running_its_classes(tiny_sd15: Path, tmp_path: Path) -> None:
    path = _lightning_ckpt(tiny_sd15, tmp_path / "model.ckpt")
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(path, weights_only=True)  # plain weights-only loading refuses these files
    assert "pytorch_lightning" not in sys.modules
    base = load_base_model(path, CPU, torch.float32, config=tiny_sd15)
    reference = load_base_model(tiny_sd15, CPU, torch.float32)
    assert torch.equal(base.unet.conv_out.weight, reference.unet.conv_out.weight)
    assert "pytorch_lightning" not in sys.modules


def test_pickle_that_would_run_code_is_refused_and_runs_nothing(tiny_sd15: Path, tmp_path: Path) -> None:
    from tests.fixtures.malicious import _TouchOnUnpickle

    unet, vae, text, unet_cfg, vae_cfg = _folder_state(tiny_sd15)
    marker = tmp_path / "code-ran"
    state = to_single_file(unet, vae, text, unet_cfg, vae_cfg)
    torch.save({"state_dict": state, "hook": _TouchOnUnpickle(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeFileError, match="unsafe"):
        load_base_model(tmp_path / "evil.ckpt", CPU, torch.float32, config=tiny_sd15)
    assert not marker.exists()


def test_truncated_single_file_is_named_before_reading_it(tiny_file: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_file.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match="truncated"):
        load_base_model(cut, CPU, torch.float32, config=tiny_file.parent)


def test_unsupported_single_files_get_their_reason(tmp_path: Path, tiny_file: Path) -> None:
    sdxl = write_shapes_only(tmp_path / "sdxl.safetensors", sdxl_shapes())
    with pytest.raises(ModelFileError, match="SDXL checkpoint: IPA Studio runs SD1.5 models"):
        load_base_model(sdxl, CPU, torch.float32)
    with pytest.raises(ModelFileError, match="not SD1.5's 768"):
        load_base_model(tiny_file, CPU, torch.float32)  # non-standard widths need their config


def test_config_folder_that_does_not_fit_is_a_shape_error(tiny_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    for part in ("unet", "vae", "text_encoder"):
        (config / part).mkdir(parents=True)
    src = single_file_configs()
    for part in ("unet", "vae", "text_encoder"):
        (config / part / "config.json").write_text(json.dumps(src[part]))
    with pytest.raises(ModelFileError, match=r"does not fit the config folder .*'conv_in.weight' is \[32, 4"):
        load_base_model(tiny_file, CPU, torch.float32, config=config)
