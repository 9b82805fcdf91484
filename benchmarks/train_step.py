"""Training-step throughput of the paper's recipe on full-size SD1.5 + CLIP ViT-H/14 (random weights).

One step is exactly what ``ipa-studio train`` runs per batch: VAE encode, text and image encoders
(frozen, no grad), the adapter's projection, UNet forward and backward through the decoupled attention,
and an AdamW update of the ~22M adapter parameters. Input tensors are synthetic, so data loading and
JPEG decoding are not included. Each configuration gets warm-up steps first; the timed steps then
alternate between configurations.

    python benchmarks/train_step.py          # CPU, fp32, batch 1, 256 px, checkpointing off and on
    python benchmarks/train_step.py --device cuda --size 512 --precision bf16 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ipa_studio.core.adapter import IPAdapter  # noqa: E402
from ipa_studio.core.train import (  # noqa: E402
    AdapterTrainingModel,
    DropRates,
    FrozenModels,
    install_for_training,
    micro_batch_generator,
    training_loss,
)

RES = ROOT / "ipa_studio" / "resources"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((RES / name).read_text()).items() if not k.startswith("_")}


def build_frozen(device: torch.device, dtype: torch.dtype) -> FrozenModels:
    """Full-size SD1.5 components and the ViT-H/14 image encoder from the bundled configs."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_config("sd15/unet_config.json"))
    vae = AutoencoderKL(**_config("sd15/vae_config.json"))
    text = CLIPTextModel(CLIPTextConfig(**_config("sd15/text_encoder_config.json")))
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**_config("image_encoder/vit_h_14_config.json")))
    for module in (unet, vae, text, encoder):
        module.to(device).eval().requires_grad_(False)
        if dtype != torch.float32:
            module.to(dtype)
    size = encoder.config.image_size
    return FrozenModels(
        unet=unet,
        vae=vae,
        text_encoder=text,
        tokenizer=CLIPTokenizer.from_pretrained(RES / "tokenizer"),
        image_encoder=encoder,
        clip_processor=CLIPImageProcessor(size=size, crop_size=size),
        noise_scheduler=DDPMScheduler.from_config(_config("sd15/scheduler_config.json")),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--size", type=int, default=256, help="training resolution in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--variant", choices=("global", "plus"), default="global")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration")
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = PRECISIONS[args.precision]

    t0 = time.perf_counter()
    frozen = build_frozen(device, dtype)
    enc = frozen.image_encoder.config
    adapter = IPAdapter.initialise(
        frozen.unet,
        args.variant,
        encoder_projection_dim=enc.projection_dim,
        encoder_hidden_size=enc.hidden_size,
    )
    installed = install_for_training(
        adapter, frozen.unet, encoder_projection_dim=enc.projection_dim, encoder_hidden_size=enc.hidden_size
    )
    model = AdapterTrainingModel(installed)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-4, weight_decay=0.01)
    trainable = sum(p.numel() for p in adapter.parameters())
    print(
        f"built full-size SD1.5 + ViT-H/14 ({args.variant} adapter, {trainable / 1e6:.1f}M trainable) "
        f"in {time.perf_counter() - t0:.0f} s; device {device}, {args.precision}, "
        f"{torch.get_num_threads()} threads, batch {args.batch}, {args.size} px; load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )

    gen = torch.Generator().manual_seed(0)
    batch = {
        "pixels": torch.rand(args.batch, 3, args.size, args.size, generator=gen) * 2 - 1,
        "clip_pixels": torch.randn(args.batch, 3, enc.image_size, enc.image_size, generator=gen),
        "captions": ["a photograph of a lighthouse on a cliff at sunset"] * args.batch,
    }
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(index: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            loss = training_loss(
                model,
                frozen,
                batch,
                DropRates(),
                micro_batch_generator(0, 0, index),
                hidden_states=adapter.uses_hidden_states,
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    modes = ["off", "on"] if args.checkpointing == "both" else [args.checkpointing]

    def use(mode: str) -> None:
        if mode == "on":
            frozen.unet.enable_gradient_checkpointing()
        else:
            frozen.unet.disable_gradient_checkpointing()

    index = 0
    for mode in modes:
        use(mode)
        for _ in range(args.warmup):
            step(index)
            index += 1
    # Round-robin, so a slow spell of a shared machine hits every configuration alike.
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    peak_gpu: dict[str, float] = {}
    for _ in range(args.steps):
        for mode in modes:
            use(mode)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[mode].append(step(index))
            index += 1
            if device.type == "cuda":
                peak_gpu[mode] = max(peak_gpu.get(mode, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    for mode in modes:
        median = statistics.median(times[mode])
        extra = f", peak GPU memory {peak_gpu[mode]:.1f} GiB" if mode in peak_gpu else ""
        print(
            f"gradient checkpointing {mode:3s}: {median:7.2f} s/step  {1 / median:.4f} steps/s  "
            f"{args.batch / median:.3f} images/s  (median of {args.steps}: "
            f"{', '.join(f'{t:.2f}' for t in times[mode])}){extra}",
            flush=True,
        )
    print(f"load average after the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak process memory (RSS) {peak:.1f} GiB")


if __name__ == "__main__":
    main()
