"""The IP-Adapter as one module (projection + W'k/W'v per layer) and its installation on a UNet."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ipa_studio.core.errors import ModelFileError, RequestError
from ipa_studio.core.presets import resolve_scale

from .attention import AdapterContext, DecoupledAttnProcessor
from .checkpoint import RESAMPLER_DIM_HEAD, AdapterCheckpoint, check_fits, parse_checkpoint, save_checkpoint
from .projection import GlobalProjection, MLPProjection, Resampler

Scale = float | Mapping[str, float]


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """(processor name, Attention module) of every cross-attention layer, in checkpoint order."""
    layers = []
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            layers.append((name, unet.get_submodule(name[: -len(".processor")])))
    return layers


def _build_projection(ckpt: AdapterCheckpoint) -> nn.Module:
    p = ckpt.image_proj
    if ckpt.variant == "global":
        return GlobalProjection(ckpt.encoder_width, ckpt.cross_attention_dim, ckpt.num_tokens or 4)
    if ckpt.variant == "full":
        return MLPProjection(ckpt.encoder_width, ckpt.cross_attention_dim)
    dim = p["latents"].shape[2]
    depth = len({k.split(".")[1] for k in p if k.startswith("layers.")})
    inner = p["layers.0.0.to_q.weight"].shape[0]
    return Resampler(
        dim=dim,
        depth=depth,
        dim_head=RESAMPLER_DIM_HEAD,
        heads=max(1, inner // RESAMPLER_DIM_HEAD),
        num_queries=p["latents"].shape[1],
        embedding_dim=ckpt.encoder_width,
        output_dim=ckpt.cross_attention_dim,
        ff_mult=p["layers.0.1.1.weight"].shape[0] // dim,
    )


class IPAdapter(nn.Module):
    """Trainable parts of the method: the image projection and W'k, W'v of each layer."""

    def __init__(self, ckpt: AdapterCheckpoint) -> None:
        super().__init__()
        self.name = ckpt.name
        self.variant = ckpt.variant
        self.checkpoint_info = ckpt
        try:
            self.image_proj = _build_projection(ckpt)
            self.image_proj.load_state_dict(ckpt.image_proj, strict=True)
        except (KeyError, IndexError, ValueError, RuntimeError, ZeroDivisionError) as exc:
            # load_state_dict lists every missing, extra or mis-shaped weight; the first says enough.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = (lines[1] if len(lines) > 1 else lines[0]) if lines else type(exc).__name__
            raise ModelFileError(
                f"'{ckpt.name}' is damaged: its image projection does not match the {ckpt.variant} "
                f"IP-Adapter layout ({detail[:300]})."
            ) from exc
        self.to_k_ip = nn.ModuleList()
        self.to_v_ip = nn.ModuleList()
        for k, v in ckpt.layers:
            for store, weight in ((self.to_k_ip, k), (self.to_v_ip, v)):
                linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                linear.weight.data.copy_(weight)
                store.append(linear)

    @classmethod
    def initialise(
        cls,
        unet: nn.Module,
        variant: str = "global",
        *,
        encoder_projection_dim: int,
        encoder_hidden_size: int,
        num_tokens: int | None = None,
        name: str = "new adapter",
    ) -> IPAdapter:
        """A fresh adapter for ``unet`` to train (paper §3.2): a newly initialised projection and, in
        each cross-attention layer, W'k and W'v copied from that layer's Wk and Wv.

        Copying Wk, Wv is the paper's choice "to speed up the convergence": at step 0 the image branch
        attends with the same keys and values the text branch would make of the same tokens. The
        projection is built as the official training scripts build it — global: Linear + LayerNorm
        over ``image_embeds`` (4 tokens); plus: the Resampler over penultimate hidden states (16
        queries, depth 4, 64-wide heads, width = the UNet's text width); full: the MLP over every grid
        token — so the result saves to, and reloads from, the official layout unchanged.
        """
        cross = unet.config.cross_attention_dim
        if variant == "global":
            projection: nn.Module = GlobalProjection(encoder_projection_dim, cross, num_tokens or 4)
        elif variant == "plus":
            projection = Resampler(
                dim=cross,
                depth=4,
                dim_head=RESAMPLER_DIM_HEAD,
                heads=max(1, cross // RESAMPLER_DIM_HEAD),
                num_queries=num_tokens or 16,
                embedding_dim=encoder_hidden_size,
                output_dim=cross,
                ff_mult=4,
            )
        elif variant == "full":
            if num_tokens is not None:
                raise RequestError(
                    "The full variant makes one token per image-encoder grid token; leave num_tokens unset."
                )
            projection = MLPProjection(encoder_hidden_size, cross)
        else:
            raise RequestError(f"Unknown adapter variant '{variant}'. Choose global, plus or full.")
        ip_adapter = {}
        for n, (_, attn) in enumerate(cross_attention_layers(unet)):
            # float32 copies: the adapter trains in full precision even when the UNet is half.
            ip_adapter[f"{2 * n + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().float().clone()
            ip_adapter[f"{2 * n + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().float().clone()
        state = {"image_proj": projection.state_dict(), "ip_adapter": ip_adapter}
        return cls(parse_checkpoint(state, name))

    @property
    def uses_hidden_states(self) -> bool:
        return self.checkpoint_info.uses_hidden_states

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Image features (pooled embeds [B, D] or grid [B, S, H]) → tokens [B, N, text width]."""
        return self.image_proj(features)

    def save(self, path: str | Path) -> Path:
        """Write in the official layout (``.safetensors`` or ``.bin`` by suffix)."""
        layers = [(k.weight, v.weight) for k, v in zip(self.to_k_ip, self.to_v_ip, strict=True)]
        return save_checkpoint(path, self.image_proj.state_dict(), layers)


def reference_bias(
    weights: Sequence[float], tokens_per_reference: Sequence[int], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor | None, float]:
    """Per-reference weights as (additive attention bias over the concatenated tokens, strength).

    The references share one softmax, as in diffusers' multi-image attention. A weight w scales a
    reference's unnormalised attention mass by w/max(w) (a log-w logit bias), and the strongest
    weight scales the whole image branch: all weights 1 reproduce diffusers exactly, a single
    reference at 0.5 halves its effect, and weight 0 removes a reference.
    """
    if any(w < 0 or not math.isfinite(w) for w in weights):
        raise RequestError("Reference weights must be zero or more.")
    strength = max(weights, default=0.0)
    if strength == 0 or all(w == strength for w in weights):
        return None, strength
    logits = [
        math.log(w / strength) if w > 0 else float("-inf")
        for w, n in zip(weights, tokens_per_reference, strict=True)
        for _ in range(n)
    ]
    return torch.tensor(logits, device=device, dtype=dtype).view(1, 1, 1, -1), strength


@dataclass
class InstalledAdapter:
    """Handle for an adapter installed on one UNet; ``remove()`` restores the plain model."""

    adapter: IPAdapter
    unet: nn.Module
    context: AdapterContext
    processors: dict[str, DecoupledAttnProcessor]
    _original: dict = field(repr=False)

    def set_scale(self, scale: Scale) -> None:
        if not isinstance(scale, int | float):
            unknown = [
                p for p in scale if p != "default" and not any(n.startswith(p + ".") for n in self.processors)
            ]
            if unknown:
                raise RequestError(
                    f"λ block {', '.join(map(repr, unknown))} matches no cross-attention layer. Use names "
                    "such as 'down_blocks.2', 'mid_block' or 'up_blocks.1'."
                )
        for name, proc in self.processors.items():
            proc.scale = resolve_scale(scale, name)

    def remove(self) -> None:
        self.context.clear()
        self.unet.set_attn_processor(dict(self._original))


def install_adapter(
    adapter: IPAdapter,
    unet: nn.Module,
    *,
    encoder_projection_dim: int,
    encoder_hidden_size: int,
    scale: Scale = 1.0,
) -> InstalledAdapter:
    """Check that the adapter fits, then put decoupled processors on every ``attn2`` of ``unet``.

    Nothing on the UNet changes when the check fails.
    """
    layers = cross_attention_layers(unet)
    check_fits(
        adapter.checkpoint_info,
        [attn.to_k.out_features for _, attn in layers],
        unet.config.cross_attention_dim,
        encoder_projection_dim,
        encoder_hidden_size,
    )
    param = next(unet.parameters())
    adapter.to(device=param.device, dtype=param.dtype)
    context = AdapterContext()
    original = dict(unet.attn_processors)
    processors = {
        name: DecoupledAttnProcessor(k, v, context, 1.0)
        for (name, _), k, v in zip(layers, adapter.to_k_ip, adapter.to_v_ip, strict=True)
    }
    installed = InstalledAdapter(adapter, unet, context, processors, original)
    installed.set_scale(scale)
    unet.set_attn_processor({**original, **processors})
    return installed
