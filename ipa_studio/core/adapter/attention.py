"""Decoupled cross-attention (paper §3.2.2): Z = Attn(Q, K, V) + λ · Attn(Q, K', V').

The processors are plain callables, not ``nn.Module``s, so the W'k / W'v weights stay owned by the
adapter and never become part of the UNet's own state dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class RegionLike(Protocol):
    def at(self, num_queries: int) -> torch.Tensor: ...


@dataclass
class ImageGroup:
    """Image tokens that share one attention (one softmax) in every layer.

    ``tokens`` cover the whole UNet batch (unconditional rows first under classifier-free
    guidance); ``bias`` is an optional additive attention bias over them (per-reference weights, and
    -inf for references outside their step window); ``strength`` scales the group's output;
    ``region`` (optional) multiplies the output by a mask on each layer's grid. ``active`` false
    skips the group's attention entirely for the current step.
    """

    tokens: torch.Tensor
    bias: torch.Tensor | None = None
    strength: float = 1.0
    region: RegionLike | None = None
    active: bool = True


@dataclass
class AdapterContext:
    """State shared by every processor of one installed adapter, set once per generation.

    ``groups`` hold the image tokens; unmasked references share one group (as in diffusers'
    multi-image attention), each masked reference has its own (as with diffusers'
    ``ip_adapter_masks``). Bumping ``version`` tells processors that their cached K'/V' are stale;
    since the tokens are constant through a generation, K'/V' are computed once per generation
    rather than once per step (only without autograd: in training they are recomputed on every
    call). ``bias``, ``strength`` and ``active`` may change between steps without a bump.
    ``image_attention_calls`` counts the image attentions computed, so tests can see which steps
    and layers ran them.
    """

    groups: list[ImageGroup] = field(default_factory=list)
    version: int = 0
    image_attention_calls: int = 0

    @property
    def tokens(self) -> torch.Tensor | None:
        """The first group's tokens (the only group of a plain generation or of training)."""
        return self.groups[0].tokens if self.groups else None

    def set_groups(self, groups: list[ImageGroup]) -> None:
        self.groups = list(groups)
        self.version += 1

    def set_tokens(
        self, tokens: torch.Tensor | None, bias: torch.Tensor | None = None, strength: float = 1.0
    ) -> None:
        """One group of ``tokens`` (or none): every image token in one attention."""
        self.set_groups([] if tokens is None else [ImageGroup(tokens, bias, strength)])

    def clear(self) -> None:
        self.set_groups([])


class DecoupledAttnProcessor:
    """Replaces an ``attn2`` processor: the text attention unchanged, plus the image attention."""

    def __init__(self, to_k_ip: nn.Linear, to_v_ip: nn.Linear, context: AdapterContext, scale: float) -> None:
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.context = context
        self.scale = scale
        self._cache_version = -1
        self._cached_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _image_kv(self, index: int, heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.context.groups[index].tokens
        b = tokens.shape[0]

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            k = self.to_k_ip(tokens).view(b, -1, heads, head_dim).transpose(1, 2)
            v = self.to_v_ip(tokens).view(b, -1, heads, head_dim).transpose(1, 2)
            return k, v

        if torch.is_grad_enabled():
            # Training: W'k, W'v need their gradients every call, and gradient checkpointing reruns
            # each block's forward expecting the same operations, so nothing may be reused.
            self._cached_kv = {}
            return compute()
        if self._cache_version != self.context.version:
            self._cached_kv = {}
            self._cache_version = self.context.version
        kv = self._cached_kv.get(index)
        if kv is None:
            kv = self._cached_kv[index] = compute()
        return kv

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **_unused,
    ) -> torch.Tensor:
        # The text half follows diffusers' AttnProcessor2_0 step by step, so λ=0 is bit-identical
        # to the plain model.
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        ctx = self.context
        for index, group in enumerate(ctx.groups):
            weight = self.scale * group.strength
            if not group.active or weight == 0:
                continue  # skipped, not multiplied by zero: outside its window a group costs nothing
            ip_key, ip_value = self._image_kv(index, attn.heads, head_dim)
            ip = F.scaled_dot_product_attention(query, ip_key, ip_value, attn_mask=group.bias)
            ip = ip.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            if group.region is not None:
                ip = ip * group.region.at(ip.shape[1])
            hidden_states = hidden_states + weight * ip
            ctx.image_attention_calls += 1

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
