"""The paper's training recipe (§3.2.3, §4.1.2) on the same adapter modules the engine runs.

Frozen: UNet, VAE, text encoder, image encoder. Trained: the image projection and W'k, W'v of every
cross-attention layer. Objective: the SD noise-prediction MSE. Classifier-free guidance is learnt by
dropping the text (p=0.05), the image (p=0.05) or both (p=0.05); a dropped image is a zero image
embedding (global variant) or the encoder's features of a zero image (plus / full), which is exactly
the unconditional branch the engine and diffusers use at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ipa_studio.core.adapter import InstalledAdapter, IPAdapter, install_adapter
from ipa_studio.core.errors import IPAStudioError


class TrainingError(IPAStudioError):
    """A training run cannot start or continue (bad settings, a checkpoint that does not fit)."""


@dataclass(frozen=True)
class DropRates:
    """Per-sample probabilities of the three exclusive drop cases (paper §4.1.2: 0.05 each)."""

    text: float = 0.05
    image: float = 0.05
    both: float = 0.05

    def __post_init__(self) -> None:
        values = (self.text, self.image, self.both)
        if any(not 0.0 <= v <= 1.0 for v in values) or sum(values) > 1.0:
            raise TrainingError("Drop rates must each be between 0 and 1 and add up to at most 1.")


def sample_drops(
    batch_size: int, rates: DropRates, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_text, drop_image) booleans per sample.

    One uniform draw per sample, split as the official training script splits it: [0, image) drops
    the image only, the next ``text`` the text only, the next ``both`` both. The cases are exclusive,
    so each happens with its own rate and the image goes missing with p = image + both.
    """
    r = torch.rand(batch_size, generator=generator)
    image_only = r < rates.image
    text_only = (r >= rates.image) & (r < rates.image + rates.text)
    both = (r >= rates.image + rates.text) & (r < rates.image + rates.text + rates.both)
    return text_only | both, image_only | both


def micro_batch_generator(seed: int, rank: int, batch_index: int) -> torch.Generator:
    """The random stream of one micro-batch (drops, VAE sample, noise, timesteps).

    A pure function of (seed, process, batch number): resuming from a checkpoint needs no RNG state,
    and every process draws different noise.
    """
    state = np.random.SeedSequence([seed, rank, batch_index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def install_for_training(
    adapter: IPAdapter, unet: nn.Module, *, encoder_projection_dim: int, encoder_hidden_size: int
) -> InstalledAdapter:
    """Install ``adapter`` on ``unet`` (λ = 1, as trained), its weights kept in float32.

    The decoupled processors recompute K'/V' on every call while autograd is on, which is what
    training and gradient checkpointing need.
    """
    installed = install_adapter(
        adapter,
        unet,
        encoder_projection_dim=encoder_projection_dim,
        encoder_hidden_size=encoder_hidden_size,
    )
    # install_adapter gives the adapter the UNet's dtype; trained weights stay float32 under mixed
    # precision (autocast computes in half, the optimizer updates full-precision weights).
    adapter.float()
    return installed


class AdapterTrainingModel(nn.Module):
    """What the optimizer, DDP and DeepSpeed see: the adapter, driving the frozen UNet.

    The UNet is held outside the module tree on purpose: ``state_dict()`` and every checkpoint then
    hold only the adapter's parameters, DDP does not broadcast 860M frozen weights at start-up, and
    DeepSpeed neither casts nor partitions them.
    """

    def __init__(self, installed: InstalledAdapter) -> None:
        super().__init__()
        self.adapter = installed.adapter
        self._frozen = (installed.unet, installed.context)

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeds: torch.Tensor,
        image_features: torch.Tensor,
    ) -> torch.Tensor:
        unet, context = self._frozen
        # New tokens every batch: set_tokens also bumps the version the processors key K'/V' on.
        context.set_tokens(self.adapter.project(image_features))
        return unet(noisy_latents, timesteps, encoder_hidden_states=text_embeds, return_dict=False)[0]


@dataclass
class FrozenModels:
    """The models the recipe keeps fixed, and the DDPM noise schedule of SD1.5's own training."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    image_encoder: Any
    clip_processor: Any
    noise_scheduler: Any

    @classmethod
    def load(
        cls, base_model: str | Path, image_encoder: str | Path, device: torch.device, dtype: torch.dtype
    ) -> FrozenModels:
        from diffusers import DDPMScheduler

        from ipa_studio.core.models.loader import load_base_model, load_image_encoder

        base = load_base_model(base_model, device, dtype)
        encoder, processor = load_image_encoder(image_encoder, device, dtype)
        # The base model's own scheduler config (SD1.5: scaled_linear betas 0.00085–0.012 over 1000
        # steps, epsilon prediction) read as DDPM, as the official scripts and SD's training do.
        scheduler = DDPMScheduler.from_config(base.scheduler_config)
        return cls(base.unet, base.vae, base.text_encoder, base.tokenizer, encoder, processor, scheduler)

    def modules(self) -> dict[str, nn.Module]:
        return {
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "image_encoder": self.image_encoder,
        }

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype


@dataclass
class Conditioning:
    text_embeds: torch.Tensor
    image_features: torch.Tensor
    captions: list[str]
    """Captions as the text encoder saw them (dropped ones empty)."""
    drop_text: torch.Tensor
    drop_image: torch.Tensor


@torch.no_grad()
def encode_conditioning(
    frozen: FrozenModels,
    captions: list[str],
    clip_pixels: torch.Tensor,
    drop_text: torch.Tensor,
    drop_image: torch.Tensor,
    *,
    hidden_states: bool,
) -> Conditioning:
    """Text embeddings and image features of a batch, with the drops applied (frozen encoders)."""
    device, dtype = frozen.device, frozen.dtype
    used = ["" if drop else caption for caption, drop in zip(captions, drop_text.tolist(), strict=True)]
    tok = frozen.tokenizer
    ids = tok(
        used, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    text = frozen.text_encoder(ids.to(device))[0].to(dtype)
    pixels = clip_pixels.to(device, dtype)
    dropped = drop_image.to(device)
    if hidden_states:
        # plus / full: the unconditional features are those of an all-zero (normalised) image.
        pixels = torch.where(dropped[:, None, None, None], torch.zeros_like(pixels), pixels)
        features = frozen.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
    else:
        features = frozen.image_encoder(pixels).image_embeds
        features = torch.where(dropped[:, None], torch.zeros_like(features), features)
    return Conditioning(text, features, used, drop_text, drop_image)


def training_loss(
    model: nn.Module,
    frozen: FrozenModels,
    batch: dict[str, Any],
    rates: DropRates,
    generator: torch.Generator,
    *,
    hidden_states: bool,
) -> torch.Tensor:
    """Eq. 6: ‖ε − ε_θ(x_t, c_t, c_i, t)‖² for one micro-batch, averaged over every element."""
    from diffusers.utils.torch_utils import randn_tensor

    device, dtype = frozen.device, frozen.dtype
    pixels = batch["pixels"].to(device, dtype)
    size = pixels.shape[0]
    drop_text, drop_image = sample_drops(size, rates, generator)
    scheduler = frozen.noise_scheduler
    with torch.no_grad():
        vae = frozen.vae
        latents = vae.encode(pixels).latent_dist.sample(generator) * vae.config.scaling_factor
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        steps = scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (size,), generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
    cond = encode_conditioning(
        frozen, batch["captions"], batch["clip_pixels"], drop_text, drop_image, hidden_states=hidden_states
    )
    prediction = model(noisy, timesteps, cond.text_embeds, cond.image_features)
    return F.mse_loss(prediction.float(), target.float(), reduction="mean")
