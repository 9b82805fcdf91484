"""Few-step LoRAs (LCM-LoRA, TCD, Hyper-SD, Lightning-style): recognising them, and their settings.

A few-step LoRA turns SD1.5 into a model that makes a picture in 1-8 steps, but only with the sampler
and the guidance it was distilled for. This module reads what a LoRA file says about itself and
proposes that "Fast" preset; it never changes a request by itself.

What a file can tell, in the order it is trusted:

1. Its training metadata (safetensors ``__metadata__``): kohya's ``ss_output_name`` /
   ``ss_training_comment``, and the ``modelspec.title`` / ``modelspec.description`` of the Stability
   model-spec that kohya and ComfyUI write.
2. Its file name, as published: ``lcm-lora-sdv1-5``, ``Hyper-SD15-4steps-lora``,
   ``Hyper-SD15-8steps-CFG-lora``, ``TCD-SD15`` / ``tcd_lora``, ``…lightning_4step…``.
3. Its layout. The published LCM-LoRA for SD1.5 (latent-consistency/lcm-lora-sdv1-5,
   ``pytorch_lora_weights.safetensors``, often kept under that name) was written by diffusers'
   ``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py``: PEFT LoRA keys turned into
   kohya names (``lora_unet_<diffusers module path with _>.lora_down.weight`` / ``.lora_up.weight`` /
   ``.alpha``), UNet only, on every linear and convolution of the UNet including ``time_emb_proj``,
   ``conv_shortcut`` and the down/up-samplers, rank 64, and no ``ss_*`` metadata (it is not a kohya
   training). A style LoRA from kohya carries ``ss_*`` metadata and rarely touches ``time_emb_proj``;
   so a file with exactly that layout is proposed as "probably an LCM-LoRA".

The settings, and why wrong ones "burn" (see README, "Fast generation"):

- LCM-LoRA: the LCM sampler, 4 steps (2-8), guidance 1 (up to 2). The LoRA was distilled from the
  teacher's classifier-free guidance at w = 5-15 (the training script's ``w_min`` / ``w_max``), so the
  guidance is already inside its predictions; guidance 7.5 on top multiplies it again, and with the
  IP-Adapter also multiplies the image prompt's pull (its conditional tokens against the zero-image
  unconditional ones): over-saturated, high-contrast, "burnt" pictures. DDIM or Euler at 4 steps with
  the LoRA give mush, because the LoRA predicts the consistency end point, not the DDPM noise.
- TCD: the TCD sampler (gamma 0.3), 4 steps, guidance 1.
- Hyper-SD 1.5: the steps its name says, guidance 1 (5 for the "CFG" LoRAs, which keep guidance);
  its card uses DDIM with "trailing" timesteps for 2-8 steps and TCD for its 1-step LoRA; IPA Studio
  has TCD, whose 4-step timesteps (999, 759, 499, 259) are close to trailing DDIM's.
- Lightning-style (distilled with adversarial loss, made for "trailing" Euler at guidance 1): TCD,
  the steps of its name, guidance 1.

With guidance at 1 or below the engine skips the unconditional half of the batch, which halves the
UNet's work per step; the image prompt then acts only through the conditional branch, at λ.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ipa_studio.core.request import GenerationRequest, SchedulerName

__all__ = ["FastPreset", "apply_preset", "article", "detect_fewstep", "fewstep_from"]

LCM_LORA_RANK = 64
"""The LCM distillation script's ``--lora_rank`` default, which the published LCM-LoRAs use."""

# The LCM distillation script's default ``lora_target_modules``; the last three are what a style
# LoRA seldom has.
_LCM_TARGETS = ("to_q", "to_k", "to_v", "to_out_0", "proj_in", "proj_out", "ff_net_0_proj", "ff_net_2")
_LCM_RESNET_TARGETS = ("time_emb_proj", "conv_shortcut", "samplers_0_conv")

_METADATA_FIELDS = (
    "modelspec.title",
    "modelspec.description",
    "modelspec.tags",
    "ss_output_name",
    "ss_training_comment",
)


@dataclass(frozen=True)
class FastPreset:
    """The settings a few-step LoRA needs ("Fast" preset), and what they rest on."""

    kind: str
    """"LCM", "TCD", "Hyper-SD" or "Lightning"."""
    scheduler: SchedulerName
    steps: int
    guidance: float
    evidence: str
    """Where the kind was read, in words: "its file name", "its training metadata (ss_output_name)"…"""
    certain: bool = True
    """False when only the layout points to it (the window says "probably")."""

    def describe(self) -> str:
        maybe = "" if self.certain else "probably "
        return (
            f"{maybe}{article(self.kind)} {self.kind} few-step LoRA (from {self.evidence}): "
            f"{self.scheduler.upper()} sampler, {self.steps} steps, guidance {self.guidance:g}"
        )


def article(word: str) -> str:
    """ "an" before a vowel sound as the kinds are spoken ("an LCM", "a TCD", "a Lightning")."""
    spelled = word.isupper() and len(word) <= 4  # an acronym read letter by letter: L = "el"
    vowel_sound = word[:1].upper() in ("AEIOU" + ("FHLMNRSX" if spelled else ""))
    return "an" if vowel_sound else "a"


def _steps_in(text: str, default: int) -> int:
    """ "Hyper-SD15-8steps-CFG", "lightning_4step", "2-step" → 8, 4, 2."""
    found = re.search(r"(\d{1,2})[\s_\-]?steps?(?![a-z])", text)
    if found and 1 <= int(found.group(1)) <= 16:
        return int(found.group(1))
    return default


def _preset_for_text(text: str, evidence: str) -> FastPreset | None:
    low = text.lower()
    squashed = re.sub(r"[\s_\-.]", "", low)
    if "hypersd" in squashed:
        cfg = re.search(r"(?<![a-z])cfg(?![a-z])", low) is not None
        steps = _steps_in(low, 8 if cfg else 4)
        return FastPreset("Hyper-SD", "tcd", steps, 5.0 if cfg else 1.0, evidence)
    if "tcd" in re.split(r"[^a-z0-9]+", low) or "trajectoryconsistency" in squashed:
        return FastPreset("TCD", "tcd", _steps_in(low, 4), 1.0, evidence)
    if "lcm" in re.split(r"[^a-z0-9]+", low) or "latentconsistency" in squashed or "lcmlora" in squashed:
        return FastPreset("LCM", "lcm", _steps_in(low, 4), 1.0, evidence)
    if "lightning" in squashed:
        return FastPreset("Lightning", "tcd", _steps_in(low, 4), 1.0, evidence)
    return None


def _lcm_layout(shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> bool:
    if any(k.startswith("ss_") for k in metadata):
        return False  # a kohya training, not the distillation script
    downs = {k[: -len(".lora_down.weight")]: s for k, s in shapes.items() if k.endswith(".lora_down.weight")}
    if not downs or not all(k.startswith("lora_unet_") for k in downs):
        return False  # text-encoder parts, or another key layout
    if not all(k.startswith("lora_unet_") for k in shapes):
        return False
    if {s[0] for s in downs.values()} != {LCM_LORA_RANK}:
        return False
    names = list(downs)
    # Diffusers module names (kohya's own SD1.5 names for LDM files are input_blocks_…).
    if not any(n.startswith(("lora_unet_down_blocks_", "lora_unet_up_blocks_")) for n in names):
        return False
    has = lambda target: any(n.endswith(target) for n in names)  # noqa: E731
    return all(has(t) for t in _LCM_TARGETS) and all(has(t) for t in _LCM_RESNET_TARGETS)


def fewstep_from(
    name: str, shapes: Mapping[str, tuple[int, ...]] | Iterable[str], metadata: Mapping[str, str] | None
) -> FastPreset | None:
    """The Fast preset for a LoRA with this file stem, these key shapes and this header metadata."""
    metadata = dict(metadata or {})
    for field in _METADATA_FIELDS:
        value = metadata.get(field)
        if isinstance(value, str) and value.strip():
            found = _preset_for_text(value, f"its training metadata ({field})")
            if found:
                return found
    found = _preset_for_text(name, "its file name")
    if found:
        return found
    if isinstance(shapes, Mapping) and _lcm_layout(shapes, metadata):
        return FastPreset("LCM", "lcm", 4, 1.0, "its layout, the published LCM-LoRA's", certain=False)
    return None


def detect_fewstep(path: str | Path) -> FastPreset | None:
    """The Fast preset for the LoRA file at ``path``, or None for an ordinary LoRA. Reads only the
    header of a ``.safetensors`` file; other files are judged by name. Raises ``ModelFileError`` for
    a damaged safetensors header."""
    from ipa_studio.core.models.detect import read_safetensors_header

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return fewstep_from(path.stem, {}, None)
    tensors, metadata = read_safetensors_header(path)
    return fewstep_from(path.stem, {k: shape for k, (_dtype, shape) in tensors.items()}, metadata)


def apply_preset(request: GenerationRequest, preset: FastPreset) -> GenerationRequest:
    """``request`` with the preset's sampler, steps and guidance; nothing else changes."""
    return request.replace(scheduler=preset.scheduler, steps=preset.steps, guidance=preset.guidance)
