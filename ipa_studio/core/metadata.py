"""Generation settings stored in (and restored from) PNG text chunks.

Every saved image carries two text chunks:

``parameters``
    One human-readable block in the style other Stable Diffusion tools write (AUTOMATIC1111 and the
    many viewers that parse it)::

        a cat in a hat
        Negative prompt: blurry
        Steps: 30, Sampler: DPM++ 2M, Schedule type: SGM Uniform, CFG scale: 7.5, Seed: 1,
        Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, IP-Adapter scale: 0.6, ...

    It is for people and for other tools; it is lossy (names, not paths) and never read back by
    :func:`request_from_metadata`. Samplers carry the names A1111 gives them, with the schedule our
    diffusers scheduler really uses; ``Model hash`` is A1111's short sha256 (``core/hashes.py``), and
    ``Hashes`` the JSON object Civitai's extension writes (``{"model": …, "lora:NAME": …}``).

``ipa-studio``
    JSON with the whole :class:`GenerationRequest`, exact enough that
    :func:`request_from_metadata` rebuilds an equal request::

        {"format": "ipa-studio", "version": 1, "app_version": "0.1.0", "request": {...}, "extra": {...}}

Paths are stored as strings and come back as ``str`` (the engine treats ``str`` and ``Path`` alike).
An image that only existed in memory (pasted, dropped from a browser, a previous result) cannot be
stored; it is recorded as ``{"in_memory": true, "sha256": ..., "size": [w, h], "mode": ...}`` so it
can be recognised if the caller still has it (``content_hash`` gives the same key).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ipa_studio import __version__
from ipa_studio.core.errors import RequestError
from ipa_studio.core.hashes import ModelHashes, short_hash
from ipa_studio.core.images import content_hash
from ipa_studio.core.request import (
    SCHEDULERS,
    ControlSpec,
    EncoderView,
    GenerationRequest,
    HiresSpec,
    ImageSource,
    InitImage,
    LoraSpec,
    MaskSpec,
    ModelSpec,
    NegativeImage,
    Reference,
    Scale,
)

__all__ = [
    "FORMAT_VERSION",
    "JSON_KEY",
    "PARAMETERS_KEY",
    "request_from_metadata",
    "request_to_metadata",
]

PARAMETERS_KEY = "parameters"
JSON_KEY = "ipa-studio"
FORMAT_VERSION = 1
"""Bump when a stored field changes meaning or a field is renamed; adding a field with a default
does not need a bump for reading old files, but older versions will refuse the new field."""

_MODEL_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")

A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    # ours: (A1111's sampler name, A1111's "Schedule type" matching the diffusers scheduler we build
    # from the SD1.5 config). DDIM: "leading" timesteps + 1, A1111's DDIM exactly, so no schedule.
    # DPM++ 2M: DPMSolverMultistep (dpmsolver++, order 2), timesteps linspace(999, 0, n + 1)[:-1] =
    # A1111's "SGM Uniform", not Karras (use_karras_sigmas is off). Euler a: linspace(999, 0, n) =
    # A1111's "Uniform" (what its "Automatic" means for Euler a).
    "ddim": ("DDIM", None),
    "dpm++": ("DPM++ 2M", "SGM Uniform"),
    "euler-a": ("Euler a", "Uniform"),
    # LCM: A1111's (1.8+) and Forge's "LCM" sampler is the same multistep consistency sampler. TCD:
    # Forge's and ComfyUI's name; its gamma (0.3) is not a field A1111 writes.
    "lcm": ("LCM", None),
    "tcd": ("TCD", None),
}


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def request_to_metadata(
    request: GenerationRequest,
    *,
    extra: Mapping[str, Any] | None = None,
    hashes: ModelHashes | None = None,
) -> dict[str, str]:
    """PNG text chunks describing ``request``: ``"parameters"`` (human) and ``"ipa-studio"`` (JSON).

    ``extra`` holds facts about the result that are not part of the request (the time it took, the
    index of the image in a batch, ...). They are appended to the human line as ``Key: value`` and
    stored under ``"extra"`` in the JSON; values that JSON cannot hold are stored as strings.

    ``hashes`` are the models' sha256; when not given they are looked up in the hash cache or
    computed (reading each model file once per change), so call this off the GUI thread.
    """
    extra = dict(extra or {})
    if hashes is None:
        from ipa_studio.core.hashes import model_hashes

        hashes = model_hashes(
            request.models.base,
            request.models.adapter,
            [spec.path for spec in request.loras if spec.enabled],
            request.embeddings,
        )
    document = {
        "format": "ipa-studio",
        "version": FORMAT_VERSION,
        "app_version": __version__,
        "mode": request.mode,
        "request": _encode(request),
        "extra": extra,
        "hashes": _encode(hashes),
    }
    return {
        PARAMETERS_KEY: _parameters_text(request, extra, hashes),
        JSON_KEY: json.dumps(document, ensure_ascii=False, default=str, allow_nan=False),
    }


def _encode(value: Any) -> Any:
    """Dataclasses → dicts, field by field, so a field added to the request is stored without
    anyone remembering to add it here."""
    if isinstance(value, Image.Image):
        return {
            "in_memory": True,
            "sha256": content_hash(value),
            "size": list(value.size),
            "mode": value.mode,
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"A setting has the value {value}, which cannot be saved with the image.")
    return value


def lora_tags(request: GenerationRequest) -> str:
    """The request's enabled LoRAs as A1111 writes them in its prompt: ``<lora:name:w>``, or
    ``<lora:name:te:unet>`` when the text strength differs (A1111's built-in Lora extension,
    ``extensions-builtin/Lora/networks.py``: the first number is the text-encoder multiplier, the
    second the UNet's, which defaults to the first)."""
    from ipa_studio.core.lora import prompt_lora_tags

    written = {tag.name.lower() for tag in prompt_lora_tags(request.prompt)}
    tags = []
    for spec in request.loras:
        name = _model_name(spec.path)
        if not spec.enabled or name.lower() in written:
            continue  # a LoRA the prompt already names with its own tag keeps that tag
        text = spec.strength if spec.text_strength is None else spec.text_strength
        if text == spec.strength:
            tags.append(f"<lora:{name}:{_num(spec.strength)}>")
        else:
            tags.append(f"<lora:{name}:{_num(text)}:{_num(spec.strength)}>")
    return " ".join(tags)


def _parameters_text(request: GenerationRequest, extra: Mapping[str, Any], hashes: ModelHashes) -> str:
    tags = lora_tags(request)
    lines = [f"{request.prompt} {tags}".strip() if tags else request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    models = request.models
    sampler, schedule = A1111_SAMPLERS[request.scheduler]
    # A1111's order first (its readers expect nothing else, but people compare lines by eye).
    fields: list[tuple[str, Any]] = [("Steps", request.steps), ("Sampler", sampler)]
    if schedule is not None:
        fields.append(("Schedule type", schedule))
    fields += [
        ("CFG scale", _num(request.guidance)),
        ("Seed", request.seed),
        ("Size", f"{request.width}x{request.height}"),
    ]
    if hashes.base is not None:
        fields.append(("Model hash", short_hash(hashes.base)))
    fields += [
        ("Model", _model_name(models.base)),
        ("IP-Adapter scale", _scale_text(request.scale)),
    ]
    if models.adapter is not None:
        fields.append(("Adapter", _model_name(models.adapter)))
        if hashes.adapter is not None:
            fields.append(("Adapter hash", short_hash(hashes.adapter)))
    if models.image_encoder is not None:
        fields.append(("Image encoder", _model_name(models.image_encoder)))
    if request.references:
        # "; " rather than ", ": simple readers (sd-parsers) split the whole line at every comma.
        weights = "; ".join(_num(r.weight) for r in request.references)
        fields.append(("Reference weights", weights))
    if request.mode != "txt2img":
        fields.append(("Mode", request.mode))
    if request.init is not None:
        # The name other tools use for img2img strength.
        fields.append(("Denoising strength", _num(request.init.strength)))
    for i, control in enumerate(request.controls):
        described = (
            f"Model: {_model_name(control.model)}, Weight: {_num(control.scale)}, "
            f"Start: {_num(control.start)}, End: {_num(control.end)}"
        )
        fields.append((f"ControlNet {i}", described))
    if request.num_images != 1:
        fields.append(("Batch size", request.num_images))
    if hashes.lora_a1111:
        # A1111's own fields: "name: hash" pairs, 12 digits, joined by ", " inside one quoted value.
        fields.append(("Lora hashes", ", ".join(f"{n}: {h[:12]}" for n, h in hashes.lora_a1111)))
    if hashes.embeddings:
        fields.append(("TI hashes", ", ".join(f"{n}: {h[:12]}" for n, h in hashes.embeddings)))
    fields.extend(_image_prompt_fields(request))
    fields.extend((str(k), v) for k, v in extra.items())
    fields.append(("Version", f"ipa-studio {__version__}"))
    text = ", ".join(f"{key}: {_quote(str(value))}" for key, value in fields)
    site_hashes = _site_hashes(hashes)
    if site_hashes:
        # Written last and unquoted, as Civitai's extension writes it; readers find it by its braces.
        text += f", Hashes: {json.dumps(site_hashes, ensure_ascii=False)}"
    lines.append(text)
    return "\n".join(lines)


def _site_hashes(hashes: ModelHashes) -> dict[str, str]:
    """Civitai's ``Hashes`` object: the short hashes of the checkpoint and of each LoRA."""
    out: dict[str, str] = {}
    if hashes.base is not None:
        out["model"] = short_hash(hashes.base)
    for name, h in hashes.loras:
        out[f"lora:{name}"] = short_hash(h)
    for name, h in hashes.embeddings:
        out[f"embed:{name}"] = short_hash(h)
    return out


def _num(value: float) -> str:
    return f"{value:g}"


# --- image-prompt controls (start/end, regions, views, negative image, second pass) ---


def _image_prompt_fields(request: GenerationRequest) -> list[tuple[str, Any]]:
    """The image-prompt controls in the human line, each only when it differs from its default."""
    refs = request.references
    out: list[tuple[str, Any]] = []
    if any(r.start != 0 or r.end != 1 for r in refs):
        out.append(("Reference windows", ", ".join(f"{_num(r.start)}-{_num(r.end)}" for r in refs)))
    if any(r.mask is not None for r in refs):
        out.append(("Reference masks", ", ".join("yes" if r.mask is not None else "no" for r in refs)))
    if any(r.view != EncoderView() for r in refs):
        from ipa_studio.core.references import view_text

        out.append(("Reference views", ", ".join(view_text(r.view) for r in refs)))
    negative = request.negative_image
    if negative is not None:
        what = "image" if negative.image is not None else "references"
        out.append(("Negative image", what + (f", noise {_num(negative.noise)}" if negative.noise else "")))
    hires = request.hires
    if hires is not None:
        # The names AUTOMATIC1111 writes for its hires fix.
        out.append(("Hires upscale", _num(hires.scale)))
        out.append(("Hires steps", hires.steps or request.steps))
        out.append(("Hires upscaler", hires.upscaler))
        out.append(("Hires strength", _num(hires.strength)))
    return out


def _scale_text(scale: Scale) -> str:
    if isinstance(scale, Mapping):
        return "; ".join(f"{k}={_num(v)}" for k, v in scale.items())
    return _num(scale)


def _model_name(model: str | Path) -> str:
    """A short name for people: the file or folder name without a weights suffix."""
    name = Path(str(model).rstrip("/\\")).name or str(model)
    for suffix in _MODEL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _quote(text: str) -> str:
    # Same rule as AUTOMATIC1111's parser: a value holding the separators is written as JSON.
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------

MissingPolicy = Literal["raise", "drop"]


def request_from_metadata(
    meta: Mapping[str, str],
    *,
    images: Mapping[str, ImageSource] | None = None,
    missing: MissingPolicy = "raise",
) -> GenerationRequest:
    """Rebuild the request stored by :func:`request_to_metadata` (e.g. from :func:`read_png_metadata`).

    Images that were only in memory when the picture was made are looked up in ``images`` by their
    ``content_hash``. Any still missing are handled by ``missing``:

    * ``"raise"`` (default): :class:`RequestError` naming them, because a request without its images
      would silently make a different picture;
    * ``"drop"``: leave them out: a missing reference or control is removed, a missing mask turns
      inpainting into img2img, and a missing init image removes the mask too (a mask means nothing
      without the image it belongs to). Use this to reopen the other settings in the GUI.
    """
    if missing not in ("raise", "drop"):
        raise ValueError(f"missing must be 'raise' or 'drop', not {missing!r}")
    raw = meta.get(JSON_KEY)
    if raw is None:
        raise RequestError(
            "This image holds no IPA Studio settings: it was not made by IPA Studio, or its "
            "metadata was removed when it was edited or shared."
        )
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RequestError(f"The IPA Studio settings in this image are damaged ({exc}).") from exc
    if not isinstance(document, dict) or not isinstance(document.get("request"), dict):
        raise RequestError("The IPA Studio settings in this image are damaged (no request found).")
    version = document.get("version")
    if not isinstance(version, int) or version < 1:
        raise RequestError("The IPA Studio settings in this image are damaged (no format version).")
    newer = version > FORMAT_VERSION

    reader = _Reader(images or {}, missing=missing, newer=newer, app_version=document.get("app_version"))
    try:
        return reader.request(document["request"])
    except RequestError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise RequestError(f"The IPA Studio settings in this image are damaged ({exc}).") from exc


class _MissingImageError(Exception):
    """Internal signal: an in-memory image the caller did not supply. Never leaves this module."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        super().__init__(record.get("sha256"))
        self.record = record


class _Reader:
    def __init__(
        self,
        images: Mapping[str, ImageSource],
        *,
        missing: MissingPolicy,
        newer: bool,
        app_version: Any,
    ) -> None:
        self.images = images
        self.missing = missing
        self.newer = newer
        self.app_version = app_version
        self.lost: list[str] = []

    # --- the request and its parts ---

    def request(self, data: Mapping[str, Any]) -> GenerationRequest:
        references: list[Reference] = []
        for i, item in enumerate(self._list(data.get("references", []), "references")):
            ref = self._optional(lambda item=item, i=i: self._reference(item, i + 1))
            if ref is None:
                self.lost.append(f"reference image {i + 1}")
            else:
                references.append(ref)
        negative = None
        if data.get("negative_image") is not None:
            negative = self._optional(lambda: self._negative(data["negative_image"]))
            if negative is None:
                self.lost.append("negative image")
        controls: list[ControlSpec] = []
        for i, item in enumerate(self._list(data.get("controls", []), "controls")):
            control = self._optional(
                lambda item=item: self._build(ControlSpec, item, {"image": self.image, "model": _path})
            )
            if control is None:
                self.lost.append(f"ControlNet image {i + 1}")
            else:
                controls.append(control)
        init = None
        if data.get("init") is not None:
            init = self._optional(lambda: self._build(InitImage, data["init"], {"image": self.image}))
            if init is None:
                self.lost.append("init image")
        mask = None
        if data.get("mask") is not None:
            mask = self._optional(lambda: self._build(MaskSpec, data["mask"], {"image": self.image}))
            if mask is None:
                self.lost.append("mask")
            elif init is None:
                # Only reachable under "drop": the init image was lost, and a mask alone is not a job.
                mask = None

        if self.lost and self.missing == "raise":
            raise RequestError(
                "These settings cannot be restored completely: the "
                + _join(self.lost)
                + (" was" if len(self.lost) == 1 else " were")
                + " only in memory (pasted or dropped) and not saved as files. Open the settings "
                "without them, or supply the images."
            )

        converters: dict[str, Callable[[Any], Any]] = {
            "models": lambda v: self._build(
                ModelSpec, v, {"base": _path, "adapter": _opt_path, "image_encoder": _opt_path}
            ),
            "scale": _scale,
            "scheduler": _scheduler,
            "hires": lambda v: None if v is None else self._build(HiresSpec, v, {}),
            "loras": lambda v: tuple(
                self._build(LoraSpec, item, {"path": _path, "text_strength": _opt_number})
                for item in self._list(v, "loras")
            ),
            "embeddings": lambda v: tuple(_path(item) for item in self._list(v, "embeddings")),
        }
        decided = {
            "references": tuple(references),
            "controls": tuple(controls),
            "init": init,
            "mask": mask,
            "negative_image": negative,
        }
        return self._build(GenerationRequest, data, converters, decided=decided)

    # --- image-prompt controls ---

    def _reference(self, item: Any, index: int) -> Reference:
        """A reference with its view and mask; a lost in-memory mask (under "drop") leaves the
        reference acting everywhere rather than losing the reference."""

        def mask(value: Any) -> ImageSource | None:
            if value is None:
                return None
            found = self._optional(lambda: self.image(value))
            if found is None:
                self.lost.append(f"mask of reference image {index}")
            return found

        return self._build(Reference, item, {"image": self.image, "mask": mask, "view": self._view})

    def _view(self, value: Any) -> EncoderView:
        view = self._build(EncoderView, value, {"box": _box})
        return view

    def _negative(self, value: Any) -> NegativeImage:
        return self._build(NegativeImage, value, {"image": lambda v: None if v is None else self.image(v)})

    def image(self, value: Any) -> ImageSource:
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping) and value.get("in_memory"):
            found = self.images.get(str(value.get("sha256")))
            if found is not None:
                return found
            raise _MissingImageError(value)
        raise TypeError(f"an image must be a path or an in-memory record, not {value!r}")

    # --- generic field handling ---

    def _build(
        self,
        cls: type,
        data: Any,
        converters: Mapping[str, Callable[[Any], Any]],
        *,
        decided: Mapping[str, Any] | None = None,
    ) -> Any:
        """Make ``cls`` from a JSON object: nested fields through ``converters``, fields already
        worked out by the caller from ``decided``, and every other field checked against the type of
        its default, so that a wrong type fails here, clearly."""
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__} must be an object, not {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            if self.newer:
                raise RequestError(
                    f"These settings were saved by a newer IPA Studio ({self.app_version}) and use "
                    f"options this version does not have ({', '.join(unknown)}). Update IPA Studio "
                    "to open them."
                )
            raise RequestError(
                f"The IPA Studio settings in this image are damaged (unknown setting "
                f"{', '.join(unknown)} in {cls.__name__})."
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            convert = converters.get(name)
            kwargs[name] = convert(value) if convert else _scalar(cls, fields[name], value)
        kwargs.update(decided or {})
        return cls(**kwargs)

    def _optional(self, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except _MissingImageError:
            return None

    @staticmethod
    def _list(value: Any, name: str) -> list[Any]:
        if not isinstance(value, list):
            raise TypeError(f"{name} must be a list, not {value!r}")
        return value


def _scalar(cls: type, field: dataclasses.Field[Any], value: Any) -> Any:
    default = field.default
    where = f"{cls.__name__}.{field.name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false, not {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be a whole number, not {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, not {value!r}")
        return float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise TypeError(f"{where} must be text, not {value!r}")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a path must be text, not {value!r}")
    return value


def _box(value: Any) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
    ):
        raise TypeError(f"a crop square must be three whole numbers, not {value!r}")
    return (value[0], value[1], value[2])


def _opt_number(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"a strength must be a number, not {value!r}")
    return float(value)


def _opt_path(value: Any) -> str | None:
    return None if value is None else _path(value)


def _scale(value: Any) -> Scale:
    if isinstance(value, bool):
        raise TypeError(f"the IP-Adapter scale must be a number, not {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for key, v in value.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"the IP-Adapter scale of {key!r} must be a number, not {v!r}")
            out[str(key)] = float(v)
        return out
    raise TypeError(f"the IP-Adapter scale must be a number or a mapping, not {value!r}")


def _scheduler(value: Any) -> str:
    if value not in SCHEDULERS:
        raise RequestError(
            f"These settings use the sampler {value!r}, which this version of IPA Studio does not "
            f"have (it has {', '.join(SCHEDULERS)})."
        )
    return value


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
