"""LoRA costs on full-size SD1.5 (random weights; CPU, fp32): what changing LoRAs costs, and what a
merged LoRA costs per step against diffusers' PEFT LoRA layers.

Prints, measured in this one run:
  * reading a kohya LoCon-layout LoRA file (rank ``--rank``, every layer kohya trains) and applying
    it, changing its strength, and taking it off (seconds; the base model is never reloaded);
  * the memory the kept original weights take while it is applied;
  * UNet step with our merged LoRA / plain UNet step (interleaved repeats; target ≈ 1.0: a merged
    LoRA costs nothing per step), and our step / diffusers' step with the same LoRA loaded by
    ``load_lora_adapter`` (PEFT layers run beside the base layers, so diffusers pays per step).

    python benchmarks/lora_apply.py --size 256 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ipa_studio.core.lora import AppliedLora, LoraPatcher, read_lora  # noqa: E402
from ipa_studio.core.models.loader import single_file_configs  # noqa: E402
from tests.fixtures.real_layouts import kohya_locon, kohya_lora  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256, help="picture side for the step timings")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = single_file_configs()
    unet = UNet2DConditionModel(**{k: v for k, v in configs["unet"].items() if not k.startswith("_")}).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval()
    torch.manual_seed(0)
    state = {**kohya_locon(unet, rank=args.rank), **kohya_lora(unet, text_encoder, rank=args.rank)}
    folder = Path(tempfile.mkdtemp())
    path = folder / "locon.safetensors"
    from safetensors.torch import save_file

    save_file(state, path)
    print(f"LoRA file: {path.stat().st_size / 2**20:.0f} MiB, {len(state) // 3} layers, rank {args.rank}")

    t = time.perf_counter()
    weights = read_lora(path)
    read_s = time.perf_counter() - t
    patcher = LoraPatcher(unet, text_encoder)
    t = time.perf_counter()
    patcher.apply([AppliedLora(weights, 1.0, 1.0)])
    apply_s = time.perf_counter() - t
    kept = sum(original.numel() * original.element_size() for _, original in patcher._originals.values())
    t = time.perf_counter()
    patcher.apply([AppliedLora(weights, 0.5, 0.8)])
    change_s = time.perf_counter() - t
    t = time.perf_counter()
    patcher.apply([])
    remove_s = time.perf_counter() - t
    print(f"read {read_s:.2f} s, apply {apply_s:.2f} s, change strength {change_s:.2f} s, ", end="")
    print(f"remove {remove_s:.3f} s")
    print(f"kept original weights while applied: {kept / 2**20:.0f} MiB")

    latent = args.size // 8
    sample = torch.randn(2, 4, latent, latent)
    text = torch.randn(2, 77, 768)
    step = lambda: unet(sample, 500, encoder_hidden_states=text).sample  # noqa: E731

    def timed() -> float:
        t = time.perf_counter()
        step()
        return time.perf_counter() - t

    step()  # warm up
    plain, merged = [], []
    for _ in range(args.repeats):
        plain.append(timed())
        patcher.apply([AppliedLora(weights, 1.0, 1.0)])
        merged.append(timed())
        patcher.apply([])
    # diffusers' own LoRA layers on the same UNet (PEFT, unmerged, as load_lora_weights leaves them).
    from diffusers import StableDiffusionPipeline

    converted, alphas = StableDiffusionPipeline.lora_state_dict({k: v for k, v in state.items()})
    unet.load_lora_adapter(converted, prefix="unet", network_alphas=alphas, adapter_name="bench")
    peft = [timed() for _ in range(args.repeats)]
    ratio_plain = statistics.median(m / p for m, p in zip(merged, plain, strict=True))
    print(f"step at {args.size}²: plain {statistics.median(plain):.2f} s, ", end="")
    print(f"merged LoRA {statistics.median(merged):.2f} s,")
    print(f"  diffusers PEFT LoRA {statistics.median(peft):.2f} s")
    print(f"merged / plain step: {ratio_plain:.3f}")
    print(f"ours / diffusers step with the LoRA: {statistics.median(merged) / statistics.median(peft):.3f}")


if __name__ == "__main__":
    main()
