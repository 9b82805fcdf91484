"""Key layouts of Stable Diffusion weights: the original single-file (LDM) layout ↔ diffusers.

Reading (LDM → diffusers) uses diffusers' own conversion helpers, the ones ``from_single_file`` runs,
so community checkpoints are read exactly as diffusers reads them. Writing (diffusers → LDM) is ours;
diffusers ships it only as a script. The tests hold both against files built from the published
layouts (``tests/fixtures/real_layouts.py``) and against diffusers' ``from_single_file``.

Original layout of an SD1.x single file (runwayml's ``v1-5-pruned-emaonly``, and what A1111, ComfyUI,
kohya and diffusers' converter write):
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE, 1×1 convs for attention),
``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L/14 text, with ``embeddings.position_ids``
as int64). Variants met in real files, all read here: the text encoder without ``text_model.``
(NovelAI-era files; A1111's ``checkpoint_dict_replacements_sd1``), ``position_ids`` stored as floats or
left out, ``model_ema.*`` counters or full EMA copies next to the weights (the live
``model.diffusion_model.*`` weights are the ones loaded, as diffusers and A1111 do), scheduler buffers
(``betas``, ``alphas_cumprod`` …) and a ``state_dict`` wrapper with training leftovers in ``.ckpt`` files.

transformers 5 names ``CLIPTextModel``'s weights without the ``text_model.`` prefix the files use;
``from_single_file`` returns them under the model's own names, ``to_single_file`` writes the files' names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
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


TEXT_MODEL_PREFIX = TEXT_PREFIX + "text_model."
POSITION_IDS = TEXT_MODEL_PREFIX + "embeddings.position_ids"
# The parts of CLIPTextModel; a text key right under TEXT_PREFIX naming one of them is the bare layout.
_BARE_TEXT_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")


def unwrap_checkpoint(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights of a ``.ckpt``: nested ``state_dict`` wrappers (PyTorch Lightning) are opened."""
    while isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    return state


def text_encoder_layout(keys: Iterable[str]) -> str | None:
    """ "text_model" (the standard layout), "bare" (no ``text_model.``), or None (no CLIP text encoder)."""
    layout = None
    for key in keys:
        if key.startswith(TEXT_MODEL_PREFIX):
            return "text_model"
        if key.startswith(TEXT_PREFIX) and key[len(TEXT_PREFIX) :].startswith(_BARE_TEXT_PARTS):
            layout = "bare"
    return layout


def standard_text_layout(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint with its text encoder under ``cond_stage_model.transformer.text_model.``.

    Bare names are moved the way A1111 (``checkpoint_dict_replacements_sd1``) and ComfyUI
    (``SD15.process_clip_state_dict``) move them; every other key is left as it is.
    """
    out: dict[str, Any] = {}
    for key, value in checkpoint.items():
        rest = key[len(TEXT_PREFIX) :] if key.startswith(TEXT_PREFIX) else None
        if rest is not None and rest.startswith(_BARE_TEXT_PARTS):
            key = TEXT_MODEL_PREFIX + rest
        out[key] = value
    return out


def standardize_checkpoint(state: Mapping[str, Any]) -> dict[str, Any]:
    """An SD1.x checkpoint's weights in the standard layout, for ``models add --convert``: the text
    encoder under ``text_model.`` and float ``position_ids`` rounded back to int64 (what ComfyUI does
    on reading). Nothing is dropped; other checkpoints come back unchanged."""
    if not any(k.startswith(UNET_PREFIX) for k in state):
        return dict(state)
    out = standard_text_layout(state)
    ids = out.get(POSITION_IDS)
    if isinstance(ids, torch.Tensor) and ids.is_floating_point():
        out[POSITION_IDS] = ids.float().round().to(torch.int64)
    return out


def to_single_file(
    unet: Mapping[str, torch.Tensor],
    vae: Mapping[str, torch.Tensor],
    text_encoder: Mapping[str, torch.Tensor],
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """Merge the three diffusers state dicts into one checkpoint dict in the standard layout.

    The text encoder may come with transformers 4's names (``text_model.…``, every hub folder) or
    transformers 5's (without); it is written as the files have it, ``position_ids`` included (int64,
    as in v1-5-pruned-emaonly), so older readers that load it strictly find it too.
    """
    out = {UNET_PREFIX + k: v for k, v in unet_to_ldm(unet, unet_config).items()}
    out |= {VAE_PREFIX + k: v for k, v in vae_to_ldm(vae, vae_config).items()}
    positions = None
    for key, value in text_encoder.items():
        if key.endswith("position_ids"):
            continue
        name = key.removeprefix("text_model.")
        out[TEXT_MODEL_PREFIX + name] = value
        if name == "embeddings.position_embedding.weight":
            positions = value.shape[0]
    if positions is not None:
        out[POSITION_IDS] = torch.arange(positions, dtype=torch.int64).unsqueeze(0)
    return out


def from_single_file(
    checkpoint: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any], vae_config: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(unet, vae, text_encoder) diffusers state dicts from an original-layout checkpoint dict.

    The names are those of the models as built here (transformers 5's ``CLIPTextModel`` has no
    ``text_model.`` level). Works on meta tensors too, which is how detection checks a file's keys
    against exactly what this function will produce.
    """
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    checkpoint = standard_text_layout(unwrap_checkpoint(checkpoint))
    # diffusers logs a warning for every file that carries EMA copies; which weights it takes (the
    # live ones, not model_ema.*) is the point, not the warning.
    import logging

    unet_logger = logging.getLogger("diffusers.loaders.single_file_utils")
    level = unet_logger.level
    unet_logger.setLevel(logging.ERROR)
    try:
        unet = convert_ldm_unet_checkpoint(checkpoint, dict(unet_config))
    finally:
        unet_logger.setLevel(level)
    vae = convert_ldm_vae_checkpoint(checkpoint, dict(vae_config))
    text = convert_ldm_clip_checkpoint(checkpoint)
    # position_ids is a non-persistent buffer that transformers rebuilds as 0..76, which is what a
    # float copy rounds to (ComfyUI rounds them; diffusers drops them the same way).
    text = {k.removeprefix("text_model."): v for k, v in text.items() if not k.endswith("position_ids")}
    # The converters look weights up with .get(): a weight the file lacks comes back as None.
    unet, vae, text = ({k: v for k, v in part.items() if v is not None} for part in (unet, vae, text))
    return unet, vae, text


def describe_extras(keys: Iterable[str], dtypes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Facts about the layout of an SD1.x file beyond its widths, for ``Detection.details``."""
    keys = list(keys)
    ema_weights = sum(k.startswith("model_ema.") and k not in _EMA_COUNTERS for k in keys)
    facts: dict[str, Any] = {
        "text_encoder_layout": text_encoder_layout(keys),
        "ema": "full copy (not used)"
        if ema_weights > 100
        else ("counters" if ema_weights or any(k in _EMA_COUNTERS for k in keys) else "none"),
    }
    has_ids = POSITION_IDS in keys or TEXT_PREFIX + "embeddings.position_ids" in keys
    if dtypes is not None:
        ids = dtypes.get(POSITION_IDS) or dtypes.get(TEXT_PREFIX + "embeddings.position_ids")
        facts["position_ids"] = "absent" if ids is None else ("int64" if ids == "I64" else f"{ids} (rounded)")
        weights = {
            d
            for k, d in dtypes.items()
            if k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)) and not k.endswith("position_ids")
        }
        facts["dtype"] = "/".join(sorted(weights)) or None
    else:
        facts["position_ids"] = "present" if has_ids else "absent"
    return facts


_EMA_COUNTERS = ("model_ema.decay", "model_ema.num_updates")


def expected_shapes(
    unet_config: Mapping[str, Any], vae_config: Mapping[str, Any], text_config: Mapping[str, Any]
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """{name: shape} of the UNet, VAE and text encoder the loader builds from these configs."""
    key = json.dumps([unet_config, vae_config, text_config], sort_keys=True, default=str)
    return _expected_shapes(key)


@lru_cache(maxsize=4)
def _expected_shapes(key: str) -> tuple[dict, dict, dict]:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config, vae_config, text_config = json.loads(key)
    with init_empty_weights():  # meta tensors: full-size models cost no memory
        models = (
            UNet2DConditionModel.from_config(unet_config),
            AutoencoderKL.from_config(vae_config),
            CLIPTextModel(CLIPTextConfig(**text_config)),
        )
    return tuple({k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models)  # type: ignore[return-value]


def single_file_problems(
    shapes: Mapping[str, tuple[int, ...]],
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    text_config: Mapping[str, Any],
) -> list[str]:
    """What stops the loader from building these configs' models from a file with these weights.

    The file's names and shapes go through the very conversion the loader runs (on meta tensors, so
    nothing is read or allocated) and are compared with the models the loader builds. An empty list
    means the loader will find every weight it needs, at the right shape, and nothing left over.
    """
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        converted = from_single_file(meta, unet_config, vae_config)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        return [f"its UNet or VAE blocks are not laid out as SD1.5's ({type(exc).__name__}: {exc})"]
    wanted = expected_shapes(unet_config, vae_config, text_config)
    problems = []
    for what, got, want in zip(("UNet", "VAE", "text encoder"), converted, wanted, strict=True):
        problems += _compare(what, got, want)
    return problems


def export_single_file(diffusers_folder: str | Path, dest: str | Path) -> Path:
    """Write a diffusers SD folder as one ``.safetensors`` (or ``.ckpt``) file in the standard layout
    that A1111, ComfyUI and diffusers' ``from_single_file`` read.

    The folder's weights may be plain, ``fp16`` variant files or ``.bin`` pickles (read safely). The
    file is written to a temporary name and moved into place, so an interrupted export never leaves a
    half-written file under the name.
    """
    import os
    import tempfile

    from safetensors.torch import save_file

    from ipa_studio.core.errors import ModelFileError
    from ipa_studio.core.models.detect import find_weights
    from ipa_studio.core.models.safe_load import load_weights

    folder, dest = Path(diffusers_folder), Path(dest)

    def weights(sub: str) -> dict[str, torch.Tensor]:
        found = find_weights(folder / sub)
        if found is None:
            raise ModelFileError(f"'{folder / sub}' has no weights file to export.")
        return dict(load_weights(found[0]))

    unet_config = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    vae_config = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    merged = to_single_file(weights("unet"), weights("vae"), weights("text_encoder"), unet_config, vae_config)
    merged = {k: v.contiguous() for k, v in merged.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        if dest.suffix == ".safetensors":
            save_file(merged, tmp, metadata={"format": "pt"})
        else:
            # What ordinary .ckpt files look like: the weights under "state_dict" with training leftovers.
            torch.save({"state_dict": merged, "global_step": 1, "epoch": 0}, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


# --------------------------------------------------------------------------- image encoders, ControlNets


def vision_config(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The image encoder's config: ``config``, else the bundled CLIP ViT-H/14 one."""
    if config is not None:
        return dict(config)
    from ipa_studio.core.models.loader import bundled_resources

    path = bundled_resources() / "image_encoder" / "vit_h_14_config.json"
    return json.loads(path.read_text(encoding="utf-8"))


def expected_vision_shapes(config: Mapping[str, Any] | None = None) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the ``CLIPVisionModelWithProjection`` the loader builds for a single file."""
    return _expected_vision(json.dumps(vision_config(config), sort_keys=True))


@lru_cache(maxsize=4)
def _expected_vision(key: str) -> dict[str, tuple[int, ...]]:
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with init_empty_weights():
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**json.loads(key)))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def controlnet_config(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ControlNet's config: ``config``, else the bundled SD1.5 ControlNet one (the config.json of
    lllyasviel's ``control_v11*_sd15_*`` folders)."""
    if config is not None:
        return {k: v for k, v in config.items() if not k.startswith("_")}
    from ipa_studio.core.models.loader import bundled_resources

    path = bundled_resources() / "controlnet" / "sd15_controlnet_config.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def controlnet_from_single_file(
    checkpoint: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """A ControlNet's diffusers state dict from a single file in any of the layouts people have:
    ControlNet-v1-1 ``.pth`` (``control_model.*``), bare ``.safetensors`` (ComfyUI's fp16 copies),
    ControlNet 1.0 files (a whole SD1.5 plus ``control_model.*``; only the ControlNet is taken), and
    diffusers-layout single files. The conversion is diffusers' ``convert_controlnet_checkpoint``,
    the one ``ControlNetModel.from_single_file`` runs."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    checkpoint = dict(unwrap_checkpoint(checkpoint))
    if any(k.startswith("control_model.") for k in checkpoint):
        # diffusers picks the bare layout by "time_embed.0.weight"; a ControlNet 1.0 file has the
        # base UNet's keys too, so keep only the ControlNet's before it decides.
        checkpoint = {k: v for k, v in checkpoint.items() if k.startswith("control_model.")}
    state = convert_controlnet_checkpoint(checkpoint, dict(config))
    return {k: v for k, v in state.items() if v is not None}


def expected_controlnet_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return _expected_controlnet(json.dumps(dict(config), sort_keys=True, default=list))


@lru_cache(maxsize=4)
def _expected_controlnet(key: str) -> dict[str, tuple[int, ...]]:
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    with init_empty_weights():
        model = ControlNetModel.from_config(json.loads(key))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def controlnet_problems(shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any]) -> list[str]:
    """What stops the loader from building the ControlNet of ``config`` from a file with these weights
    (same conversion as the loader, on meta tensors)."""
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    try:
        got = controlnet_from_single_file(meta, config)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        return [f"its blocks are not laid out as an SD1.5 ControlNet's ({type(exc).__name__}: {exc})"]
    return _compare("ControlNet", got, expected_controlnet_shapes(config))


def _compare(what: str, got: Mapping[str, Any], want: Mapping[str, tuple[int, ...]]) -> list[str]:
    def weights(n: int) -> str:
        return f"{n} weight" + ("" if n == 1 else "s")

    problems = []
    missing = [k for k in want if k not in got]
    if missing:
        problems.append(
            f"its {what} lacks {len(missing)} of its {len(want)} weights (for example '{missing[0]}')"
        )
    for k in want:
        if k in got and tuple(got[k].shape) != want[k]:
            problems.append(
                f"its {what} weight '{k}' is {list(got[k].shape)} where the {what} has {list(want[k])}"
            )
            break
    extra = [k for k in got if k not in want]
    if extra:
        problems.append(
            f"its {what} has {weights(len(extra))} the {what} does not (for example '{extra[0]}')"
        )
    return problems
