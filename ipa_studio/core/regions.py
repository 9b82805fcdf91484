"""Regional references: a mask per reference, applied inside the decoupled attention.

The semantics are diffusers' ``ip_adapter_masks`` (``IPAdapterMaskProcessor``): the mask is
binarised at the picture's size (white = this reference acts here), and in every cross-attention
layer the reference's attention output is multiplied by the mask scaled (bicubic) to that layer's
grid. diffusers infers the grid from the number of queries and the mask's aspect ratio; here it is
worked out from the latent size (each UNet level halves it, rounding up, as the stride-2
convolutions do), which gives the same grid wherever diffusers' guess is right and the right one
where it is not (sizes that are not multiples of 64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["RegionMask"]


class RegionMask:
    """One reference's mask, ready to multiply attention outputs of any layer of one UNet run."""

    def __init__(
        self, mask: Image.Image, latent_size: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> None:
        """``mask``: a greyscale picture at the size being generated; ``latent_size``: (height, width)."""
        from diffusers.image_processor import IPAdapterMaskProcessor

        width, height = mask.size
        # [1, 1, H, W] of 0/1; the mask is already at the picture's size, so nothing is resized.
        self.full = IPAdapterMaskProcessor().preprocess(mask, height=height, width=width)
        self.latent_size = latent_size
        self.device = device
        self.dtype = dtype
        self._by_queries: dict[int, torch.Tensor] = {}

    def grid(self, num_queries: int) -> tuple[int, int]:
        """The (height, width) of the layer whose attention has ``num_queries`` queries."""
        h, w = self.latent_size
        for _ in range(6):
            if h * w == num_queries:
                return h, w
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        # Not a level of this UNet run (cannot happen with the engine's sizes): diffusers' own guess.
        ratio = self.full.shape[3] / self.full.shape[2]
        mask_h = int(math.sqrt(num_queries / ratio))
        mask_h = mask_h + int(num_queries % mask_h != 0)
        return mask_h, num_queries // mask_h

    def at(self, num_queries: int) -> torch.Tensor:
        """[1, num_queries, 1]: the mask on that layer's grid, to broadcast over batch and channels."""
        cached = self._by_queries.get(num_queries)
        if cached is None:
            h, w = self.grid(num_queries)
            small = F.interpolate(self.full, size=(h, w), mode="bicubic").reshape(1, -1)
            if small.shape[1] < num_queries:
                small = F.pad(small, (0, num_queries - small.shape[1]), value=0.0)
            cached = small[:, :num_queries, None].to(self.device, self.dtype)
            self._by_queries[num_queries] = cached
        return cached
