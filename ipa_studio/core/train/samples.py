"""Sample previews during training: the held-out references, generated with the adapter as it is.

The per-step loss is dominated by the random timestep and noise draw and barely moves while the
adapter improves; pictures made from the same references with the same seeds at every preview show
what the loss hides. The settings are those of the paper's evaluation (§4.2): an empty text prompt,
λ = 1, classifier-free guidance over the image prompt, DDIM. Every random draw comes from a
generator seeded by the run's seed and the reference's index, so the previews use none of the
training's random numbers and a resumed run draws the same ones.

Layout under the run folder::

    samples/references/ref-00.png       the held-out references, cropped as the VAE sees them
    samples/step-0000100/sample-00.png  one picture per reference at that step
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch

from ipa_studio.core.adapter import InstalledAdapter
from ipa_studio.core.images import load_image, save_png

from .data import CaptionedImage, resize_center_crop
from .recipe import FrozenModels

SAMPLE_NAME = "sample-{:02d}.png"


def step_folder(samples: Path, step: int) -> Path:
    return samples / f"step-{step:07d}"


class SampleMaker:
    """Encodes the references once; ``make(step)`` writes one picture per reference."""

    def __init__(
        self,
        frozen: FrozenModels,
        installed: InstalledAdapter,
        references: list[CaptionedImage],
        folder: Path,
        *,
        seed: int,
        steps: int = 20,
        guidance: float = 7.5,
        resolution: int = 512,
        autocast: Callable[[], AbstractContextManager[Any]] | None = None,
    ) -> None:
        from diffusers import DDIMScheduler

        self.frozen, self.installed = frozen, installed
        self.folder = Path(folder)
        self.seed, self.steps, self.guidance, self.resolution = seed, steps, guidance, resolution
        self.autocast = autocast
        self.scheduler = DDIMScheduler.from_config(frozen.noise_scheduler.config)
        hidden = installed.adapter.uses_hidden_states
        images = [load_image(item.path, what="sample reference") for item in references]
        crops = self.folder / "references"
        self.references = [
            save_png(resize_center_crop(image, resolution), crops / f"ref-{i:02d}.png", {})
            for i, image in enumerate(images)
        ]
        device, dtype = frozen.device, frozen.dtype
        with torch.no_grad():
            pixels = frozen.clip_processor(images=images, return_tensors="pt").pixel_values.to(device, dtype)
            encoder = frozen.image_encoder
            if hidden:
                self.features = encoder(pixels, output_hidden_states=True).hidden_states[-2]
                zero = encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]
                self.unconditional = zero.expand_as(self.features)
            else:
                self.features = encoder(pixels).image_embeds
                self.unconditional = torch.zeros_like(self.features)
            tok = frozen.tokenizer
            ids = tok(
                [""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
            ).input_ids
            self.empty_text = frozen.text_encoder(ids.to(device))[0].to(dtype)

    @torch.no_grad()
    def make(self, step: int) -> list[Path]:
        frozen, adapter = self.frozen, self.installed.adapter
        vae, unet = frozen.vae, frozen.unet
        device, dtype = frozen.device, frozen.dtype
        scale = 2 ** (len(vae.config.block_out_channels) - 1)
        side = self.resolution // scale
        out_dir = step_folder(self.folder, step)
        paths = []
        context = self.autocast() if self.autocast is not None else torch.autocast(device.type, enabled=False)
        with context:
            for i in range(self.features.shape[0]):
                generator = torch.Generator().manual_seed(self.seed * 1000 + i)
                latents = torch.randn((1, unet.config.in_channels, side, side), generator=generator)
                latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
                tokens = adapter.project(torch.cat([self.unconditional[i : i + 1], self.features[i : i + 1]]))
                self.installed.context.set_tokens(tokens.to(dtype))
                text = self.empty_text.expand(2, -1, -1)
                self.scheduler.set_timesteps(self.steps, device=device)
                for t in self.scheduler.timesteps:
                    model_in = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
                    noise = unet(model_in, t, encoder_hidden_states=text, return_dict=False)[0]
                    uncond, cond = noise.float().chunk(2)
                    guided = uncond + self.guidance * (cond - uncond)
                    latents = self.scheduler.step(guided.to(dtype), t, latents, return_dict=False)[0]
                decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
                image = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
                from PIL import Image

                picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
                paths.append(save_png(picture, out_dir / SAMPLE_NAME.format(i), {"step": str(step)}))
        self.installed.context.clear()
        return paths
