"""Settings read from pictures made by other programs: AUTOMATIC1111 (and the many tools that write
its format), ComfyUI and InvokeAI.

What each stores in a PNG, from their own code:

AUTOMATIC1111 — a ``parameters`` text chunk (``modules/processing.py create_infotext``)::

    prompt (one or more lines)
    Negative prompt: negative (one or more lines)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, ...

  read by A1111's own rule (``modules/infotext_utils.py parse_generation_parameters``): the last
  line holds the settings when at least three ``Key: value`` pairs are found in it; a value in double
  quotes is JSON text (it may hold commas). Before A1111 1.9 the schedule was part of the sampler's
  name (``DPM++ 2M Karras``).

ComfyUI — ``prompt`` (the graph that ran, in the API format: ``{node id: {"class_type", "inputs"}}``,
  an input being a value or a link ``[node id, output index]``) and ``workflow`` (the editor's graph:
  ``nodes`` with ``widgets_values`` and ``inputs[].link``, and ``links`` as ``[id, from node, from
  slot, to node, to slot, type]``), both JSON, written by ``nodes.py SaveImage``. The settings are on
  the ``KSampler`` node (``seed, steps, cfg, sampler_name, scheduler, positive, negative,
  latent_image, model``), the prompts on ``CLIPTextEncode`` (``text``), the size on
  ``EmptyLatentImage``, the checkpoint on ``CheckpointLoaderSimple`` (``ckpt_name``).

InvokeAI — ``invokeai_metadata``: JSON of ``CoreMetadataInvocation`` (``invokeai/app/invocations/
  metadata.py``): ``positive_prompt, negative_prompt, width, height, seed, steps, cfg_scale,
  scheduler`` and ``model`` (``{"name", "hash", ...}``; 3.x: ``{"model_name", ...}``).

Samplers map to ours where the method is the same (``DDIM``, ``DPM++ 2M`` / ``dpmpp_2m``, ``Euler a``
/ ``euler_ancestral`` / ``euler_a``); a different noise schedule is mentioned in ``notes``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ForeignLora", "ForeignSettings", "parse_a1111_parameters", "read_foreign_settings"]


@dataclass(frozen=True)
class ForeignLora:
    """A LoRA another program's picture names: A1111's ``<lora:name:te:unet>`` prompt tags (with its
    ``Lora hashes`` field), ComfyUI's ``LoraLoader`` / ``LoraLoaderModelOnly`` nodes on the model's
    path (``lora_name``, ``strength_model``, ``strength_clip``)."""

    name: str
    """The file name without its suffix (as A1111 writes it)."""
    strength: float = 1.0
    text_strength: float = 1.0
    hash: str | None = None
    """Lower-case hex as stored (A1111: 12 digits of its addnet hash)."""


@dataclass(frozen=True)
class ForeignSettings:
    """What another program's picture says about how it was made (``None``: not stored)."""

    source: str
    """"AUTOMATIC1111", "ComfyUI" or "InvokeAI"."""
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    """The sampler as that program names it."""
    schedule: str | None = None
    """Its noise schedule, as named there ("Karras", "karras", …)."""
    scheduler: str | None = None
    """Ours: "ddim", "dpm++" or "euler-a"; ``None`` when we have no such sampler."""
    model_name: str | None = None
    model_hash: str | None = None
    """Lower-case hex as stored: A1111's 10-digit short hash, or a full sha256."""
    notes: tuple[str, ...] = ()
    loras: tuple[ForeignLora, ...] = ()


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------

_SAMPLERS = {
    # A1111 names, ComfyUI sampler_name, InvokeAI scheduler → ours
    "ddim": "ddim",
    "dpm++ 2m": "dpm++",
    "dpmpp_2m": "dpm++",
    "euler a": "euler-a",
    "euler_ancestral": "euler-a",
    "euler_a": "euler-a",
    "lcm": "lcm",
    "tcd": "tcd",
}
_INVOKE_SCHEDULERS = {"dpmpp_2m_k": ("dpm++", "karras")}
_OUR_LABELS = {"ddim": "DDIM", "dpm++": "DPM++ 2M", "euler-a": "Euler a", "lcm": "LCM", "tcd": "TCD"}
_OUR_SCHEDULES = {"dpm++": "SGM Uniform", "euler-a": "Uniform"}
# Schedules that are ours under another name (ComfyUI's "normal" is A1111's "Uniform").
_SAME_SCHEDULE = {
    "dpm++": {"sgmuniform"},
    "euler-a": {"uniform", "normal", "automatic"},
}
_OLD_A1111_SUFFIXES = (" Karras", " Exponential", " SGM Uniform", " Uniform")


def _norm(schedule: str) -> str:
    return re.sub(r"[\s_\-]", "", schedule.lower())


def _map_sampler(sampler: str | None, schedule: str | None) -> tuple[str | None, list[str]]:
    if not sampler:
        return None, []
    ours = _SAMPLERS.get(sampler.strip().lower())
    if ours is None:
        return None, [
            f"Its sampler, {sampler}, is not available here; the sampler was left as it was "
            "(the picture will differ)."
        ]
    notes = []
    if schedule and ours in _SAME_SCHEDULE and _norm(schedule) not in _SAME_SCHEDULE[ours]:
        notes.append(
            f"It used the {schedule} noise schedule; IPA Studio's {_OUR_LABELS[ours]} uses "
            f"{_OUR_SCHEDULES[ours]}, so the picture will differ somewhat."
        )
    return ours, notes


# --------------------------------------------------------------------------------------------------
# AUTOMATIC1111
# --------------------------------------------------------------------------------------------------

# A1111's re_param: a key, ":", then a double-quoted JSON string or anything up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_HASHES = re.compile(r"(?:,\s*)?Hashes:\s*(\{[^}]*\})\s*")


def parse_a1111_parameters(text: str) -> tuple[str, str, dict[str, Any]]:
    """(prompt, negative prompt, settings) from an A1111 ``parameters`` text, by A1111's rule.

    Quoted values come back unquoted; ``Hashes`` (Civitai's JSON object) comes back as a dict.
    """
    *lines, last = text.strip().split("\n")
    hashes: dict[str, Any] | None = None
    found = _HASHES.search(last)
    if found:
        try:
            parsed = json.loads(found.group(1))
            hashes = parsed if isinstance(parsed, dict) else None
        except ValueError:
            hashes = None
        last_without = last[: found.start()] + last[found.end() :]
    else:
        last_without = last
    if len(_PARAM.findall(last_without)) < 3:
        lines.append(last)
        last_without, hashes = "", None
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    settings: dict[str, Any] = {}
    for key, value in _PARAM.findall(last_without):
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        settings[key.strip()] = value
    if hashes is not None:
        settings["Hashes"] = hashes
    return "\n".join(prompt), "\n".join(negative), settings


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def _hex(value: Any) -> str | None:
    text = str(value or "").strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    return text if re.fullmatch(r"[0-9a-f]{8,64}", text) else None


def _a1111_loras(prompt: str | None, hashes: Any) -> tuple[ForeignLora, ...]:
    """The prompt's ``<lora:…>`` tags, each with its hash from ``Lora hashes: "name: hash, …"``."""
    from ipa_studio.core.prompts import prompt_lora_tags

    known: dict[str, str] = {}
    if isinstance(hashes, str):
        for pair in hashes.split(","):
            name, sep, value = pair.rpartition(":")
            if sep and name.strip():
                known[name.strip().lower()] = value.strip().lower()
    return tuple(
        ForeignLora(t.name, t.strength, t.text_strength, _hex(known.get(t.name.lower())))
        for t in prompt_lora_tags(prompt or "")
    )


def _from_a1111(text: str) -> ForeignSettings | None:
    prompt, negative, s = parse_a1111_parameters(text)
    if not s:
        return None
    sampler, schedule = s.get("Sampler"), s.get("Schedule type")
    if sampler and not schedule:
        for suffix in _OLD_A1111_SUFFIXES:
            if sampler.endswith(suffix):
                sampler, schedule = sampler[: -len(suffix)], suffix.strip()
                break
    # A1111's "Automatic" is each sampler's own default: Karras for DPM++ 2M.
    automatic_karras = sampler == "DPM++ 2M" and str(schedule).lower() == "automatic"
    ours, notes = _map_sampler(sampler, "Karras" if automatic_karras else schedule)
    width = height = None
    size = _SIZE.match(str(s.get("Size", "")).strip())
    if size:
        width, height = int(size.group(1)), int(size.group(2))
    model_hash = _hex(s.get("Model hash"))
    hashes = s.get("Hashes")
    if model_hash is None and isinstance(hashes, dict):
        model_hash = _hex(hashes.get("model"))
    return ForeignSettings(
        source="AUTOMATIC1111",
        loras=_a1111_loras(prompt, s.get("Lora hashes")),
        prompt=prompt,
        negative_prompt=negative,
        seed=_int(s.get("Seed")),
        steps=_int(s.get("Steps")),
        guidance=_float(s.get("CFG scale")),
        width=width,
        height=height,
        sampler=sampler,
        schedule=schedule,
        scheduler=ours,
        model_name=s.get("Model") or None,
        model_hash=model_hash,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------
# ComfyUI
# --------------------------------------------------------------------------------------------------

_SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")


class _ApiGraph:
    """The ``prompt`` chunk: nodes by id, inputs as values or ``[node id, output]`` links."""

    def __init__(self, nodes: Mapping[str, Any]) -> None:
        self.nodes = {str(k): v for k, v in nodes.items() if isinstance(v, Mapping)}

    @staticmethod
    def _is_link(value: Any) -> bool:
        return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))

    def node(self, link: Any) -> Mapping[str, Any] | None:
        return self.nodes.get(str(link[0])) if self._is_link(link) else None

    def inputs(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        value = node.get("inputs")
        return value if isinstance(value, Mapping) else {}

    def value(self, node: Mapping[str, Any], name: str, depth: int = 0) -> Any:
        """An input's value, following a link to a primitive node (a "seed" or "text" node)."""
        value = self.inputs(node).get(name)
        if not self._is_link(value) or depth > 8:
            return value
        source = self.node(value)
        if source is None:
            return None
        inputs = self.inputs(source)
        for key in (name, "value", "seed", "noise_seed", "text", "string", "int", "float"):
            if key in inputs:
                return self.value(source, key, depth + 1)
        return None

    def find_upstream(self, link: Any, wanted: set[str], via: tuple[str, ...], depth: int = 0) -> Any:
        """The first node of a class in ``wanted`` reached from ``link`` through inputs ``via``."""
        node = self.node(link)
        if node is None or depth > 32:
            return None
        if node.get("class_type") in wanted:
            return node
        for name in via:
            found = self.find_upstream(self.inputs(node).get(name), wanted, via, depth + 1)
            if found is not None:
                return found
        return None

    def text(self, link: Any) -> str | None:
        via = ("conditioning", "conditioning_1", "conditioning_2", "conditioning_to", "positive", "negative")
        node = self.find_upstream(link, {"CLIPTextEncode"}, via)
        if node is None:
            return None
        text = self.value(node, "text")
        return text if isinstance(text, str) else None

    def loras(self, link: Any) -> tuple[ForeignLora, ...]:
        """The LoRA loaders on the model's path from the sampler to the checkpoint, nearest the
        checkpoint first (the order they are applied in)."""
        out: list[ForeignLora] = []
        node, depth = self.node(link), 0
        while node is not None and depth < 32:
            kind = node.get("class_type")
            if kind in ("LoraLoader", "LoraLoaderModelOnly"):
                name = self.value(node, "lora_name")
                unet = _float(self.value(node, "strength_model"))
                text = _float(self.value(node, "strength_clip")) if kind == "LoraLoader" else 0.0
                if isinstance(name, str):
                    out.append(
                        ForeignLora(_stem(name), 1.0 if unet is None else unet, 1.0 if text is None else text)
                    )
            node, depth = self.node(self.inputs(node).get("model")), depth + 1
        return tuple(reversed(out))

    def sampler(self) -> Mapping[str, Any] | None:
        samplers = [n for n in self.nodes.values() if n.get("class_type") in _SAMPLER_NODES]
        # With a second pass (hires fix) the first stage is the one that starts from an empty latent.
        for node in samplers:
            if self.find_upstream(self.inputs(node).get("latent_image"), {"EmptyLatentImage"}, ()):
                return node
        return samplers[0] if samplers else None


def _from_comfy_prompt(graph: _ApiGraph) -> ForeignSettings | None:
    node = graph.sampler()
    if node is None:
        return None
    inputs = graph.inputs(node)
    seed = graph.value(node, "seed" if "seed" in inputs else "noise_seed")
    sampler, schedule = graph.value(node, "sampler_name"), graph.value(node, "scheduler")
    ours, notes = _map_sampler(sampler if isinstance(sampler, str) else None, schedule)
    latent = graph.find_upstream(inputs.get("latent_image"), {"EmptyLatentImage"}, ("samples",))
    model = graph.find_upstream(
        inputs.get("model"), {"CheckpointLoaderSimple", "CheckpointLoader"}, ("model",)
    )
    ckpt = graph.value(model, "ckpt_name") if model is not None else None
    return ForeignSettings(
        source="ComfyUI",
        loras=graph.loras(inputs.get("model")),
        prompt=graph.text(inputs.get("positive")),
        negative_prompt=graph.text(inputs.get("negative")),
        seed=_int(seed),
        steps=_int(graph.value(node, "steps")),
        guidance=_float(graph.value(node, "cfg")),
        width=_int(graph.value(latent, "width")) if latent is not None else None,
        height=_int(graph.value(latent, "height")) if latent is not None else None,
        sampler=sampler if isinstance(sampler, str) else None,
        schedule=schedule if isinstance(schedule, str) else None,
        scheduler=ours,
        model_name=_stem(ckpt) if isinstance(ckpt, str) else None,
        notes=tuple(notes),
    )


# The editor's graph keeps a node's settings as a list in the order of its widgets.
_WIDGETS = {
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": (
        "add_noise",
        "noise_seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
    ),
    "CLIPTextEncode": ("text",),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "LoraLoader": ("lora_name", "strength_model", "strength_clip"),
    "LoraLoaderModelOnly": ("lora_name", "strength_model"),
}


def _workflow_to_api(workflow: Mapping[str, Any]) -> _ApiGraph:
    """The editor's graph rewritten in the ``prompt`` chunk's shape, for the nodes read here."""
    links: dict[Any, tuple[Any, Any]] = {}
    for link in workflow.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            links[link[0]] = (link[1], link[2])
    nodes: dict[str, Any] = {}
    for node in workflow.get("nodes") or []:
        if not isinstance(node, Mapping):
            continue
        kind = node.get("type")
        inputs: dict[str, Any] = {}
        for slot in node.get("inputs") or []:
            if isinstance(slot, Mapping) and slot.get("link") in links:
                source, output = links[slot["link"]]
                inputs[str(slot.get("name"))] = [str(source), output]
        values = node.get("widgets_values")
        if isinstance(values, list):
            for name, value in zip(_WIDGETS.get(kind, ()), values, strict=False):
                inputs.setdefault(name, value)
        nodes[str(node.get("id"))] = {"class_type": kind, "inputs": inputs}
    return _ApiGraph(nodes)


def _from_comfy(meta: Mapping[str, str]) -> ForeignSettings | None:
    for key, convert in (("prompt", _ApiGraph), ("workflow", _workflow_to_api)):
        raw = meta.get(key)
        if raw is None:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        if isinstance(data, Mapping):
            found = _from_comfy_prompt(convert(data))
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------------------------------
# InvokeAI
# --------------------------------------------------------------------------------------------------


def _from_invokeai(raw: str) -> ForeignSettings | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, Mapping):
        return None
    name = str(data.get("scheduler") or "") or None
    if name in _INVOKE_SCHEDULERS:
        sampler_key, schedule = _INVOKE_SCHEDULERS[name]
        ours, notes = _map_sampler(_OUR_LABELS[sampler_key], schedule)
    else:
        # InvokeAI's ddim / dpmpp_2m / euler_a are diffusers' schedulers with their default
        # settings, as ours: same method and schedule.
        schedule = None
        ours, notes = _map_sampler(name, None)
    model = data.get("model") if isinstance(data.get("model"), Mapping) else {}
    model_name = model.get("name") or model.get("model_name")
    return ForeignSettings(
        source="InvokeAI",
        prompt=data.get("positive_prompt") if isinstance(data.get("positive_prompt"), str) else None,
        negative_prompt=data.get("negative_prompt") if isinstance(data.get("negative_prompt"), str) else None,
        seed=_int(data.get("seed")),
        steps=_int(data.get("steps")),
        guidance=_float(data.get("cfg_scale")),
        width=_int(data.get("width")),
        height=_int(data.get("height")),
        sampler=name,
        schedule=schedule,
        scheduler=ours,
        model_name=str(model_name) if model_name else None,
        model_hash=_hex(model.get("hash")),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------


def _stem(name: str) -> str:
    """``sd15/dreamshaper_8.safetensors`` (``/`` or ``\\``) → ``dreamshaper_8``."""
    base = re.split(r"[\\/]", name)[-1]
    return re.sub(r"\.(safetensors|ckpt|pt|pth|bin)$", "", base, flags=re.I)


def read_foreign_settings(meta: Mapping[str, str]) -> ForeignSettings | None:
    """The settings another program stored in a PNG's text chunks, or ``None`` when there are none.

    InvokeAI's own chunk comes first, then an A1111-style ``parameters`` chunk (which ComfyUI
    workflows that save "A1111 metadata" write as well), then ComfyUI's graphs.
    """
    if "invokeai_metadata" in meta:
        found = _from_invokeai(meta["invokeai_metadata"])
        if found is not None:
            return found
    if "parameters" in meta:
        found = _from_a1111(meta["parameters"])
        if found is not None:
            return found
    return _from_comfy(meta)
