"""Per-block λ presets ("style", "composition", …) and the map of the UNet's cross-attention layers.

A preset is a *shape*: a weight (0–2) per UNet block or layer, by the module-name prefixes that
:func:`resolve_scale` understands (longest prefix wins, ``default`` covers the rest). The request's
λ is the preset times the strength the slider gives: :meth:`BlockPreset.scale`. People can edit
presets and save their own; those live in one JSON file in the user config folder
(``block_presets.json``), written atomically. This module imports neither torch nor Qt, so the
window can draw and edit maps without loading the engine.

How the built-in presets were chosen (SD1.5, 16 cross-attention layers):

- **Style** and **Composition** are ComfyUI_IPAdapter_plus's SD1.5 weight types "style transfer"
  and "composition" (``ipadapter_execute``), translated from its layer numbers (ComfyUI's
  ``transformer_index``: the 16 layers in the UNet's forward order, 0–5 down, 6 mid, 7–15 up) to
  module names: style = down_blocks.0, down_blocks.1, up_blocks.1.attentions.2, up_blocks.2,
  up_blocks.3 (layers 0–3 and 9–15); composition = down_blocks.2.attentions.0 at 0.25 and
  down_blocks.2.attentions.1 at 1 (layers 4 and 5). They are the SD1.5 counterparts of
  InstantStyle's SDXL finding that one down block carries layout and one up block carries style,
  and the maps most SD1.5 users of those weight types already know.
- **Style and composition** is their union (ComfyUI's "style and composition").
- **Style (InstantStyle)** is InstantStyle's own SD1.5 suggestion, up_blocks.1 only
  (``infer_style_sd15.py``; its authors call it experimental for SD1.5).
- **Everything** is the paper's IP-Adapter: every layer at λ.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ipa_studio.core.errors import IPAStudioError, RequestError

__all__ = [
    "BUILTIN_PRESETS",
    "MAX_WEIGHT",
    "SD15_LAYERS",
    "BlockPreset",
    "Layer",
    "compact_weights",
    "default_presets_path",
    "delete_preset",
    "find_preset",
    "layer_map",
    "layer_weights",
    "load_presets",
    "match_preset",
    "rename_preset",
    "resolve_scale",
    "save_preset",
]

log = logging.getLogger(__name__)
PRESETS_VERSION = 1
MAX_WEIGHT = 2.0
"""The largest weight (and λ) a layer takes; the same bound as ``prepare.MAX_SCALE``. Kept here so
the window can check presets without importing the engine's modules (and torch with them)."""


# --------------------------------------------------------------------------------------------------
# The layers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One cross-attention layer, as the block map shows it."""

    name: str
    """Module name, e.g. ``down_blocks.2.attentions.1`` (a valid λ prefix)."""
    block: str
    """``down_blocks.2``, ``mid_block`` or ``up_blocks.1``: what the map groups by."""
    part: str
    """``down``, ``mid`` or ``up``."""
    order: int
    """Position in the UNet's forward pass, 0 first (ComfyUI's ``transformer_index``)."""
    checkpoint_key: int
    """The number of its weights in an official checkpoint (``ip_adapter.<n>.to_k_ip.weight``)."""
    downscale: int
    """The layer's grid is the picture's size divided by this (8 at the top, 64 at the bottom)."""


def layer_map(processor_names: Iterable[str]) -> tuple[Layer, ...]:
    """The layers of a UNet from its ``attn2`` processor names in ``unet.attn_processors`` order
    (the order official checkpoints number them in), listed in forward order."""
    names = [n.removesuffix(".processor") for n in processor_names if n.endswith("attn2.processor")]
    short = [n.split(".transformer_blocks.")[0] for n in names]
    keys = {name: 2 * i + 1 for i, name in enumerate(short)}
    downs = sorted({int(n.split(".")[1]) for n in short if n.startswith("down_blocks.")})
    ups = sorted({int(n.split(".")[1]) for n in short if n.startswith("up_blocks.")})

    def sort_key(name: str) -> tuple[int, int, int]:
        part = name.split(".")
        if name.startswith("down_blocks."):
            return (0, int(part[1]), int(part[3]))
        if name.startswith("mid_block"):
            return (1, 0, int(part[2]))
        return (2, int(part[1]), int(part[3]))

    layers = []
    n_up = (max(ups) + 1) if ups else 0
    # The middle sits at the bottom of the UNet, below the last down block (which in SD1.5 has no
    # attention, so the up blocks tell how deep it goes).
    bottom = n_up - 1 if ups else max(downs, default=0)
    for order, name in enumerate(sorted(short, key=sort_key)):
        part = name.split(".")
        if name.startswith("down_blocks."):
            kind, block, level = "down", ".".join(part[:2]), int(part[1])
        elif name.startswith("mid_block"):
            kind, block, level = "mid", "mid_block", bottom
        else:
            kind, block, level = "up", ".".join(part[:2]), n_up - 1 - int(part[1])
        layers.append(Layer(name, block, kind, order, keys[name], 8 * 2**level))
    return tuple(layers)


def _sd15_processor_names() -> list[str]:
    tail = ".transformer_blocks.0.attn2.processor"
    down = [f"down_blocks.{b}.attentions.{a}{tail}" for b in range(3) for a in range(2)]
    up = [f"up_blocks.{b}.attentions.{a}{tail}" for b in range(1, 4) for a in range(3)]
    return down + up + [f"mid_block.attentions.0{tail}"]  # diffusers' attn_processors order


SD15_LAYERS: tuple[Layer, ...] = layer_map(_sd15_processor_names())
"""The 16 cross-attention layers of SD1.5, in forward order (the block map's data)."""


def resolve_scale(scale: float | Mapping[str, float], layer_name: str) -> float:
    """λ for one layer: a number applies everywhere; a mapping picks its longest matching prefix
    (``default``, 0 when absent, for the layers no prefix names)."""
    if isinstance(scale, int | float):
        return float(scale)
    best: tuple[int, float] | None = None
    for prefix, value in scale.items():
        if prefix == "default":
            continue
        if (layer_name == prefix or layer_name.startswith(prefix + ".")) and (
            best is None or len(prefix) > best[0]
        ):
            best = (len(prefix), float(value))
    return best[1] if best else float(scale.get("default", 0.0))


def layer_weights(scale: float | Mapping[str, float], layers: Sequence[Layer] = SD15_LAYERS) -> list[float]:
    """The λ each layer gets from ``scale`` (a number or a prefix map), in ``layers`` order."""
    return [resolve_scale(scale, layer.name) for layer in layers]


def compact_weights(values: Sequence[float], layers: Sequence[Layer] = SD15_LAYERS) -> dict[str, float]:
    """The shortest prefix map that gives each layer its value (the inverse of :func:`layer_weights`).

    The most common value becomes ``default``; a block whose layers all share a value other than
    that is named once (``up_blocks.2``); the remaining layers are named one by one. This is how a
    map edited layer by layer is stored, so saved presets stay readable.
    """
    if len(values) != len(layers):
        raise ValueError(f"{len(values)} values for {len(layers)} layers")
    values = [float(v) for v in values]
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    default = max(counts, key=lambda v: (counts[v], -values.index(v)))
    out: dict[str, float] = {}
    blocks: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        blocks.setdefault(layer.block, []).append(i)
    for block, members in blocks.items():
        shared = {values[i] for i in members}
        if len(shared) == 1:
            (value,) = shared
            if value != default:
                out[block] = value
            continue
        for i in members:
            if values[i] != default:
                out[layers[i].name] = values[i]
    out["default"] = default
    return out


# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockPreset:
    name: str
    weights: Mapping[str, float]
    """Block or layer prefix → weight (0–2); ``default`` for the layers no prefix names."""
    description: str = ""
    builtin: bool = field(default=False, compare=False)

    def scale(self, strength: float) -> dict[str, float]:
        """The request's λ for this preset at ``strength`` (the λ slider): every weight × strength."""
        out = {k: float(v) * strength for k, v in self.weights.items()}
        out.setdefault("default", 0.0)
        return out


_OFF = 0.0
BUILTIN_PRESETS: tuple[BlockPreset, ...] = (
    BlockPreset(
        "Everything",
        {"default": 1.0},
        "Every cross-attention layer follows the references (the paper's IP-Adapter).",
        True,
    ),
    BlockPreset(
        "Style",
        {
            "down_blocks.0": 1.0,
            "down_blocks.1": 1.0,
            "up_blocks.1.attentions.2": 1.0,
            "up_blocks.2": 1.0,
            "up_blocks.3": 1.0,
            "default": _OFF,
        },
        "Colours, texture and brushwork of the references; the prompt keeps the subject and layout "
        "(ComfyUI_IPAdapter_plus's SD1.5 'style transfer').",
        True,
    ),
    BlockPreset(
        "Composition",
        {"down_blocks.2.attentions.0": 0.25, "down_blocks.2.attentions.1": 1.0, "default": _OFF},
        "The layout and shapes of the references; the prompt keeps style and subject "
        "(ComfyUI_IPAdapter_plus's SD1.5 'composition').",
        True,
    ),
    BlockPreset(
        "Style and composition",
        {
            "down_blocks.0": 1.0,
            "down_blocks.1": 1.0,
            "down_blocks.2.attentions.0": 0.25,
            "down_blocks.2.attentions.1": 1.0,
            "up_blocks.1.attentions.2": 1.0,
            "up_blocks.2": 1.0,
            "up_blocks.3": 1.0,
            "default": _OFF,
        },
        "Both of the above together; the middle of the UNet is left to the prompt.",
        True,
    ),
    BlockPreset(
        "Style (InstantStyle)",
        {"up_blocks.1": 1.0, "default": _OFF},
        "InstantStyle's SD1.5 style block (up_blocks.1 only); lighter than 'Style'.",
        True,
    ),
)


def check_weights(weights: object, what: str) -> dict[str, float]:
    """A preset's weights as a clean dict, or a RequestError that says what is wrong."""
    if not isinstance(weights, Mapping) or not weights:
        raise RequestError(f"{what} needs at least one block weight.")
    names = {layer.name for layer in SD15_LAYERS}
    out: dict[str, float] = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not key.strip():
            raise RequestError(f"{what} has a weight without a block name.")
        if key != "default" and not any(n == key or n.startswith(key + ".") for n in names):
            raise RequestError(
                f"{what}: '{key}' is not an SD1.5 block. Use names such as 'down_blocks.2', "
                "'mid_block' or 'up_blocks.1.attentions.2'."
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RequestError(f"{what}: the weight of '{key}' must be a number.")
        if not 0 <= value <= MAX_WEIGHT:
            raise RequestError(f"{what}: the weight of '{key}' must be from 0 to {MAX_WEIGHT:g}.")
        out[key] = float(value)
    return out


def default_presets_path() -> Path:
    import platformdirs

    from ipa_studio.core.settings import APP_NAME

    return platformdirs.user_config_path(APP_NAME, appauthor=False) / "block_presets.json"


def _read_user(path: Path) -> list[BlockPreset]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("block presets file %s could not be read (%s); using the built-in ones", path, exc)
        return []
    items = data.get("presets") if isinstance(data, dict) else None
    if not isinstance(items, list):
        log.warning("block presets file %s holds no preset list; using the built-in ones", path)
        return []
    out = []
    builtin = {p.name for p in BUILTIN_PRESETS}
    for item in items:
        try:
            name = item["name"]
            if not isinstance(name, str) or not name.strip() or name in builtin:
                raise RequestError(f"a preset may not be called {name!r}")
            weights = check_weights(item["weights"], f"The preset '{name}'")
            description = item.get("description", "")
            out.append(BlockPreset(name, weights, description if isinstance(description, str) else ""))
        except (RequestError, KeyError, TypeError) as exc:
            log.warning("a preset in %s was left out (%s)", path, exc)
    return out


def load_presets(path: str | os.PathLike[str] | None = None) -> list[BlockPreset]:
    """The built-in presets followed by the user's own (a damaged file leaves only the built-ins)."""
    path = Path(path) if path is not None else default_presets_path()
    return [*BUILTIN_PRESETS, *_read_user(path)]


def _write_user(presets: list[BlockPreset], path: Path) -> None:
    from ipa_studio.core.settings import write_text_atomic

    document = {
        "version": PRESETS_VERSION,
        "presets": [
            {"name": p.name, "description": p.description, "weights": dict(p.weights)} for p in presets
        ],
    }
    try:
        write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise IPAStudioError(
            f"The block presets could not be saved to {path}: {exc.strerror or exc}."
        ) from exc


def save_preset(preset: BlockPreset, path: str | os.PathLike[str] | None = None) -> BlockPreset:
    """Add or replace a user preset (by name); built-in names are refused. Returns the saved preset."""
    path = Path(path) if path is not None else default_presets_path()
    name = preset.name.strip() if isinstance(preset.name, str) else ""
    if not name:
        raise RequestError("A preset needs a name.")
    if name in {p.name for p in BUILTIN_PRESETS}:
        raise RequestError(f"'{name}' is a built-in preset: save yours under another name.")
    clean = BlockPreset(name, check_weights(preset.weights, f"The preset '{name}'"), preset.description)
    others = [p for p in _read_user(path) if p.name != name]
    _write_user([*others, clean], path)
    return clean


def rename_preset(old: str, new: str, path: str | os.PathLike[str] | None = None) -> BlockPreset:
    """Give a user preset another name, in one write (its place in the list is kept)."""
    path = Path(path) if path is not None else default_presets_path()
    new = new.strip() if isinstance(new, str) else ""
    builtin = {p.name for p in BUILTIN_PRESETS}
    if old in builtin:
        raise RequestError(f"'{old}' is a built-in preset and cannot be renamed: save a copy instead.")
    if not new:
        raise RequestError("A preset needs a name.")
    if new in builtin:
        raise RequestError(f"'{new}' is a built-in preset: choose another name.")
    presets = _read_user(path)
    if old not in {p.name for p in presets}:
        raise RequestError(f"There is no saved preset called '{old}'.")
    if new != old and new in {p.name for p in presets}:
        raise RequestError(f"There is already a preset called '{new}'.")
    renamed = [BlockPreset(new, p.weights, p.description) if p.name == old else p for p in presets]
    _write_user(renamed, path)
    return next(p for p in renamed if p.name == new)


def delete_preset(name: str, path: str | os.PathLike[str] | None = None) -> None:
    path = Path(path) if path is not None else default_presets_path()
    if name in {p.name for p in BUILTIN_PRESETS}:
        raise RequestError(f"'{name}' is a built-in preset and cannot be removed.")
    presets = _read_user(path)
    if name not in {p.name for p in presets}:
        raise RequestError(f"There is no saved preset called '{name}'.")
    _write_user([p for p in presets if p.name != name], path)


def find_preset(name: str, presets: Sequence[BlockPreset] | None = None) -> BlockPreset:
    presets = list(presets) if presets is not None else load_presets()
    for preset in presets:
        if preset.name.casefold() == name.casefold():
            return preset
    raise RequestError(
        f"No block preset is called '{name}'. There are: {', '.join(p.name for p in presets)}."
    )


def match_preset(
    scale: float | Mapping[str, float], presets: Sequence[BlockPreset] | None = None
) -> tuple[BlockPreset, float] | None:
    """The preset and strength that give ``scale`` on every SD1.5 layer, if one does (so the window
    can show "Style at 0.8" for settings it reopens). A plain number is "Everything" at that λ."""
    presets = list(presets) if presets is not None else load_presets()
    wanted = layer_weights(scale)
    for preset in presets:
        shape = layer_weights(preset.weights)
        peak = max(shape)
        if peak == 0:
            continue
        strength = max(wanted) / peak
        if all(abs(w - s * strength) <= 1e-6 for w, s in zip(wanted, shape, strict=True)):
            return preset, strength
    return None
