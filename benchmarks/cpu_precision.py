"""CPU number formats and memory layouts, measured side by side on full-size SD1.5 parts.

Random-weight UNet (one call on a batch of 1 at 512², as the Fast preset runs without guidance), VAE
decoder (one 512² picture) and ViT-H/14 image encoder (one 224² square), each in:
  fp32, fp32 + channels_last, bf16, bf16 + channels_last
and, for the UNet, bf16 with 1 thread against all threads. Rounds are interleaved (every variant once
per round, in a shuffled order) so that a noisy machine slows all of them alike; the figures printed
are medians and each variant's ratio to fp32 in the same rounds.

    python benchmarks/cpu_precision.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ipa_studio.core.devices import cpu_has_native_bf16  # noqa: E402

RES = ROOT / "ipa_studio" / "resources"


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((RES / name).read_text()).items() if not k.startswith("_")}


def _timed(fn) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--parts", default="unet,vae,encoder")
    args = p.parse_args()

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}"
    )
    parts = args.parts.split(",")
    side = args.size // 8
    models: dict[str, torch.nn.Module] = {}
    if "unet" in parts:
        models["unet"] = UNet2DConditionModel(**_config("sd15/unet_config.json")).eval()
    if "vae" in parts:
        models["vae"] = AutoencoderKL(**_config("sd15/vae_config.json")).eval()
    if "encoder" in parts:
        models["encoder"] = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**_config("image_encoder/vit_h_14_config.json"))
        ).eval()

    variants = [
        ("fp32", torch.float32, False),
        ("fp32+cl", torch.float32, True),
        ("bf16", torch.bfloat16, False),
        ("bf16+cl", torch.bfloat16, True),
    ]
    threads = torch.get_num_threads()

    def run(part: str, dtype: torch.dtype, channels_last: bool):
        model = models[part].to(dtype=dtype)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if part != "encoder":
            model.to(memory_format=fmt)
        if part == "unet":
            x = torch.randn(1, 4, side, side, dtype=dtype).to(memory_format=fmt)
            text = torch.randn(1, 77, 768, dtype=dtype)
            return lambda: model(x, 500, encoder_hidden_states=text)
        if part == "vae":
            z = torch.randn(1, 4, side, side, dtype=dtype).to(memory_format=fmt)
            return lambda: model.decode(z)
        pixels = torch.randn(1, 3, 224, 224, dtype=dtype)
        return lambda: model(pixels)

    for part in models:
        names = [v[0] for v in variants] + (["bf16 1 thread"] if part == "unet" else [])
        times: dict[str, list[float]] = {n: [] for n in names}
        for _n, dtype, cl in variants:  # warm-up: first calls pay for allocation and kernel choice
            _timed(run(part, dtype, cl))
        for _ in range(args.repeats):
            order = list(names)
            random.shuffle(order)
            for n in order:
                if n == "bf16 1 thread":
                    fn = run(part, torch.bfloat16, False)
                    torch.set_num_threads(1)
                    try:
                        times[n].append(_timed(fn))
                    finally:
                        torch.set_num_threads(threads)
                    continue
                _, dtype, cl = next(v for v in variants if v[0] == n)
                times[n].append(_timed(run(part, dtype, cl)))
        base = times["fp32"]
        print(f"\n{part}:")
        for n in names:
            ratios = [t / b for t, b in zip(times[n], base, strict=True)]
            median = statistics.median(times[n])
            print(f"  {n:14s} {median:7.3f} s   ratio to fp32 {statistics.median(ratios):.3f}")
        models[part].to(dtype=torch.float32, memory_format=torch.contiguous_format)


if __name__ == "__main__":
    main()
