"""Textual-inversion embeddings: new "words" made of learned vectors, used by name in a prompt.

Layouts read (A1111 ``modules/textual_inversion/textual_inversion.py`` ``create_embedding_from_data``;
diffusers ``loaders/textual_inversion.py`` ``_retrieve_tokens_and_embeddings``):

A1111 ``.pt``
    ``{"string_to_param": {"*": [n, 768]}, "string_to_token": …, "name": …, "step": …}``; files from
    the original textual-inversion code pickle ``string_to_param`` as a ``torch.nn.ParameterDict``,
    which the safe loader rebuilds as plain data (``safe_load._ParameterTable``).
A1111 ``.safetensors``
    ``{"emb_params": [n, 768]}``.
diffusers ``learned_embeds``
    ``{"<token>": [768] or [n, 768]}``: one tensor named after its token.

Refused with the reason: SDXL embeddings (``clip_l`` / ``clip_g``, or 1280-wide vectors), SD2
embeddings (1024-wide), and any vectors whose width is not the text encoder's. A lone tensor is only
taken for an embedding when its name looks like a token (no dotted layer path) and its width is one a
text encoder has, so a single-weight file of some other kind is never offered as one.

The prompt uses an embedding by its name, the file name without its suffix, as a word (A1111's
spelling: ``a portrait, easynegative``) or ComfyUI's ``embedding:easynegative``; ``core/prompts.py``
puts its vectors in place of that word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ipa_studio.core.errors import ModelFileError

SD15_WIDTH = 768
_WIDTH_FAMILY = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL"}
# What a lone tensor of some layer is called, never a token.
_PARAMETER_NAMES = {
    "weight",
    "bias",
    "scale",
    "alpha",
    "embedding",
    "embeddings",
    "running_mean",
    "running_var",
}


@dataclass(frozen=True)
class EmbeddingInfo:
    """What a textual-inversion file is (``describe_embedding``)."""

    path: Path
    name: str
    """The word prompts use for it: the file name without its suffix."""
    format: str
    vectors: int
    width: int
    base: str | None
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.reason is None


def embedding_key(shapes: Mapping[str, tuple[int, ...]], width: int = SD15_WIDTH) -> tuple[str, str] | None:
    """(key of the vectors, layout name) when these weights are a textual inversion, else None.
    ``width``: the text encoder's, which a lone tensor may have besides the known ones."""
    keys = list(shapes)
    params = [k for k in keys if k.startswith("string_to_param.")]
    if params:
        return params[0], "A1111 .pt (string_to_param)"
    if "emb_params" in shapes:
        return "emb_params", "A1111 safetensors (emb_params)"
    if "clip_g" in shapes or "clip_l" in shapes:
        return ("clip_g" if "clip_g" in shapes else "clip_l"), "SDXL (clip_l / clip_g)"
    if len(keys) == 1:
        key, shape = keys[0], shapes[keys[0]]
        # diffusers' learned_embeds: named after its token ("<cat-toy>"), never a dotted layer path.
        token_like = "." not in key and key.lower() not in _PARAMETER_NAMES
        if token_like and len(shape) in (1, 2) and (shape[-1] in _WIDTH_FAMILY or shape[-1] == width):
            return key, "diffusers learned_embeds"
    return None


def describe_shapes(
    path: Path, shapes: Mapping[str, tuple[int, ...]], width: int = SD15_WIDTH
) -> EmbeddingInfo | None:
    """The verdict on an embedding file for a text encoder ``width`` wide; None: not an embedding."""
    found = embedding_key(shapes, width)
    if found is None:
        return None
    key, layout = found
    shape = shapes[key]
    got = int(shape[-1]) if shape else 0
    vectors = int(shape[0]) if len(shape) == 2 else 1
    base = "SDXL" if layout.startswith("SDXL") else _WIDTH_FAMILY.get(got)
    reason = None
    if layout.startswith("SDXL") or got == 1280:
        reason = "it is an embedding for SDXL; IPA Studio runs SD1.5 models, which take 768-wide vectors"
    elif got != width:
        family = f" for {base}" if base else ""
        reason = (
            f"it is an embedding{family} with {got}-wide vectors; this model's text encoder takes "
            f"{width}-wide ones"
        )
    elif len(shape) not in (1, 2) or vectors < 1:
        reason = f"its vectors have the shape {tuple(shape)}, which is not a list of vectors"
    return EmbeddingInfo(path, path.stem, layout, vectors, got, base, reason)


def describe_embedding(path: str | Path, width: int = SD15_WIDTH) -> EmbeddingInfo:
    """What a textual-inversion file is; ``reason`` says why it cannot be used. Raises
    ``ModelFileError`` for an unreadable file or one that is no embedding at all."""
    from ipa_studio.core.models.detect import weight_table

    path = Path(path)
    shapes, _fmt, _dtypes = weight_table(path)
    info = describe_shapes(path, shapes, width)
    if info is None:
        raise ModelFileError(f"'{path.name}' is not a textual-inversion embedding.")
    return info


def read_embedding(path: str | Path, width: int = SD15_WIDTH) -> torch.Tensor:
    """The vectors [n, width] of a usable embedding (safe loading). Raises ``ModelFileError`` with the
    reason otherwise."""
    from ipa_studio.core.models.detect import flatten_state
    from ipa_studio.core.models.safe_load import load_weights

    path = Path(path)
    state = {k: v for k, v in flatten_state(load_weights(path)).items() if isinstance(v, torch.Tensor)}
    info = describe_shapes(path, {k: tuple(v.shape) for k, v in state.items()}, width)
    if info is None:
        raise ModelFileError(f"'{path.name}' is not a textual-inversion embedding.")
    if not info.usable:
        raise ModelFileError(f"The embedding '{path.name}' cannot be used: {info.reason}.")
    key = embedding_key({k: tuple(v.shape) for k, v in state.items()}, width)
    assert key is not None
    vectors = state[key[0]].detach()
    return vectors.reshape(-1, vectors.shape[-1]).clone()
