"""The paper's method: image projection, decoupled cross-attention, official checkpoint I/O."""

from .adapter import InstalledAdapter, IPAdapter, cross_attention_layers, install_adapter, reference_bias
from .attention import AdapterContext, DecoupledAttnProcessor, ImageGroup
from .checkpoint import AdapterCheckpoint, check_fits, parse_checkpoint, read_checkpoint, save_checkpoint

__all__ = [
    "AdapterCheckpoint",
    "AdapterContext",
    "DecoupledAttnProcessor",
    "IPAdapter",
    "ImageGroup",
    "InstalledAdapter",
    "check_fits",
    "cross_attention_layers",
    "install_adapter",
    "parse_checkpoint",
    "read_checkpoint",
    "reference_bias",
    "save_checkpoint",
]
