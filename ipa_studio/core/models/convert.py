"""Key layouts of Stable Diffusion weights: the original single-file (LDM) layout ↔ diffusers.

Reading (LDM → diffusers) uses diffusers' own conversion helpers, the ones ``from_single_file`` runs,
so community checkpoints are read exactly as diffusers reads them. Writing (diffusers → LDM) is ours;
diffusers ships it only as a script. ``tests/core/test_models_single_file.py`` proves the two are
inverse (same keys, same tensors) and that a round-tripped model generates the same image.

Original layout of an SD1.x single file:
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE, 1×1 convs for attention),
``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L/14 text, transformers' own names).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_VAE_ATTN = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


def _rename_resnet(rest: str) -> str:
    for new, old in _UNET_RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict in the original layout (without the prefix)."""
    lpb = int(config["layers_per_block"])
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = None
        for d, ldm in _UNET_FIXED.items():
            if key.startswith(d):
                new = ldm + key[len(d) :]
        if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = 1 + b * (lpb + 1) + j
            new = (
                f"input_blocks.{index}.0.{_rename_resnet(rest)}"
                if part == "resnets"
                else (f"input_blocks.{index}.1.{rest}")
            )
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename_resnet(m[2])}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            index = b * (lpb + 1) + j
            new = (
                f"output_blocks.{index}.0.{_rename_resnet(rest)}"
                if part == "resnets"
                else (f"output_blocks.{index}.1.{rest}")
            )
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m[1])
            # The upsampler follows the resnet (and the attention, when the block has one).
            slot = 2 if up_has_attn[b] else 1
            new = f"output_blocks.{b * (lpb + 1) + lpb}.{slot}.conv.{m[2]}"
        if new is None:
            raise ValueError(f"no original-layout name for UNet weight '{key}'")
        out[new] = value
    return out


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict in the original layout (without the prefix)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        new = new.replace("conv_norm_out.", "norm_out.")
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            rest = m[2]
            for d, ldm in _VAE_ATTN:
                if rest.startswith(d):
                    rest = ldm + rest[len(d) :]
            new = f"{m[1]}.mid.attn_1.{rest}"
            if value.ndim == 2:  # the original attention uses 1×1 convolutions
                value = value[:, :, None, None]
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out[new] = value
    return out


def to_single_file(
    unet: Mapping[str, torch.Tensor],
    vae: Mapping[str, torch.Tensor],
    text_encoder: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """Merge the three diffusers state dicts into one original-layout checkpoint dict."""
    out = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet, unet_config).items()}
    out |= {VAE_PREFIX + k: v for k, v in vae_to_ldm(vae, vae_config).items()}
    out |= {TEXT_PREFIX + k: v for k, v in text_encoder.items() if not k.endswith("position_ids")}
    return out


def from_single_file(
    checkpoint: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(unet, vae, text_encoder) diffusers state dicts from an original-layout checkpoint dict."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    checkpoint = dict(checkpoint)
    unet = convert_ldm_unet_checkpoint(checkpoint, dict(unet_config))
    vae = convert_ldm_vae_checkpoint(checkpoint, dict(vae_config))
    text = convert_ldm_clip_checkpoint(checkpoint)
    # Old checkpoints stored CLIP's position_ids as a weight; transformers rebuilds it.
    text = {k: v for k, v in text.items() if not k.endswith("position_ids")}
    return unet, vae, text


def export_single_file(diffusers_folder: str | Path, dest: str | Path) -> Path:
    """Write a diffusers SD folder as one original-layout ``.safetensors`` (or ``.ckpt``) file.

    Used to build single-file test models from the tiny folders; also a user-facing export.
    """
    import json

    from safetensors.torch import load_file, save_file

    folder, dest = Path(diffusers_folder), Path(dest)

    def weights(sub: str) -> dict[str, torch.Tensor]:
        for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
            if (folder / sub / name).is_file():
                return load_file(folder / sub / name)
        raise FileNotFoundError(f"no .safetensors weights in {folder / sub}")

    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    merged = to_single_file(weights("unet"), weights("vae"), weights("text_encoder"), unet_config, vae_config)
    merged = {k: v.contiguous() for k, v in merged.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.suffix == ".safetensors":
        save_file(merged, dest)
    else:
        # What ordinary .ckpt files look like: the weights under "state_dict" with training leftovers.
        torch.save({"state_dict": merged, "global_step": 1, "epoch": 0}, dest)
    return dest
