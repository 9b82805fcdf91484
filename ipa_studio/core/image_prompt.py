"""How a generation's references become attention groups, and which of them act at each step.

Rules (each a choice the docs explain):

- References without a mask share one attention (one softmax over all their tokens), as diffusers'
  multi-image IP-Adapter does; a per-reference weight w is a log(w / max w) bias on its tokens and
  the largest weight scales the group (all weights 1 reproduce diffusers exactly).
- Each masked reference has an attention of its own whose output is multiplied by its mask and by
  its weight: diffusers' ``ip_adapter_masks``.
- A reference acts on step i of n when ``start <= i/n`` and ``(i+1)/n <= end`` — the rule diffusers
  uses for ``control_guidance_start`` / ``_end`` and the engine uses for ControlNets. A reference
  outside its window is left out of its group's softmax; a group with no reference in its window is
  skipped altogether (its attention is not computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ipa_studio.core.adapter import reference_bias
from ipa_studio.core.adapter.attention import AdapterContext, ImageGroup, RegionLike

__all__ = ["ImagePrompt", "PromptPart", "in_window"]


def in_window(step: int, total: int, start: float, end: float) -> bool:
    """Whether step ``step`` (0-based) of ``total`` lies in the window [start, end] (fractions)."""
    return not (step / total < start or (step + 1) / total > end)


@dataclass(frozen=True)
class PromptPart:
    """One reference, projected: its tokens for both branches, weight, window and region."""

    cond: torch.Tensor
    """[tokens, width]: what the conditional branch attends to."""
    uncond: torch.Tensor
    """[tokens, width]: what the unconditional branch attends to (zero image, or negative image)."""
    weight: float
    start: float = 0.0
    end: float = 1.0
    region: RegionLike | None = None


@dataclass
class _Planned:
    group: ImageGroup
    parts: list[PromptPart]
    last: tuple[bool, ...] | None = None


class ImagePrompt:
    """The attention groups of one generation, and the per-step switching of their references."""

    def __init__(self, parts: list[PromptPart], batch: int, cfg: bool) -> None:
        shared = [p for p in parts if p.region is None]
        planned = [shared] if shared else []
        planned += [[p] for p in parts if p.region is not None]
        self._planned = [_Planned(self._group(members, batch, cfg), members) for members in planned]
        self.windowed = any(p.start > 0 or p.end < 1 for p in parts)

    @staticmethod
    def _group(parts: list[PromptPart], batch: int, cfg: bool) -> ImageGroup:
        cond = torch.cat([p.cond for p in parts])[None].repeat(batch, 1, 1)
        tokens = cond
        if cfg:
            tokens = torch.cat([torch.cat([p.uncond for p in parts])[None].repeat(batch, 1, 1), cond])
        return ImageGroup(tokens, region=parts[0].region if len(parts) == 1 else None)

    def install(self, context: AdapterContext) -> None:
        """Give the groups to the adapter's processors (new K'/V' once) with the first step's state."""
        context.set_groups([p.group for p in self._planned])
        self.step(0, None)

    def step(self, step: int, total: int | None) -> None:
        """Switch references in or out for step ``step`` of ``total`` (None: everyone in)."""
        for planned in self._planned:
            parts = planned.parts
            active = tuple(total is None or in_window(step, total, p.start, p.end) for p in parts)
            if active == planned.last:
                continue
            planned.last = active
            weights = [p.weight if on else 0.0 for p, on in zip(parts, active, strict=True)]
            group = planned.group
            group.active = any(active) and max(weights) > 0
            if group.active:
                tokens = group.tokens
                group.bias, group.strength = reference_bias(
                    weights, [p.cond.shape[0] for p in parts], tokens.device, tokens.dtype
                )
