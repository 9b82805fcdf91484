"""Training with the paper's recipe on the tiny models: the loss goes down, only the adapter changes,
the drops happen at their rates, a resumed run equals an uninterrupted one, and the result loads in
our engine and in diffusers with the same image."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from ipa_studio.core.adapter import IPAdapter, cross_attention_layers, read_checkpoint
from ipa_studio.core.engine import Engine
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.request import GenerationRequest, ModelSpec, Reference
from ipa_studio.core.train import (
    DropRates,
    FrozenModels,
    TrainConfig,
    Trainer,
    encode_conditioning,
    install_for_training,
    sample_drops,
    training_loss,
)
from ipa_studio.core.train.data import collate
from tests.fixtures.reference import diffusers_pipeline

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
NO_DROPS = DropRates(0.0, 0.0, 0.0)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight captioned pictures plus one file that is not an image."""
    folder = tmp_path_factory.mktemp("train-data")
    for i in range(8):
        make_reference_image(100 + i, (72 + 4 * i, 64)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"a picture with shapes, number {i}", encoding="utf-8")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def _config(dataset: Path, tiny_sd15: Path, tiny_image_encoder: Path, output: Path, **kw) -> TrainConfig:
    defaults = dict(
        data=dataset,
        base_model=tiny_sd15,
        image_encoder=tiny_image_encoder,
        output=output,
        resolution=64,
        batch_size=4,
        device="cpu",
        progress=False,
        checkpoint_every=1000,
    )
    return TrainConfig(**{**defaults, **kw})


def _fixed_loss(trainer: Trainer, batch: dict) -> float:
    """Mean loss over 16 fixed (noise, timestep) draws with no drops: comparable before and after."""
    with torch.no_grad():
        losses = [
            training_loss(
                trainer.model,
                trainer.frozen,
                batch,
                NO_DROPS,
                torch.Generator().manual_seed(seed),
                hidden_states=trainer.hidden_states,
            ).item()
            for seed in range(16)
        ]
    return sum(losses) / len(losses)


@pytest.fixture(scope="module", params=["global", "plus"])
def trained(request, dataset, tiny_sd15, tiny_image_encoder, tmp_path_factory):
    """40 steps of the paper's recipe (lr 1e-4, drops 0.05) on the tiny models, with snapshots."""
    variant = request.param
    frozen = FrozenModels.load(tiny_sd15, tiny_image_encoder, CPU, torch.float32)
    before = {name: _snapshot(m) for name, m in frozen.modules().items()}
    output = tmp_path_factory.mktemp(f"run-{variant}")
    trainer = Trainer(
        _config(dataset, tiny_sd15, tiny_image_encoder, output, variant=variant, max_steps=40), frozen
    )
    initial = _snapshot(trainer.adapter)
    data = trainer.loader.dataset
    batch = collate([data[i] for i in range(len(data))])
    loss_before = _fixed_loss(trainer, batch)
    result = trainer.run()
    return {
        "variant": variant,
        "trainer": trainer,
        "result": result,
        "frozen_before": before,
        "adapter_before": initial,
        "loss_before": loss_before,
        "loss_after": _fixed_loss(trainer, batch),
    }


# ---------------------------------------------------------------------------------------------- init


@pytest.mark.parametrize("variant, tokens", [("global", 4), ("plus", 16), ("full", 17)])
def test_fresh_adapter_copies_wk_wv_and_saves_in_the_official_layout(
    variant, tokens, tiny_sd15, tiny_image_encoder, tmp_path
):
    frozen = FrozenModels.load(tiny_sd15, tiny_image_encoder, CPU, torch.float32)
    enc = frozen.image_encoder.config
    adapter = IPAdapter.initialise(
        frozen.unet, variant, encoder_projection_dim=enc.projection_dim, encoder_hidden_size=enc.hidden_size
    )
    layers = cross_attention_layers(frozen.unet)
    assert len(layers) == len(adapter.to_k_ip) == 16
    for (_, attn), k, v in zip(layers, adapter.to_k_ip, adapter.to_v_ip, strict=True):
        assert torch.equal(k.weight, attn.to_k.weight)
        assert torch.equal(v.weight, attn.to_v.weight)
        assert k.weight.data_ptr() != attn.to_k.weight.data_ptr()  # a copy, not the UNet's own tensor

    features = (
        torch.randn(2, enc.projection_dim) if variant == "global" else torch.randn(2, 17, enc.hidden_size)
    )
    assert adapter.project(features).shape == (2, tokens, frozen.unet.config.cross_attention_dim)

    path = adapter.save(tmp_path / f"fresh-{variant}.safetensors")
    ckpt = read_checkpoint(path)
    assert ckpt.variant == variant
    reloaded = IPAdapter(ckpt)
    for key, value in adapter.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


# ---------------------------------------------------------------------------------------- the run


def test_training_lowers_the_loss(trained):
    before, after = trained["loss_before"], trained["loss_after"]
    assert after < 0.98 * before, f"{trained['variant']}: loss {before:.4f} -> {after:.4f}"
    log = [
        json.loads(line) for line in (trained["result"].output / "train_log.jsonl").read_text().splitlines()
    ]
    assert [entry["step"] for entry in log] == list(range(1, 41))
    assert all(math.isfinite(entry["loss"]) for entry in log)


def test_only_the_adapter_changes(trained):
    frozen = trained["trainer"].frozen
    for name, module in frozen.modules().items():
        after = module.state_dict()
        for key, value in trained["frozen_before"][name].items():
            assert torch.equal(after[key], value), f"frozen {name}.{key} changed"
        assert not any(p.requires_grad for p in module.parameters()), name
    changed = [
        key
        for key, value in trained["trainer"].adapter.state_dict().items()
        if not torch.equal(value, trained["adapter_before"][key])
    ]
    # Every trained tensor moves (the LayerNorms and biases of the projection included).
    assert len(changed) == len(trained["adapter_before"])


def test_outputs_of_a_run(trained):
    result = trained["result"]
    assert result.steps == 40
    assert [p.name for p in result.adapter_files] == ["ip-adapter.safetensors", "ip-adapter.bin"]
    assert result.skipped == [str(Path(trained["trainer"].config.data) / "broken.png")]
    assert (result.output / "skipped_images.txt").read_text().strip().endswith("broken.png")
    config = json.loads((result.output / "train_config.json").read_text())
    assert config["learning_rate"] == 1e-4 and config["weight_decay"] == 0.01
    assert config["drop"] == {"text": 0.05, "image": 0.05, "both": 0.05}
    assert [p.name for p in (result.output / "checkpoints").iterdir()] == ["step-0000040"]


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_trained_adapter_gives_the_same_image_in_our_engine_and_in_diffusers(
    trained, fmt, tiny_sd15, tiny_image_encoder
):
    path = trained["result"].output / f"ip-adapter.{fmt}"
    ckpt = read_checkpoint(path)
    assert ckpt.variant == trained["variant"]
    for key, value in trained["trainer"].adapter.state_dict().items():
        assert torch.equal(IPAdapter(ckpt).state_dict()[key], value), key

    reference = make_reference_image(7, (70, 50))
    request = GenerationRequest(
        models=ModelSpec(tiny_sd15, path, tiny_image_encoder),
        references=(Reference(reference),),
        prompt="a picture with shapes",
        scale=0.8,
        steps=4,
        seed=99,
        width=64,
        height=64,
    )
    ours = Engine(device="cpu", dtype=torch.float32).generate(request).latents
    pipe = diffusers_pipeline(StableDiffusionPipeline, tiny_sd15, tiny_image_encoder, path)
    pipe.set_ip_adapter_scale(0.8)
    with torch.no_grad():
        theirs = pipe(
            prompt="a picture with shapes",
            ip_adapter_image=reference,
            num_inference_steps=4,
            guidance_scale=7.5,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(99),
            output_type="latent",
        ).images
    assert (ours - theirs).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------ drops


def test_drop_rates_are_honoured_over_many_samples():
    n = 40_000
    rates = DropRates(text=0.05, image=0.05, both=0.05)
    drop_text, drop_image = sample_drops(n, rates, torch.Generator().manual_seed(0))
    cases = {
        "text only": (drop_text & ~drop_image).float().mean().item(),
        "image only": (drop_image & ~drop_text).float().mean().item(),
        "both": (drop_text & drop_image).float().mean().item(),
    }
    sigma = math.sqrt(0.05 * 0.95 / n)
    for case, rate in cases.items():
        assert abs(rate - 0.05) < 4.5 * sigma, f"{case}: {rate:.4f}"
    assert abs((~drop_text & ~drop_image).float().mean().item() - 0.85) < 4.5 * math.sqrt(0.85 * 0.15 / n)

    # Other rates are honoured too, not just the default.
    t, i = sample_drops(n, DropRates(text=0.2, image=0.0, both=0.1), torch.Generator().manual_seed(1))
    assert abs((t & ~i).float().mean().item() - 0.2) < 0.01
    assert not (i & ~t).any()


@pytest.mark.parametrize("hidden", [False, True], ids=["global: zero embedding", "plus: zero image"])
def test_dropped_conditions_reach_the_model_as_the_unconditional_branch(
    hidden, tiny_sd15, tiny_image_encoder
):
    frozen = FrozenModels.load(tiny_sd15, tiny_image_encoder, CPU, torch.float32)
    n = 600
    pictures = [make_reference_image(s, (40, 40)) for s in range(6)]
    clip = frozen.clip_processor(images=pictures, return_tensors="pt").pixel_values.repeat(n // 6, 1, 1, 1)
    captions = [f"caption {i}" for i in range(n)]
    drop_text, drop_image = sample_drops(n, DropRates(), torch.Generator().manual_seed(3))
    cond = encode_conditioning(frozen, captions, clip, drop_text, drop_image, hidden_states=hidden)
    none = torch.zeros(n, dtype=torch.bool)
    plain = encode_conditioning(frozen, captions, clip, none, none, hidden_states=hidden)
    empty = encode_conditioning(frozen, [""], clip[:1], none[:1], none[:1], hidden_states=hidden).text_embeds
    if hidden:
        zero = frozen.image_encoder(torch.zeros_like(clip[:1]), output_hidden_states=True).hidden_states[-2]
    else:
        zero = torch.zeros_like(plain.image_features[:1])

    for j in range(n):
        text_dropped = torch.equal(cond.text_embeds[j], empty[0])
        image_dropped = torch.allclose(cond.image_features[j], zero[0], atol=1e-6)
        assert text_dropped == bool(drop_text[j]) and image_dropped == bool(drop_image[j]), j
        assert cond.captions[j] == ("" if drop_text[j] else captions[j])
        if not drop_image[j]:
            assert torch.equal(cond.image_features[j], plain.image_features[j])
    assert 0.05 < drop_image.float().mean().item() < 0.16  # 0.10 expected: image only + both


def test_training_loss_feeds_the_drops_to_the_model(tiny_sd15, tiny_image_encoder):
    frozen = FrozenModels.load(tiny_sd15, tiny_image_encoder, CPU, torch.float32)
    seen = {}

    def spy(noisy, timesteps, text, features):
        seen.update(text=text, features=features)
        return torch.zeros_like(noisy, requires_grad=True)

    pictures = [make_reference_image(s, (64, 64)) for s in range(2)]
    from ipa_studio.core.train.data import to_model_pixels

    batch = {
        "pixels": torch.stack([to_model_pixels(p) for p in pictures]),
        "clip_pixels": frozen.clip_processor(images=pictures, return_tensors="pt").pixel_values,
        "captions": ["one", "two"],
    }
    training_loss(spy, frozen, batch, DropRates(0.0, 1.0, 0.0), torch.Generator(), hidden_states=False)
    assert torch.count_nonzero(seen["features"]) == 0
    image_only_text = seen["text"]
    training_loss(spy, frozen, batch, DropRates(1.0, 0.0, 0.0), torch.Generator(), hidden_states=False)
    assert torch.count_nonzero(seen["features"]) > 0
    assert torch.equal(seen["text"][0], seen["text"][1])  # both empty captions
    assert not torch.equal(image_only_text[0], image_only_text[1])


# -------------------------------------------------------------------------- checkpointing, resume


def test_gradient_checkpointing_gives_the_same_gradients(tiny_sd15, tiny_image_encoder):
    frozen = FrozenModels.load(tiny_sd15, tiny_image_encoder, CPU, torch.float32)
    enc = frozen.image_encoder.config
    adapter = IPAdapter.initialise(
        frozen.unet, "global", encoder_projection_dim=enc.projection_dim, encoder_hidden_size=enc.hidden_size
    )
    installed = install_for_training(
        adapter, frozen.unet, encoder_projection_dim=enc.projection_dim, encoder_hidden_size=enc.hidden_size
    )
    from ipa_studio.core.train import AdapterTrainingModel

    model = AdapterTrainingModel(installed)
    torch.manual_seed(0)
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([10, 700]), torch.randn(2, 77, 32), torch.randn(2, 24))

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        if checkpointing:
            frozen.unet.enable_gradient_checkpointing()
        else:
            frozen.unet.disable_gradient_checkpointing()
        adapter.zero_grad(set_to_none=True)
        model(*inputs).pow(2).mean().backward()
        return [p.grad.clone() for p in adapter.parameters()]

    plain, checkpointed = grads(False), grads(True)
    assert all(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_resumed_run_continues_exactly(dataset, tiny_sd15, tiny_image_encoder, tmp_path):
    # batch 2 of 8 images: 4 batches an epoch, so the resumed half starts mid-epoch and crosses one.
    common = dict(batch_size=2, learning_rate=1e-3)
    straight = Trainer(
        _config(dataset, tiny_sd15, tiny_image_encoder, tmp_path / "straight", max_steps=6, **common)
    )
    straight.run()

    first = Trainer(
        _config(dataset, tiny_sd15, tiny_image_encoder, tmp_path / "split", max_steps=3, **common)
    )
    first.run()
    saved_optimizer = first.optimizer.state_dict()
    second = Trainer(
        _config(
            dataset, tiny_sd15, tiny_image_encoder, tmp_path / "split", max_steps=6, resume="latest", **common
        )
    )
    assert second.state.step == 3 and second.state.batches == 3
    loaded = second.optimizer.state_dict()
    assert loaded["param_groups"] == saved_optimizer["param_groups"]
    assert loaded["state"].keys() == saved_optimizer["state"].keys()
    for index, entry in saved_optimizer["state"].items():
        for key, value in entry.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    second.run()

    for key, value in straight.adapter.state_dict().items():
        assert torch.equal(second.adapter.state_dict()[key], value), key
    log = [json.loads(x)["step"] for x in (tmp_path / "split" / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]


def test_resume_from_a_folder_that_is_not_a_checkpoint_is_refused(
    dataset, tiny_sd15, tiny_image_encoder, tmp_path
):
    from ipa_studio.core.train import TrainingError

    with pytest.raises(TrainingError, match="not a training checkpoint"):
        Trainer(_config(dataset, tiny_sd15, tiny_image_encoder, tmp_path / "o", max_steps=1, resume=tmp_path))


# ------------------------------------------------------------------------------------ many devices

_DDP_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from ipa_studio.core.train import TrainConfig, Trainer
data, sd15, encoder, out = map(Path, sys.argv[1:5])
trainer = Trainer(TrainConfig(data=data, base_model=sd15, image_encoder=encoder, output=out, resolution=64,
                              batch_size=2, max_steps=3, device="cpu", progress=False, learning_rate=1e-3))
trainer.run()
rank = trainer.accelerator.process_index
torch.save({k: v.clone() for k, v in trainer.adapter.state_dict().items()}, out / f"rank{rank}.pt")
print("world", trainer.accelerator.num_processes, trainer.accelerator.distributed_type)
"""


@pytest.mark.skipif(
    os.environ.get("IPA_TEST_MULTIPROCESS") != "1",
    reason="starts two Python processes (~20 s on a busy 2-core machine); run with IPA_TEST_MULTIPROCESS=1",
)
def test_two_processes_train_one_adapter(dataset, tiny_sd15, tiny_image_encoder, tmp_path):
    """Data-parallel on two CPU processes (gloo): the frozen UNet lives outside the module DDP wraps,
    so this proves the gradients of the adapter are still averaged across processes."""
    script = tmp_path / "ddp_train.py"
    script.write_text(_DDP_SCRIPT, encoding="utf-8")
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
        ]
        + [str(dataset), str(tiny_sd15), str(tiny_image_encoder), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "world 2 DistributedType.MULTI_CPU" in result.stdout
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    saved = IPAdapter(read_checkpoint(out / "ip-adapter.safetensors")).state_dict()
    for key, value in rank0.items():
        assert torch.equal(rank1[key], value), key  # one model, although each rank saw other images
        assert torch.equal(saved[key], value), key
