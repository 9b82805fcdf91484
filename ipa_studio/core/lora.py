"""LoRAs: reading the file layouts people have, and applying several at once to a loaded SD1.5 model.

Layouts read (the evidence is the code that writes or reads them):

kohya / A1111 (``networks/lora.py`` of kohya-ss sd-scripts; A1111's built-in Lora extension)
    ``lora_unet_<module path, dots as _>.lora_down.weight`` [r, in(, kh, kw)], ``.lora_up.weight``
    [out, r(, 1, 1)], ``.alpha`` (scalar; absent = r); ``lora_te_text_model_…`` for the text encoder.
    LoCon (the LyCORIS conv extension) uses the same names on the ResNet convolutions.
diffusers (``loaders/lora_conversion_utils.py``, ``utils/state_dict_utils.py``)
    ``unet.<module>.lora.down.weight`` / ``.lora.up.weight``, ``text_encoder.<module>.lora_linear_layer
    .down.weight``, and the attention-processor files of diffusers 0.14–0.20
    (``<block>.attn1.processor.to_q_lora.down.weight``, with or without ``unet.``).
PEFT (diffusers ≥ 0.22 ``save_lora_weights``)
    ``unet.<module>.lora_A.weight`` [r, in] / ``.lora_B.weight`` [out, r]; the alphas, when written,
    in the safetensors metadata ``lora_adapter_metadata`` (``unet.lora_alpha``, ``unet.alpha_pattern``).

Not read, and refused with that reason: LyCORIS LoHa (``hada_w1_a``) and LoKr (``lokr_w1``), LoCon
with a Tucker middle weight (``lora_mid``), DoRA (``dora_scale``) — diffusers' own SD1.5 loader reads
none of them either, so there is no independent reader to hold an implementation to — and LoRAs made
for SDXL or SD2 (their layers do not fit an SD1.5 model).

A LoRA adds ``strength · (alpha / r) · up @ down`` to the weight of each layer it names; its text
encoder part uses the text strength. :class:`LoraPatcher` applies a set of them to a model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipa_studio.core.errors import ModelFileError, RequestError

# The tag reader lives in the torch-free prompt code (picture import uses it without torch).
from ipa_studio.core.prompts import PromptTag, prompt_lora_tags  # noqa: F401

UNET, TEXT = "unet", "text_encoder"
SD15_TEXT_WIDTH = 768
_FAMILIES = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}

# Roles of a key, by how it ends: (suffix, role). Longest first where one ends another.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"),
    ("_lora.up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)

# diffusers' attention-processor names → the layer they change.
_PROCESSOR_LAYERS = {
    "to_q": "to_q",
    "to_k": "to_k",
    "to_v": "to_v",
    "to_out": "to_out.0",
}
_TEXT_PROCESSOR_LAYERS = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}

_UNREADABLE = (
    ("hada_w1_a", "a LyCORIS LoHa"),
    ("lokr_w1", "a LyCORIS LoKr"),
    ("lora_mid", "a LyCORIS LoCon with Tucker (lora_mid) weights"),
    ("dora_scale", "a DoRA LoRA"),
)


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file is, for lists and menus: :func:`describe_lora`'s answer."""

    path: Path
    name: str
    """How prompts and metadata call it: the file name without its suffix (A1111's ``<lora:name>``)."""
    format: str
    """"kohya", "diffusers", "diffusers attention processors", "PEFT", "LyCORIS LoHa", … or "unknown"."""
    parts: tuple[str, ...]
    """Which models it changes: ``"unet"``, ``"text_encoder"``, or both."""
    base: str | None
    """"SD1.x", "SD2.x", "SDXL", or None when the file does not tell."""
    rank: int | None
    layers: int
    """How many layers it changes."""
    reason: str | None = None
    """Why it cannot be used, in the user's words (None: usable)."""

    @property
    def usable(self) -> bool:
        return self.reason is None

    def summary(self) -> str:
        parts = " + ".join("UNet" if p == UNET else "text encoder" for p in self.parts) or "nothing"
        text = f"{self.format} LoRA for {self.base or 'an unknown base'} ({parts}"
        text += f", rank {self.rank})" if self.rank else ")"
        return text if self.usable else f"{text} — not usable: {self.reason}"


@dataclass
class LoraLayer:
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / r`` (kohya's and PEFT's scaling; no alpha means alpha = r)."""
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def add_to_(self, weight: torch.Tensor, strength: float) -> None:
        """``weight += strength · (alpha / r) · up @ down`` in place; ``weight`` is float32, flattened
        to [out, in · kh · kw]. One fused multiply-add: no delta the size of the layer is made."""
        down = self.down.to(weight.device, torch.float32).flatten(1)
        up = self.up.to(weight.device, torch.float32).flatten(1)
        weight.addmm_(up, down, alpha=strength * self.scale)


@dataclass
class LoraWeights:
    """A LoRA read from its file: per part, {flat layer name: layer} (see :func:`flat_name`)."""

    path: Path
    name: str
    format: str
    parts: dict[str, dict[str, LoraLayer]] = field(default_factory=dict)


def flat_name(module_path: str) -> str:
    """A layer's name as kohya spells it (dots as ``_``), which every layout can be brought to:
    kohya's own names cannot be turned back into dotted paths (``down_blocks`` holds a ``_``), but
    every dotted path turns into kohya's. Text-encoder paths lose transformers 4's ``text_model.``."""
    return module_path.replace(".", "_").removeprefix("text_model_")


# ------------------------------------------------------------------------------------------ reading


def lora_format(keys: Iterable[str]) -> str | None:
    """The layout of these keys, or None when they are not a LoRA (shared with model detection)."""
    from ipa_studio.core.models.detect import lora_format as detect_format

    return detect_format(list(keys))


def _role(key: str) -> tuple[str, str] | None:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], role
    return None


def _split_part(module: str) -> tuple[str, str]:
    """(part, layer path) of one key's module name, in any layout."""
    for prefix, part in (
        ("lora_unet_", UNET),
        ("lora_te_", TEXT),
        ("lora_te1_", TEXT),
        ("unet.", UNET),
        ("text_encoder.", TEXT),
    ):
        if module.startswith(prefix):
            return part, module[len(prefix) :]
    if module.startswith(("lora_te2_", "text_encoder_2.")):
        return "text_encoder_2", module
    # attention-processor files without a prefix, PEFT files saved from the UNet alone
    if module.startswith(("text_model.", "encoder.layers.")):
        return TEXT, module
    return UNET, module


def _layer_path(part: str, path: str) -> str:
    """The layer a diffusers attention-processor name means: ``attn1.processor.to_q`` → ``attn1.to_q``."""
    if ".processor." in path:
        block, proj = path.split(".processor.", 1)
        return f"{block}.{_PROCESSOR_LAYERS.get(proj, proj)}"
    if part == TEXT:
        head, _, proj = path.rpartition(".")
        if proj in _TEXT_PROCESSOR_LAYERS and "self_attn" in head:
            return f"{head}.{_TEXT_PROCESSOR_LAYERS[proj]}"
    return path


def _peft_alphas(metadata: Mapping[str, str] | None) -> dict[str, dict[str, Any]]:
    """{part: {"lora_alpha": a, "alpha_pattern": {...}}} from diffusers' ``lora_adapter_metadata``."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            part, _, name = str(key).partition(".")
            out.setdefault(part, {})[name] = value
    return out


def _unreadable_reason(keys: Iterable[str]) -> str | None:
    keys = list(keys)
    for marker, what in _UNREADABLE:
        if any(marker in k for k in keys):
            return (
                f"it is {what}, a layout IPA Studio cannot read (diffusers cannot either); "
                "use a plain LoRA (lora_down / lora_up) of it"
            )
    return None


def _family_of(parts: Mapping[str, Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]]]) -> str | None:
    """SD1.x / SD2.x / SDXL from the width a LoRA gives the UNet's cross-attention keys."""
    if "text_encoder_2" in parts:
        return "SDXL"
    for flat, (down, _up) in parts.get(UNET, {}).items():
        if "attn2_to_k" in flat or "attn2_to_v" in flat:
            # Unknown widths (the tests' tiny models) are left to the fit check against the model.
            return _FAMILIES.get(down[1] if len(down) > 1 else 0)
    return None


def _group(
    shapes: Mapping[str, tuple[int, ...]],
) -> tuple[dict[str, dict[str, dict[str, str]]], list[str]]:
    """{part: {flat layer: {role: key}}} and the keys that are no part of any layer."""
    groups: dict[str, dict[str, dict[str, str]]] = {}
    stray = []
    for key in shapes:
        found = _role(key)
        if found is None:
            stray.append(key)
            continue
        module, role = found
        part, path = _split_part(module)
        flat = flat_name(_layer_path(part, path))
        groups.setdefault(part, {}).setdefault(flat, {})[role] = key
    return groups, stray


def describe_shapes(
    path: Path, shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None
) -> LoraInfo:
    """:func:`describe_lora` from a file's {key: shape} table (no tensors read)."""
    name = path.stem
    keys = list(shapes)
    fmt = lora_format(keys)
    if fmt is None:
        reason = "it is not a LoRA: none of its weights are LoRA layers"
        return LoraInfo(path, name, "unknown", (), None, None, 0, reason)
    unreadable = _unreadable_reason(keys)
    if unreadable:
        unet = any(k.startswith("lora_unet_") for k in keys)
        te = any(k.startswith("lora_te") for k in keys)
        parts = tuple(p for p, on in ((UNET, unet), (TEXT, te)) if on)
        base = "SDXL" if any(k.startswith(("lora_te2_", "lora_te1_")) for k in keys) else None
        return LoraInfo(path, name, fmt, parts, base, None, 0, unreadable)
    groups, stray = _group(shapes)
    pairs = {
        part: {
            flat: (shapes[roles["down"]], shapes[roles["up"]])
            for flat, roles in layers.items()
            if "down" in roles and "up" in roles
        }
        for part, layers in groups.items()
    }
    ranks = {d[0] for layers in pairs.values() for d, _ in layers.values() if d}
    base = _family_of(pairs)
    parts = tuple(p for p in (UNET, TEXT, "text_encoder_2") if pairs.get(p))
    count = sum(len(v) for v in pairs.values())
    info = dict(path=path, name=name, format=fmt, parts=parts, base=base, rank=max(ranks, default=None))
    halves = [f for layers in groups.values() for f, r in layers.items() if not {"down", "up"} <= set(r)]
    if base is not None and base != "SD1.x":
        reason = f"it is a LoRA for {base}; IPA Studio runs SD1.5 models, and its layers do not fit them"
    elif count == 0:
        reason = "it holds no complete LoRA layer (no matching down / up weights)"
    elif halves:
        reason = f"it is damaged: the layer '{halves[0]}' lacks its down or up weight"
    elif stray:
        reason = f"it holds weights that are no part of a LoRA layer (for example '{stray[0]}')"
    else:
        reason = None
    return LoraInfo(**info, layers=count, reason=reason)


def describe_lora(path: str | Path) -> LoraInfo:
    """What a LoRA file is and whether IPA Studio can apply it, reading only its header where it can
    (``.safetensors``; pickles go through the safe loader). Raises ``ModelFileError`` only for a path
    that is missing or unreadable; a file that is not a usable LoRA gets a ``reason``."""
    from ipa_studio.core.models.detect import read_safetensors_header, weight_table

    path = Path(path)
    shapes, _fmt, _dtypes = weight_table(path)
    metadata = read_safetensors_header(path)[1] if path.suffix.lower() == ".safetensors" else None
    return describe_shapes(path, shapes, metadata)


def read_lora(path: str | Path) -> LoraWeights:
    """Read a usable LoRA's tensors (safe loading). Raises ``ModelFileError`` with the reason for a
    file that is not one."""
    from ipa_studio.core.models.detect import flatten_state, read_safetensors_header
    from ipa_studio.core.models.safe_load import load_weights

    path = Path(path)
    state = flatten_state(load_weights(path))
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    metadata = read_safetensors_header(path)[1] if path.suffix.lower() == ".safetensors" else None
    info = describe_shapes(path, {k: tuple(v.shape) for k, v in tensors.items()}, metadata)
    if not info.usable:
        raise ModelFileError(f"The LoRA '{path.name}' cannot be used: {info.reason}.")
    alphas = _peft_alphas(metadata)
    groups, _ = _group({k: tuple(v.shape) for k, v in tensors.items()})
    weights = LoraWeights(path, info.name, info.format)
    for part, layers in groups.items():
        config = alphas.get(part, {})
        for flat, roles in layers.items():
            alpha = None
            if "alpha" in roles:
                alpha = float(tensors[roles["alpha"]].float().item())
                if alpha == 0:  # kohya: an alpha of 0 (or none) means alpha = rank
                    alpha = None
            elif config:
                alpha = _pattern_alpha(flat, config)
            layer = LoraLayer(tensors[roles["down"]], tensors[roles["up"]], alpha)
            weights.parts.setdefault(part, {})[flat] = layer
    return weights


def _pattern_alpha(flat: str, config: Mapping[str, Any]) -> float | None:
    """PEFT's alpha for one layer: its ``alpha_pattern`` entry, else ``lora_alpha``."""
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        key = flat_name(str(pattern))
        if flat == key or flat.endswith("_" + key):
            return float(value)
    value = config.get("lora_alpha")
    return float(value) if isinstance(value, (int, float)) else None


# ------------------------------------------------------------------------------------------ applying


@dataclass(frozen=True)
class AppliedLora:
    """One LoRA as the patcher applies it: its weights and the two strengths."""

    weights: LoraWeights
    strength: float
    text_strength: float


def _layer_table(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{flat name: Linear / Conv2d} of the layers a LoRA may change."""
    table = {}
    for path, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            table[flat_name(path)] = module
    return table


class LoraPatcher:
    """Applies LoRAs to one model's UNet and text encoder, and takes them off again exactly.

    The LoRAs are merged into the layers' weights (W₀ + Σ strength·ΔW) rather than run beside them:
    a merged layer costs nothing per denoising step (which matters most on a CPU and for few-step
    LoRAs), and every attention processor — the IP-Adapter's included, which computes its own K'/V'
    from weights a LoRA never names — sees the changed layers without knowing about LoRAs. Each
    changed weight's original tensor is kept and put back (not recomputed by subtracting the delta,
    which would not give back the same bits), so removing the LoRAs leaves exactly the base model;
    every change of LoRAs or strengths starts again from those originals, so strengths never drift.
    """

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
        self.models = {UNET: unet, TEXT: text_encoder}
        self._tables = {part: _layer_table(model) for part, model in self.models.items()}
        self._originals: dict[tuple[str, str], tuple[torch.nn.Parameter, torch.Tensor]] = {}
        self.applied: tuple[tuple[str, float, float], ...] = ()
        self.text_state: tuple[tuple[str, float], ...] = ()
        """What changes the text encoder: (LoRA, text strength) pairs; prompt encodings depend on it."""

    def check(self, lora: LoraWeights) -> None:
        """Raise ``RequestError`` when ``lora`` does not fit these models (before anything changes)."""
        for part, layers in lora.parts.items():
            table = self._tables.get(part)
            if table is None:
                raise RequestError(
                    f"The LoRA '{lora.path.name}' changes a model SD1.5 does not have ({part}); it is "
                    "made for another kind of Stable Diffusion."
                )
            for flat, layer in layers.items():
                module = table.get(flat)
                if module is None:
                    raise RequestError(
                        f"The LoRA '{lora.path.name}' does not fit this model: it changes a layer the "
                        f"model does not have ('{flat}'). It is probably made for another base model."
                    )
                weight = module.weight
                want = weight.shape[0] * weight[0].numel()
                got = layer.up.shape[0] * (layer.down[0].numel())
                if layer.up.shape[0] != weight.shape[0] or got != want or layer.up.shape[1] != layer.rank:
                    raise RequestError(
                        f"The LoRA '{lora.path.name}' does not fit this model: its layer '{flat}' is "
                        f"{tuple(layer.up.shape[:1]) + tuple(layer.down.shape[1:])} where the model's is "
                        f"{tuple(weight.shape)}. It is probably made for another base model."
                    )

    def apply(self, loras: Sequence[AppliedLora]) -> bool:
        """Make exactly ``loras`` applied (none: the base model). Returns whether anything changed."""
        key = tuple((str(a.weights.path), a.strength, a.text_strength) for a in loras)
        if key == self.applied:
            return False
        for a in loras:
            self.check(a.weights)
        # Per layer, every LoRA that changes it with its strength, so each layer is made once.
        plan: dict[tuple[str, str], list[tuple[LoraLayer, float]]] = {}
        for a in loras:
            for part, layers in a.weights.parts.items():
                strength = a.strength if part == UNET else a.text_strength
                if strength == 0:
                    continue
                for flat, layer in layers.items():
                    plan.setdefault((part, flat), []).append((layer, strength))
        with torch.no_grad():
            # The merged tensors of the previous set are written over (fp32 ones), not re-allocated:
            # a change of strength then costs the arithmetic, not gigabytes of fresh memory.
            spare = {k: param.data for k, (param, _) in self._originals.items()}
            self.restore()
            for (part, flat), changes in plan.items():
                param = self._tables[part][flat].weight
                original = param.data
                buffer = spare.pop((part, flat), None)
                if buffer is not None and buffer.dtype == torch.float32 and buffer.shape == original.shape:
                    merged = buffer.copy_(original).flatten(1)
                else:
                    merged = original.to(torch.float32, copy=True).flatten(1)
                for layer, strength in changes:
                    layer.add_to_(merged, strength)
                self._originals[(part, flat)] = (param, original)
                # A new tensor, the original kept untouched: restoring is putting it back.
                param.data = merged.reshape(original.shape).to(original.dtype)
            del spare
        self.applied = key
        self.text_state = tuple(
            (str(a.weights.path), a.text_strength)
            for a in loras
            if TEXT in a.weights.parts and a.text_strength
        )
        return True

    def restore(self) -> None:
        """Put every changed weight back as it was before any LoRA (bit for bit)."""
        for param, original in self._originals.values():
            param.data = original
        self._originals.clear()
        self.applied = ()
        self.text_state = ()


# ------------------------------------------------------------------------------------------ prompt tags


# ------------------------------------------------------------------------------------------ CLI text

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_SPEC = re.compile(rf"^(?P<path>.+?)(?::(?P<a>{_NUMBER}))?(?::(?P<b>{_NUMBER}))?$")


def parse_lora_argument(text: str) -> tuple[str, float, float | None]:
    """``FILE[:STRENGTH[:TEXT_STRENGTH]]`` → (file, strength, text strength or None). A drive letter
    (``C:\\…``) stays part of the file name: only numbers at the end count as strengths."""
    m = _SPEC.match(text.strip())
    if m is None or not m.group("path"):
        raise RequestError(f"'{text}' is not FILE[:STRENGTH[:TEXT_STRENGTH]].")
    a, b = m.group("a"), m.group("b")
    return m.group("path"), float(a) if a is not None else 1.0, float(b) if b is not None else None
