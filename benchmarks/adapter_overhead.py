"""Adapter overhead on full-size SD1.5 + ViT-H/14 architectures (random weights; CPU, fp32).

Prints, each from interleaved repeats measured in this one run (per-round ratios, then their median):
  * step time with our adapter / plain UNet step      (targets: ≤ 1.02 global, ≤ 1.03 plus)
  * our adapter step / diffusers' IP-Adapter step     (target: ≤ 1.0)
and the number of image-encoder calls in a second generation with the same reference (target 0).

A "step" is one UNet call on a CFG batch of 2, as in a real generation. To stay on the safe side,
our processors recompute the image keys/values every timed step, although a real generation
computes them once; diffusers' step includes its per-step image projection, which is how
diffusers runs it.

    python benchmarks/adapter_overhead.py --size 512 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ipa_studio.core.adapter import IPAdapter, install_adapter, read_checkpoint  # noqa: E402
from ipa_studio.core.adapter.checkpoint import save_checkpoint  # noqa: E402
from ipa_studio.core.adapter.projection import GlobalProjection, Resampler  # noqa: E402
from ipa_studio.core.engine import Engine, latents_to_preview  # noqa: E402
from ipa_studio.core.models.safe_load import load_weights  # noqa: E402
from ipa_studio.core.request import GenerationRequest, ModelSpec, Reference  # noqa: E402

RES = ROOT / "ipa_studio" / "resources"


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((RES / name).read_text()).items() if not k.startswith("_")}


def build_full_size(folder: Path) -> tuple[Path, Path, Path, Path]:
    """SD1.5 diffusers folder, ViT-H/14 encoder folder, global and plus adapters — random weights."""
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    base = folder / "sd15"
    unet = UNet2DConditionModel(**_config("sd15/unet_config.json"))
    unet.save_pretrained(base / "unet")
    AutoencoderKL(**_config("sd15/vae_config.json")).save_pretrained(base / "vae")
    CLIPTextModel(CLIPTextConfig(**_config("sd15/text_encoder_config.json"))).save_pretrained(
        base / "text_encoder"
    )
    shutil.copytree(RES / "tokenizer", base / "tokenizer")
    (base / "scheduler").mkdir()
    shutil.copy(RES / "sd15/scheduler_config.json", base / "scheduler" / "scheduler_config.json")
    encoder = folder / "image_encoder"
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(**_config("image_encoder/vit_h_14_config.json"))
    ).save_pretrained(encoder)

    widths = [
        unet.get_submodule(n[: -len(".processor")]).to_k.out_features
        for n in unet.attn_processors
        if n.endswith("attn2.processor")
    ]
    layers = [(torch.randn(w, 768) * 0.02, torch.randn(w, 768) * 0.02) for w in widths]
    global_path = save_checkpoint(
        folder / "ip-adapter_sd15.safetensors", GlobalProjection(1024, 768, 4).state_dict(), layers
    )
    resampler = Resampler(
        dim=768, depth=4, dim_head=64, heads=12, num_queries=16, embedding_dim=1280, output_dim=768
    )
    plus_path = save_checkpoint(folder / "ip-adapter-plus_sd15.safetensors", resampler.state_dict(), layers)
    return base, encoder, global_path, plus_path


def interleaved_times(configs: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run the configurations round-robin, in a fresh random order each round, so drifts in machine
    speed hit all of them alike; returns every configuration's per-round times."""
    rng = random.Random(0)
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(warmup + repeats):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            activate, step = configs[name]
            activate()
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                samples[name].append(elapsed)
    return samples


def ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a/b measured in the same round (robust to slow drifts)."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512, help="image size in pixels (latents are size/8)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.models.attention_processor import AttnProcessor2_0
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        base, encoder_dir, global_path, plus_path = build_full_size(Path(tmp))
        print(f"built full-size random models in {time.perf_counter() - t0:.0f} s", flush=True)

        # --- embedding cache: two generations with the same reference --------------------------
        engine = Engine(device="cpu", dtype=torch.float32)
        reference = Image.effect_mandelbrot((300, 240), (-2, -1.2, 1, 1.2), 60).convert("RGB")
        request = GenerationRequest(
            models=ModelSpec(base, global_path, encoder_dir),
            references=(Reference(reference),),
            steps=1,
            width=args.size,
            height=args.size,
        )
        engine.load(request)
        calls: list[int] = []
        engine._encoder.model.register_forward_hook(lambda *a: calls.append(1))
        engine.generate(request)
        first = len(calls)
        engine.generate(request.replace(seed=1, prompt="a different prompt"))
        second = len(calls) - first
        print(f"image-encoder calls: first generation {first}, second with the same reference {second}")

        # --- step timing -----------------------------------------------------------------------
        engine.load(request.replace(models=ModelSpec(base, None, encoder_dir), references=()))
        unet = engine.base.unet
        unet.set_attn_processor(AttnProcessor2_0())
        plain = dict(unet.attn_processors)
        latent = args.size // 8
        sample = torch.randn(2, 4, latent, latent)
        timestep = torch.tensor(500)
        text = torch.randn(2, 77, 768)
        embeds = {"global": torch.randn(2, 1, 1024), "plus": torch.randn(2, 1, 257, 1280)}
        enc_cfg = engine._encoder.model.config

        configs = {}

        def activate_plain() -> None:
            unet.encoder_hid_proj = None
            unet.set_attn_processor(dict(plain))

        def plain_step() -> None:
            with torch.no_grad():
                unet(sample, timestep, encoder_hidden_states=text, return_dict=False)

        configs["plain"] = (activate_plain, plain_step)

        for variant, path in (("global", global_path), ("plus", plus_path)):
            adapter = IPAdapter(read_checkpoint(path))
            features = embeds[variant][:, 0]
            installed = install_adapter(
                adapter,
                unet,
                encoder_projection_dim=enc_cfg.projection_dim,
                encoder_hidden_size=enc_cfg.hidden_size,
            )
            with torch.no_grad():
                installed.context.set_tokens(adapter.project(features))
            ours = dict(unet.attn_processors)
            installed.unet.set_attn_processor(dict(plain))

            def activate_ours(procs=ours) -> None:
                unet.encoder_hid_proj = None
                unet.set_attn_processor(dict(procs))  # diffusers empties the dict it is given

            def ours_step(ctx=installed.context) -> None:
                ctx.version += 1  # force K'/V' to be recomputed: the first-step cost, every step
                plain_step()

            configs[f"ours-{variant}"] = (activate_ours, ours_step)

            state = load_weights(path)
            official = {
                "image_proj": {k[11:]: v for k, v in state.items() if k.startswith("image_proj.")},
                "ip_adapter": {k[11:]: v for k, v in state.items() if k.startswith("ip_adapter.")},
            }
            unet.encoder_hid_proj = None
            unet._load_ip_adapter_weights([official])
            theirs = dict(unet.attn_processors)
            their_proj = unet.encoder_hid_proj
            activate_plain()

            def activate_theirs(procs=theirs, proj=their_proj) -> None:
                # The projection first: its own attention layers are among the processors.
                unet.encoder_hid_proj = proj
                unet.set_attn_processor(dict(procs))  # diffusers empties the dict it is given

            def theirs_step(e=embeds[variant]) -> None:
                with torch.no_grad():
                    unet(
                        sample,
                        timestep,
                        encoder_hidden_states=text,
                        added_cond_kwargs={"image_embeds": [e]},
                        return_dict=False,
                    )

            configs[f"diffusers-{variant}"] = (activate_theirs, theirs_step)

        print(
            f"timing {len(configs)} configurations x {args.repeats} repeats at {args.size}px "
            f"({torch.get_num_threads()} threads)...",
            flush=True,
        )
        samples = interleaved_times(configs, args.repeats)
        preview_latents = torch.randn(1, 4, latent, latent)
        preview_cost = (
            min(timeit.repeat(lambda: latents_to_preview(preview_latents), number=10, repeat=5)) / 10
        )

    print()
    for name, values in samples.items():
        print(f"  {name:18s} median step {statistics.median(values) * 1000:8.1f} ms")
    print("\nratios (median over rounds of the per-round ratio):")
    rows = [
        ("ours global / plain", ratio(samples, "ours-global", "plain"), "<= 1.02"),
        ("ours plus / plain", ratio(samples, "ours-plus", "plain"), "<= 1.03"),
        ("ours global / diffusers", ratio(samples, "ours-global", "diffusers-global"), "<= 1.0"),
        ("ours plus / diffusers", ratio(samples, "ours-plus", "diffusers-plus"), "<= 1.0"),
        ("live preview / plain step", preview_cost / statistics.median(samples["plain"]), "<= 0.01"),
    ]
    for label, value, target in rows:
        print(f"  {label:26s}: {value:.4f}  (target {target})")
    print(f"image-encoder calls, second run with the same reference: {second}  (target 0)")


if __name__ == "__main__":
    main()
