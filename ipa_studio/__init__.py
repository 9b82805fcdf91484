"""IPA Studio: image-prompted Stable Diffusion 1.5 on your own machine."""

__version__ = "0.1.0"
