"""IP-Adapter checkpoints in the official layout: reading, checking, writing.

Layout (DESIGN §3): ``{"image_proj": {...}, "ip_adapter": {"1.to_k_ip.weight", ...}}`` in a ``.bin``
pickle, or the same flattened with ``image_proj.`` / ``ip_adapter.`` prefixes in ``.safetensors``.
The ``ip_adapter`` key number is the processor's index in ``unet.attn_processors`` order, so the
n-th cross-attention layer carries key ``2n + 1``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from ipa_studio.core.errors import AdapterMismatchError, ModelFileError
from ipa_studio.core.models.safe_load import load_weights

Variant = Literal["global", "plus", "full"]

# The official Resampler uses 64-wide heads; checkpoints do not store the head count, so it is
# recovered from the query width exactly as diffusers does.
RESAMPLER_DIM_HEAD = 64

_KNOWN_TEXT_WIDTHS = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_KNOWN_EMBED_WIDTHS = {1024: "ViT-H/14", 1280: "ViT-bigG/14", 768: "ViT-L/14"}
_KNOWN_HIDDEN_WIDTHS = {1280: "ViT-H/14", 1664: "ViT-bigG/14", 1024: "ViT-L/14"}


@dataclass(frozen=True)
class AdapterCheckpoint:
    """A parsed checkpoint: its tensors and what they say about the models it was made for."""

    name: str
    variant: Variant
    image_proj: dict[str, torch.Tensor]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    """(W'k, W'v) per cross-attention layer, in UNet processor order."""
    cross_attention_dim: int
    encoder_width: int
    """Width of the image feature the projection reads: projection dim (global) or hidden size."""
    num_tokens: int | None
    """Image tokens per reference; None for "full", where it equals the encoder's grid size."""

    @property
    def uses_hidden_states(self) -> bool:
        return self.variant != "global"

    def describe(self) -> str:
        base = _KNOWN_TEXT_WIDTHS.get(self.cross_attention_dim, f"{self.cross_attention_dim}-wide text")
        tokens = "all grid tokens" if self.num_tokens is None else f"{self.num_tokens} tokens"
        return f"{self.variant} IP-Adapter for {base}, {tokens}, image feature width {self.encoder_width}"


def split_official(state: dict, name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (image_proj, ip_adapter) from either the nested or the flattened layout."""
    if "image_proj" in state and "ip_adapter" in state:
        parts = state["image_proj"], state["ip_adapter"]
        if not all(isinstance(part, Mapping) for part in parts):
            raise ModelFileError(f"'{name}' is damaged: its 'image_proj' and 'ip_adapter' are not tables.")
        return dict(parts[0]), dict(parts[1])
    image_proj = {k[len("image_proj.") :]: v for k, v in state.items() if k.startswith("image_proj.")}
    ip = {k[len("ip_adapter.") :]: v for k, v in state.items() if k.startswith("ip_adapter.")}
    if not image_proj or not ip:
        raise ModelFileError(
            f"'{name}' is not an IP-Adapter checkpoint: it has no 'image_proj' and 'ip_adapter' weights."
        )
    return image_proj, ip


def _detect(image_proj: dict[str, torch.Tensor], name: str) -> tuple[Variant, int, int, int | None]:
    """(variant, cross_attention_dim, encoder_width, num_tokens) from the projection's shapes."""
    try:
        if "perceiver_resampler.proj_in.weight" in image_proj or (
            "proj.0.weight" in image_proj and "norm.weight" in image_proj
        ):
            raise ModelFileError(
                f"'{name}' is a FaceID IP-Adapter. Those need InsightFace face embeddings and a LoRA, "
                "which IPA Studio does not run; use ip-adapter-plus-face_sd15 or full-face instead."
            )
        if "latents" in image_proj:
            latents = image_proj["latents"]
            return (
                "plus",
                image_proj["proj_out.weight"].shape[0],
                image_proj["proj_in.weight"].shape[1],
                int(latents.shape[1]),
            )
        if "proj.3.weight" in image_proj:
            return "full", image_proj["proj.3.weight"].shape[0], image_proj["proj.0.weight"].shape[1], None
        if "proj.weight" in image_proj and "norm.weight" in image_proj:
            cross = image_proj["norm.weight"].shape[0]
            rows, width = image_proj["proj.weight"].shape
            if rows % cross:
                raise ModelFileError(
                    f"'{name}' is damaged: its projection makes {rows} values, which is not a whole "
                    f"number of {cross}-wide tokens."
                )
            return "global", cross, width, rows // cross
    except KeyError as exc:
        raise ModelFileError(f"'{name}' is an incomplete IP-Adapter checkpoint (missing {exc}).") from exc
    except (IndexError, ValueError, TypeError, ZeroDivisionError, AttributeError):
        # A tensor of the wrong rank or size where the layout has a matrix or a vector.
        raise ModelFileError(
            f"'{name}' is damaged: the shapes of its image projection are not those of an IP-Adapter."
        ) from None
    raise ModelFileError(f"'{name}' has an image projection of a kind IPA Studio does not know.")


def _check_values(name: str, image_proj: Mapping[str, object], ip: Mapping[str, object]) -> None:
    """Refuse non-tensors, empty tensors and NaN / infinite values, naming the tensor: such a file
    loads without complaint elsewhere and then makes black or meaningless pictures."""
    for prefix, part in (("image_proj.", image_proj), ("ip_adapter.", ip)):
        for key, value in part.items():
            label = f"{prefix}{key}"
            if not isinstance(value, torch.Tensor):
                raise ModelFileError(f"'{name}' is damaged: '{label}' is not a tensor.")
            if value.numel() == 0:
                raise ModelFileError(
                    f"'{name}' is damaged: its tensor '{label}' is empty (shape {list(value.shape)})."
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad = int((~torch.isfinite(value)).sum())
                raise ModelFileError(
                    f"'{name}' is damaged: its tensor '{label}' holds {bad} NaN or infinite value"
                    f"{'s' if bad != 1 else ''}; pictures made with it would be black or noise. "
                    "Download it again."
                )


def parse_checkpoint(state: dict, name: str = "adapter") -> AdapterCheckpoint:
    image_proj, ip = split_official(state, name)
    _check_values(name, image_proj, ip)
    variant, cross, width, tokens = _detect(image_proj, name)
    layers = []
    index = 1
    while f"{index}.to_k_ip.weight" in ip:
        try:
            layers.append((ip[f"{index}.to_k_ip.weight"], ip[f"{index}.to_v_ip.weight"]))
        except KeyError:
            raise ModelFileError(f"'{name}' is incomplete: layer {index} has W'k but no W'v.") from None
        index += 2
    if len(layers) * 2 != len(ip):
        raise ModelFileError(f"'{name}' has image-attention weights out of the official order.")
    for k, v in layers:
        if k.shape != v.shape or k.ndim != 2:
            raise ModelFileError(f"'{name}' is damaged: W'k and W'v of one layer differ in shape.")
        if k.shape[1] != cross:
            raise ModelFileError(
                f"'{name}' is damaged: its projection makes {cross}-wide tokens but its attention "
                f"layers read {k.shape[1]}-wide ones."
            )
    return AdapterCheckpoint(name, variant, image_proj, tuple(layers), cross, width, tokens)


def read_checkpoint(path: str | Path) -> AdapterCheckpoint:
    """Load and parse an official ``.bin`` / ``.safetensors`` IP-Adapter file (safe loading)."""
    path = Path(path)
    return parse_checkpoint(load_weights(path), path.name)


def check_fits(
    ckpt: AdapterCheckpoint,
    layer_widths: list[int],
    text_width: int,
    encoder_projection_dim: int,
    encoder_hidden_size: int,
) -> None:
    """Raise ``AdapterMismatchError`` in words when the checkpoint cannot drive these models.

    ``layer_widths`` are the inner widths of the UNet's cross-attention layers, in processor order.
    Called before anything is installed, so a refused checkpoint leaves the models untouched.
    """
    if ckpt.cross_attention_dim != text_width:
        made_for = _KNOWN_TEXT_WIDTHS.get(ckpt.cross_attention_dim)
        have = _KNOWN_TEXT_WIDTHS.get(text_width, f"{text_width}-wide")
        if made_for:
            raise AdapterMismatchError(
                f"'{ckpt.name}' is an IP-Adapter made for {made_for} models, but the loaded base model is "
                f"{have} (text features {text_width} wide vs {ckpt.cross_attention_dim}). "
                f"IPA Studio runs SD1.5 models; use an SD1.5 adapter such as ip-adapter_sd15."
            )
        raise AdapterMismatchError(
            f"'{ckpt.name}' expects {ckpt.cross_attention_dim}-wide text features, but the loaded base "
            f"model has {text_width}-wide ones: wrong base model for this adapter."
        )
    if len(ckpt.layers) != len(layer_widths):
        raise AdapterMismatchError(
            f"'{ckpt.name}' has image attention for {len(ckpt.layers)} layers, but the loaded base model "
            f"has {len(layer_widths)} cross-attention layers: wrong base model for this adapter."
        )
    for i, ((k, _), width) in enumerate(zip(ckpt.layers, layer_widths, strict=True)):
        if k.shape[0] != width:
            raise AdapterMismatchError(
                f"'{ckpt.name}': cross-attention layer {i + 1} is {width} wide in the base model but "
                f"{k.shape[0]} wide in the adapter: wrong base model for this adapter."
            )
    want = encoder_hidden_size if ckpt.uses_hidden_states else encoder_projection_dim
    if ckpt.encoder_width != want:
        names = _KNOWN_HIDDEN_WIDTHS if ckpt.uses_hidden_states else _KNOWN_EMBED_WIDTHS
        need = names.get(ckpt.encoder_width, "another")
        have = names.get(want, "a different")
        raise AdapterMismatchError(
            f"'{ckpt.name}' needs a {need} image encoder (features {ckpt.encoder_width} wide), but the "
            f"loaded image encoder is {have} ({want} wide). Pick the image encoder this adapter was "
            "trained with (ViT-H/14 for the SD1.5 adapters)."
        )


def save_checkpoint(
    path: str | Path,
    image_proj: dict[str, torch.Tensor],
    layers: list[tuple[torch.Tensor, torch.Tensor]],
) -> Path:
    """Write the official layout; the format follows the suffix. Atomic: a good file is never
    replaced by a half-written one."""
    path = Path(path)
    ip = {}
    for n, (k, v) in enumerate(layers):
        ip[f"{2 * n + 1}.to_k_ip.weight"] = k.detach().cpu().contiguous()
        ip[f"{2 * n + 1}.to_v_ip.weight"] = v.detach().cpu().contiguous()
    proj = {k: v.detach().cpu().contiguous() for k, v in image_proj.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            flat = {f"image_proj.{k}": v for k, v in proj.items()}
            flat.update({f"ip_adapter.{k}": v for k, v in ip.items()})
            save_file(flat, tmp)
        elif path.suffix == ".bin":
            torch.save({"image_proj": proj, "ip_adapter": ip}, tmp)
        else:
            raise ValueError(f"Adapter files are .safetensors or .bin, not '{path.suffix}'.")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
