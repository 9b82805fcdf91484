"""The generation engine: loads components once, runs every mode from one immutable request.

One denoising loop serves text-to-image, img2img, inpainting (9-channel inpaint UNets and ordinary
UNets) and ControlNet; the modes differ only in how the first latents are made, what is
concatenated to the UNet input and which residuals are added. The loop reproduces diffusers'
pipelines operation for operation (same random draws in the same order), which is what lets the
tests hold it to diffusers' own IP-Adapter implementation.
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ipa_studio.core import compose, hires
from ipa_studio.core.adapter import (
    InstalledAdapter,
    IPAdapter,
    install_adapter,
    read_checkpoint,
)
from ipa_studio.core.adapter.checkpoint import check_fits
from ipa_studio.core.devices import default_dtype, pick_device
from ipa_studio.core.errors import Cancelled, RequestError
from ipa_studio.core.image_prompt import ImagePrompt, PromptPart, in_window
from ipa_studio.core.images import content_hash
from ipa_studio.core.lora import AppliedLora, LoraPatcher, LoraWeights, read_lora
from ipa_studio.core.models.loader import BaseModel, load_base_model, load_controlnet, load_image_encoder
from ipa_studio.core.prepare import Prepared, PreparedReference, prepare
from ipa_studio.core.prompts import encode_prompt, same_length
from ipa_studio.core.references import (
    ReferenceStore,
    encoder_fingerprint,
    encoder_inputs,
    feature_key,
    noised,
    normalise,
    view_text,
)
from ipa_studio.core.regions import RegionMask
from ipa_studio.core.request import EncoderView, GenerationRequest, ImageSource

TCD_GAMMA = 0.3
"""TCD's stochasticity (diffusers' ``eta``; 0 = deterministic multistep, 1 = ancestral-like)."""

# Latent → RGB for a cheap live preview (SD1.5 latent space; rows = latent channels).
PREVIEW_MATRIX = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


@dataclass(frozen=True)
class StepInfo:
    """Progress after one denoising step. ``preview`` is a small RGB image of the first result."""

    step: int
    total: int
    elapsed: float
    preview: Image.Image | None


@dataclass
class GenerationResult:
    images: list[Image.Image]
    latents: torch.Tensor
    request: GenerationRequest
    seconds: float
    notices: list[str] = field(default_factory=list)
    """Things the user should know that did not stop the job (e.g. a mask that was scaled)."""


@dataclass
class EngineStats:
    """Counters that let tests and benchmarks see what work really happened."""

    image_encoder_calls: int = 0
    projection_calls: int = 0
    text_encoder_calls: int = 0
    components_loaded: list[str] = field(default_factory=list)
    base_cache_hits: int = 0
    """Base-model switches served from the kept previous model instead of reading files."""


def base_model_bytes(base: BaseModel) -> int:
    """Bytes of the weights and buffers of a base model's UNet, VAE and text encoder."""
    total = 0
    for module in (base.unet, base.vae, base.text_encoder):
        for t in [*module.parameters(), *module.buffers()]:
            total += t.numel() * t.element_size()
    return total


def _available_ram() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with accelerate; without it, keep nothing rather than guess
        return 0


def _disk_signature(path: Path) -> tuple:
    """(size, mtime) of the model's files: a kept model whose files changed on disk is read again."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    try:
        return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        return ()


def latents_to_preview(latents: torch.Tensor) -> Image.Image:
    """First latent of a batch → RGB at latent resolution (1/8 of the image), no VAE involved."""
    rgb = torch.einsum("chw,cr->hwr", latents[0].float().cpu(), PREVIEW_MATRIX)
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(rgb, "RGB")


def _to_pil(decoded: torch.Tensor) -> list[Image.Image]:
    # Same rounding as diffusers' VaeImageProcessor.postprocess, so saved PNGs match too.
    arr = (decoded / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    arr = (arr * 255).round().astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arr]


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


@dataclass
class _StartLatents:
    """Where the loop starts, and what a mode adds to each step."""

    latents: torch.Tensor
    condition: tuple[torch.Tensor, torch.Tensor] | None = None
    """9-channel inpainting UNets: (mask, masked-picture latents), concatenated to every input."""
    keep: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """Ordinary UNets inpainting: (original latents, their noise, mask) re-imposed after each step."""


@dataclass
class _Encoder:
    path: Path
    model: Any
    processor: Any
    fingerprint: str | None = None
    """:func:`~ipa_studio.core.references.encoder_fingerprint`, worked out when first needed."""


@dataclass
class _Adapter:
    path: Path
    installed: InstalledAdapter


class Engine:
    """Owns the loaded models. Not thread-safe: use it from one worker thread."""

    def __init__(
        self,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        *,
        embed_cache_size: int = 64,
        base_cache_bytes: int | None = None,
        reference_store: ReferenceStore | None = None,
    ) -> None:
        """``base_cache_bytes``: how much RAM the previous base model may keep using after a switch,
        so switching back reads no file (None: half of the RAM available at the time of the switch;
        0: never keep it). ``reference_store``: the reference library; the encoder features of the
        references saved in it are read from and written to disk, so they cost no encoder call
        after a restart."""
        self.device = pick_device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.stats = EngineStats()
        self._base: BaseModel | None = None
        self._encoder: _Encoder | None = None
        self._adapter: _Adapter | None = None
        self._controlnets: dict[Path, Any] = {}
        self._features = _LRU(embed_cache_size)
        self._text = _LRU(16)
        self.base_cache_bytes = base_cache_bytes
        self._previous_base: tuple[BaseModel, tuple] | None = None
        self._base_signature: tuple = ()
        self.reference_store = reference_store
        # LoRA and embedding files read once (by path and on-disk signature): a change of strength
        # or of the set applied reads nothing and never reloads the base model.
        self._lora_files = _LRU(16)
        self._embedding_files = _LRU(64)
        self._patcher: LoraPatcher | None = None
        self._embeddings: dict[str, torch.Tensor] = {}
        self._embeddings_key: tuple = ()

    # ------------------------------------------------------------------ loading
    @property
    def base(self) -> BaseModel | None:
        return self._base

    @property
    def adapter(self) -> IPAdapter | None:
        return self._adapter.installed.adapter if self._adapter else None

    def load(self, request: GenerationRequest) -> None:
        """Make the request's models current, reading only files that are not loaded yet.

        A load that fails leaves the previously loaded models in place and usable.
        """
        spec = request.models
        base_path = Path(spec.base)
        if self._base is None or self._base.path != base_path:
            if self._patcher is not None:
                # The model kept for a quick switch back is kept as the base model, without LoRAs.
                self._patcher.restore()
                self._patcher = None
            new_base, new_signature = self._take_base(base_path)
            old_base, old_signature = self._base, self._base_signature
            old_adapter = self._adapter
            if old_adapter is not None:
                # Keep the adapter across base-model switches: move it onto the new UNet.
                old_adapter.installed.remove()
                self._adapter = None
            self._base, self._base_signature = new_base, new_signature
            self._text.clear()
            self._keep_previous(old_base, old_signature)
            if old_adapter is not None:
                self._install(old_adapter.installed.adapter, old_adapter.path)

        if spec.image_encoder is not None:
            enc_path = Path(spec.image_encoder)
            if self._encoder is None or self._encoder.path != enc_path:
                model, processor = load_image_encoder(enc_path, self.device, self.dtype)
                self.stats.components_loaded.append(f"encoder:{enc_path}")
                self._encoder = _Encoder(enc_path, model, processor)

        if spec.adapter is None:
            if self._adapter is not None:
                self._adapter.installed.remove()
                self._adapter = None
        else:
            ad_path = Path(spec.adapter)
            if self._adapter is None or self._adapter.path != ad_path:
                if self._encoder is None:
                    raise RequestError(
                        "An IP-Adapter needs its image encoder: choose the image encoder folder as well."
                    )
                adapter = IPAdapter(read_checkpoint(ad_path))
                self.stats.components_loaded.append(f"adapter:{ad_path}")
                self._install(adapter, ad_path)

        for control in request.controls:
            cpath = Path(control.model)
            if cpath not in self._controlnets:
                self._controlnets[cpath] = load_controlnet(cpath, self.device, self.dtype)
                self.stats.components_loaded.append(f"controlnet:{cpath}")

        self._load_embeddings(request)
        self._apply_loras(request)

    # ------------------------------------------------------------------ LoRAs and embeddings
    def _read_cached(self, cache: _LRU, kind: str, path: Path, read: Callable[[Path], Any]) -> Any:
        def make() -> Any:
            self.stats.components_loaded.append(f"{kind}:{path}")
            return read(path)

        return cache.get_or((str(path), _disk_signature(path)), make)

    def _apply_loras(self, request: GenerationRequest) -> None:
        """Make the request's enabled LoRAs the applied ones (see ``LoraPatcher``: merged into the
        weights, originals kept, so removing them gives back the base model bit for bit)."""
        base = self._base
        applied = []
        for spec in request.loras:
            if not spec.enabled:
                continue
            weights: LoraWeights = self._read_cached(self._lora_files, "lora", Path(spec.path), read_lora)
            text = spec.strength if spec.text_strength is None else spec.text_strength
            applied.append(AppliedLora(weights, float(spec.strength), float(text)))
        if self._patcher is None:
            if not applied:
                return
            self._patcher = LoraPatcher(base.unet, base.text_encoder)
        before = self._patcher.text_state
        self._patcher.apply(applied)
        if self._patcher.text_state != before:
            self._text.clear()  # prompt encodings made through the old text-encoder weights

    @property
    def applied_loras(self) -> tuple[tuple[str, float, float], ...]:
        """(file, strength, text strength) of the LoRAs applied now."""
        return self._patcher.applied if self._patcher is not None else ()

    def _load_embeddings(self, request: GenerationRequest) -> None:
        """The request's textual inversions, by name (the file's stem), checked against the text
        encoder's width."""
        from ipa_studio.core.embeddings import read_embedding

        width = int(self._base.text_encoder.config.hidden_size)
        key = tuple((str(p), _disk_signature(Path(p))) for p in request.embeddings)
        if key == self._embeddings_key:
            return
        table: dict[str, torch.Tensor] = {}
        seen: dict[str, Path] = {}
        for item in request.embeddings:
            path = Path(item)
            name = path.stem
            if name.lower() in seen:
                raise RequestError(
                    f"Two embeddings are called '{name}' ({seen[name.lower()].name} and {path.name}): "
                    "a prompt could not tell them apart. Rename one of the files."
                )
            seen[name.lower()] = path
            vectors = self._read_cached(
                self._embedding_files, "embedding", path, lambda p: read_embedding(p, width)
            )
            if vectors.shape[-1] != width:
                raise RequestError(
                    f"The embedding '{path.name}' has {vectors.shape[-1]}-wide vectors; this model's "
                    f"text encoder takes {width}-wide ones."
                )
            table[name] = vectors.to(self.device, self.dtype)
        self._embeddings, self._embeddings_key = table, key

    # ------------------------------------------------------------------ base-model memory policy
    # One previous base model is kept (an LRU of size 1), in CPU RAM, when it fits the budget:
    # people switch between two models to compare them, and a switch back then costs a
    # host-to-device copy instead of reading and converting ~2-4 GB of files. It is dropped before
    # any other model is read, so the peak stays at two models, as without the cache.

    def _take_base(self, path: Path) -> tuple[BaseModel, tuple]:
        signature = _disk_signature(path)
        kept, self._previous_base = self._previous_base, None
        if kept is not None and kept[0].path == path and kept[1] == signature:
            base = kept[0]
            if self.device.type != "cpu":
                for module in (base.unet, base.vae, base.text_encoder):
                    module.to(self.device)
            self.stats.base_cache_hits += 1
            return base, signature
        del kept  # free the kept model before reading a new one
        base = load_base_model(path, self.device, self.dtype)
        self.stats.components_loaded.append(f"base:{path}")
        return base, signature

    def _keep_previous(self, old: BaseModel | None, signature: tuple) -> None:
        if old is None:
            return
        budget = self.base_cache_bytes
        if budget is None:
            budget = _available_ram() // 2
        if base_model_bytes(old) > budget:
            return  # dropped: switching back will read its files again
        if self.device.type != "cpu":
            for module in (old.unet, old.vae, old.text_encoder):
                module.to("cpu")
        self._previous_base = (old, signature)

    @property
    def cached_base_path(self) -> Path | None:
        """The previous base model kept in memory for a quick switch back, if any."""
        return self._previous_base[0].path if self._previous_base else None

    def _install(self, adapter: IPAdapter, path: Path) -> None:
        assert self._base is not None and self._encoder is not None
        unet = self._base.unet
        cfg = self._encoder.model.config
        # Check against the UNet before touching it, so a refused adapter leaves the current one.
        from ipa_studio.core.adapter import cross_attention_layers

        check_fits(
            adapter.checkpoint_info,
            [attn.to_k.out_features for _, attn in cross_attention_layers(unet)],
            unet.config.cross_attention_dim,
            cfg.projection_dim,
            cfg.hidden_size,
        )
        if self._adapter is not None:
            self._adapter.installed.remove()
            self._adapter = None
        installed = install_adapter(
            adapter, unet, encoder_projection_dim=cfg.projection_dim, encoder_hidden_size=cfg.hidden_size
        )
        self._adapter = _Adapter(path, installed)

    # ------------------------------------------------------------------ conditioning
    def _encode_text(self, text: str) -> torch.Tensor:
        """[1, 77 × chunks, dim]: weights, long prompts and BREAK as in ``core/prompts.py``."""
        base = self._base

        embeddings, which = self._embeddings, self._embeddings_key

        def make() -> torch.Tensor:
            self.stats.text_encoder_calls += 1
            with torch.no_grad():
                encoded = encode_prompt(base.tokenizer, base.text_encoder, text, self.device, embeddings)
                return encoded.to(self.dtype)

        return self._text.get_or((text, which), make)

    def _text_batch(self, r: GenerationRequest, n: int, cfg: bool) -> torch.Tensor:
        """The UNet's (and ControlNets') text input: negative rows first under guidance."""
        prompt = self._encode_text(r.prompt)
        if not cfg:
            return prompt.repeat(n, 1, 1)
        negative, prompt = same_length(
            self._encode_text(r.negative_prompt), prompt, lambda: self._encode_text("")
        )
        return torch.cat([negative.repeat(n, 1, 1), prompt.repeat(n, 1, 1)])

    # ------------------------------------------------------------------ image prompt
    # Features are cached in memory by (encoder, output, picture, view); references saved in the
    # reference library are also read from and written to disk.

    def _encode(self, squares: list[Image.Image], hidden: bool) -> torch.Tensor:
        """One encoder call on the exact squares of ``references.encoder_inputs``."""
        enc = self._encoder
        pixels = normalise(squares, enc.model.config.image_size).to(self.device, self.dtype)
        self.stats.image_encoder_calls += 1
        with torch.no_grad():
            out = enc.model(pixels, output_hidden_states=hidden)
        return out.hidden_states[-2] if hidden else out.image_embeds

    def _zero_features(self, hidden: bool) -> torch.Tensor:
        """The unconditional branch's features: zero embeds (global), a zero image's states (plus)."""
        enc = self._encoder

        def make() -> torch.Tensor:
            if not hidden:
                return torch.zeros(1, enc.model.config.projection_dim, device=self.device, dtype=self.dtype)
            size = enc.model.config.image_size
            self.stats.image_encoder_calls += 1
            with torch.no_grad():
                zeros = torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype)
                return enc.model(zeros, output_hidden_states=True).hidden_states[-2]

        return self._features.get_or((str(enc.path), hidden, "zero-image"), make)

    def reference_features(
        self, image: Image.Image, view: EncoderView | None = None, *, hidden: bool, noise: float = 0.0
    ) -> torch.Tensor:
        """Encoder features [tiles, …] of one reference as seen through ``view`` (``noise``: faded
        towards noise first, for a noised unconditional image), from memory, disk or the encoder."""
        enc = self._encoder
        view = view or EncoderView()
        content = content_hash(image)
        key = (str(enc.path), hidden, content, view_text(view), noise)

        def make() -> torch.Tensor:
            disk = self._disk_key(content, view, hidden) if noise == 0 else None
            if disk is not None:
                stored = self.reference_store.load_features(content, disk)
                if stored is not None:
                    return stored.to(self.device)
            squares = encoder_inputs(image, view, enc.model.config.image_size)
            features = self._encode([noised(s, noise) for s in squares], hidden)
            if disk is not None:
                about = {"encoder": str(enc.path), "view": view_text(view), "dtype": str(self.dtype)}
                self.reference_store.save_features(content, disk, features, about)
            return features

        features = self._features.get_or(key, make)
        if noise == 0 and self.reference_store is not None and self.reference_store.contains(content):
            # Saved to the library after it was encoded (it came from memory, not from make):
            # write its features now, so after a restart it still costs no encoder call.
            disk = self._disk_key(content, view, hidden)
            if disk is not None and not self.reference_store.has_features(content, disk):
                about = {"encoder": str(enc.path), "view": view_text(view), "dtype": str(self.dtype)}
                self.reference_store.save_features(content, disk, features, about)
        return features

    def _disk_key(self, content: str, view: EncoderView, hidden: bool) -> str | None:
        """The reference library's name for these features, or None when the picture is not saved."""
        store = self.reference_store
        if store is None or not store.contains(content):
            return None
        if self._encoder.fingerprint is None:
            self._encoder.fingerprint = encoder_fingerprint(self._encoder.model)
        return feature_key(
            content,
            view,
            encoder=self._encoder.fingerprint,
            hidden=hidden,
            dtype=self.dtype,
            device=self.device.type,
        )

    def encode_reference(
        self, request: GenerationRequest, image: ImageSource, view: EncoderView | None = None
    ) -> None:
        """Work out (and, for a saved reference, store) a reference's features ahead of a generation,
        for the request's encoder and adapter, so the next generation with it starts at once."""
        from ipa_studio.core.images import load_image

        self.load(request)
        if self._adapter is None:
            raise RequestError("Encoding a reference needs an IP-Adapter: choose an adapter file.")
        hidden = self._adapter.installed.adapter.uses_hidden_states
        self.reference_features(load_image(image), view, hidden=hidden)

    def _unconditional(
        self, r: GenerationRequest, p: Prepared, ref: PreparedReference, tiles: int, hidden: bool
    ) -> torch.Tensor:
        """What the unconditional branch sees for one reference: the zero image, the negative
        image, or a noised picture (the negative image or the reference itself)."""
        negative = r.negative_image
        if negative is None:
            features = self._zero_features(hidden)
        elif p.negative is not None:
            features = self.reference_features(p.negative, hidden=hidden, noise=negative.noise)
        else:
            return self.reference_features(ref.image, ref.view, hidden=hidden, noise=negative.noise)
        return features.expand(tiles, *features.shape[1:])

    def _image_prompt(self, r: GenerationRequest, p: Prepared, n: int, cfg: bool) -> ImagePrompt:
        adapter = self._adapter.installed.adapter
        hidden = adapter.uses_hidden_states
        conds = [self.reference_features(ref.image, ref.view, hidden=hidden) for ref in p.references]
        unconds = [
            self._unconditional(r, p, ref, c.shape[0], hidden)
            for ref, c in zip(p.references, conds, strict=True)
        ]
        with torch.no_grad():
            # One projection per generation for both branches; never per step.
            projected = adapter.project(torch.cat(unconds + conds))
        self.stats.projection_calls += 1
        counts = [c.shape[0] for c in conds]
        width = projected.shape[-1]
        u_all, c_all = projected.split([sum(counts), sum(counts)])
        latent = (p.size[1] // self._base.vae_scale_factor, p.size[0] // self._base.vae_scale_factor)
        parts = []
        for ref, u, c in zip(p.references, u_all.split(counts), c_all.split(counts), strict=True):
            region = RegionMask(ref.region.work, latent, self.device, self.dtype) if ref.region else None
            parts.append(
                PromptPart(c.reshape(-1, width), u.reshape(-1, width), ref.weight, ref.start, ref.end, region)
            )
        return ImagePrompt(parts, n, cfg)

    # ------------------------------------------------------------------ generation
    def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepInfo], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Run one request. Raises ``Cancelled`` (no image) when ``should_cancel`` turns true."""
        if request.hires is not None:
            return hires.run(self, request, on_step, should_cancel)
        started = time.perf_counter()
        prepared = prepare(request)  # every number and picture checked before any model work
        self.load(request)
        try:
            latents = self._denoise(request, prepared, on_step, should_cancel, started)
            with torch.no_grad():
                vae = self._base.vae
                scaled = (latents / vae.config.scaling_factor).to(vae.dtype)
                decoded = vae.decode(scaled, return_dict=False)[0]
            images = _to_pil(decoded)
        finally:
            if self._adapter is not None:
                self._adapter.installed.context.clear()
        images = [self._finish(request, prepared, image) for image in images]
        return GenerationResult(
            images, latents, request, time.perf_counter() - started, list(prepared.notices)
        )

    @staticmethod
    def _finish(r: GenerationRequest, p: Prepared, image: Image.Image) -> Image.Image:
        """Back to the size that was asked for; for inpainting, the original outside the mask."""
        if p.mask is None:
            if image.size != p.original_size:
                image = image.resize(p.original_size, Image.Resampling.LANCZOS)
            return image
        assert p.start is not None and r.mask is not None
        full_box = p.crop or (0, 0, *p.original_size)
        return compose.paste_back(p.start.original, image, p.mask.original, r.mask.blur, full_box)

    def _make_scheduler(self, name: str) -> Any:
        from diffusers import (
            DDIMScheduler,
            DPMSolverMultistepScheduler,
            EulerAncestralDiscreteScheduler,
            LCMScheduler,
            TCDScheduler,
        )

        classes = {
            "ddim": DDIMScheduler,
            "dpm++": DPMSolverMultistepScheduler,
            "euler-a": EulerAncestralDiscreteScheduler,
            # Built from the base model's own config (betas, offset), as the LCM-LoRA and TCD-LoRA
            # model cards do: ``LCMScheduler.from_config(pipe.scheduler.config)``.
            "lcm": LCMScheduler,
            "tcd": TCDScheduler,
        }
        return classes[name].from_config(self._base.scheduler_config)

    def _denoise(
        self,
        r: GenerationRequest,
        p: Prepared,
        on_step: Callable[[StepInfo], None] | None,
        should_cancel: Callable[[], bool] | None,
        started: float,
    ) -> torch.Tensor:
        base = self._base
        unet = base.unet
        n = r.num_images
        cfg = r.guidance > 1.0
        generator = torch.Generator("cpu").manual_seed(r.seed)

        prompt = self._text_batch(r, n, cfg)

        image_prompt = None
        if self._adapter is not None:
            ctx = self._adapter.installed.context
            self._adapter.installed.set_scale(r.scale)
            if p.references:
                image_prompt = self._image_prompt(r, p, n, cfg)
                image_prompt.install(ctx)
            else:
                ctx.clear()

        scheduler = self._make_scheduler(r.scheduler)
        scheduler.set_timesteps(r.steps, device=self.device)
        timesteps = scheduler.timesteps
        if r.init is not None:
            init_timestep = min(int(r.steps * r.init.strength), r.steps)
            t_start = max(r.steps - init_timestep, 0)
            timesteps = timesteps[t_start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
            if len(timesteps) == 0:
                raise RequestError("Strength is too low for this number of steps: no step would run.")

        with torch.no_grad():
            start = self._start_latents(r, p, scheduler, timesteps, generator, cfg)
            latents = start.latents
            controls = self._prepare_controls(r, p, n, cfg)
            extra = {}
            step_params = set(inspect.signature(scheduler.step).parameters)
            if "eta" in step_params:
                # DDIM: deterministic (eta 0). TCD: its "gamma", the share of fresh noise in each
                # step; 0.3 is what the TCD authors recommend for 4-8 steps.
                extra["eta"] = TCD_GAMMA if r.scheduler == "tcd" else 0.0
            if "generator" in step_params:
                extra["generator"] = generator

            total = len(timesteps)
            for i, t in enumerate(timesteps):
                if should_cancel is not None and should_cancel():
                    raise Cancelled("Generation cancelled.")
                if image_prompt is not None:
                    image_prompt.step(i, total)  # references outside their step window drop out
                model_in = torch.cat([latents] * 2) if cfg else latents
                model_in = scheduler.scale_model_input(model_in, t)
                down, mid = self._control_residuals(controls, model_in.to(self.dtype), t, prompt, i, total)
                unet_in = model_in
                if start.condition is not None:  # 9-channel inpainting UNet: mask and masked picture
                    unet_in = torch.cat([model_in, *start.condition], dim=1)
                noise_pred = unet(
                    unet_in.to(self.dtype),
                    t,
                    encoder_hidden_states=prompt,
                    down_block_additional_residuals=down,
                    mid_block_additional_residual=mid,
                    return_dict=False,
                )[0].float()
                if cfg:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + r.guidance * (text - uncond)
                latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
                if start.keep is not None:
                    # Ordinary UNet inpainting: re-impose the (re-noised) original outside the mask.
                    keep, noise, m = start.keep
                    if i < total - 1:
                        keep = scheduler.add_noise(keep, noise, torch.tensor([timesteps[i + 1]]))
                    latents = (1 - m) * keep + m * latents
                if on_step is not None:
                    on_step(
                        StepInfo(i + 1, total, time.perf_counter() - started, latents_to_preview(latents))
                    )
        return latents

    def _start_latents(
        self,
        r: GenerationRequest,
        p: Prepared,
        scheduler: Any,
        timesteps: torch.Tensor,
        generator: torch.Generator,
        cfg: bool,
    ) -> _StartLatents:
        """The first latents of the loop, and what the mode adds to every step."""
        from diffusers.image_processor import VaeImageProcessor
        from diffusers.utils.torch_utils import randn_tensor

        base = self._base
        # Latents, noise and masks stay in fp32 whatever the models run in: the scheduler's sums
        # then lose nothing, and bf16 / fp16 differ from fp32 only inside the networks.
        device, dtype = self.device, torch.float32
        vae = base.vae
        n = r.num_images
        width, height = p.size
        shape = (
            n,
            vae.config.latent_channels,
            height // base.vae_scale_factor,
            width // base.vae_scale_factor,
        )
        image_proc = VaeImageProcessor(vae_scale_factor=base.vae_scale_factor)

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
            return (vae.config.scaling_factor * dist.sample(generator)).to(dtype)

        nine_channel = base.is_inpainting
        if p.mask is None and not nine_channel:
            if p.start is None:
                latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
                return _StartLatents(latents * scheduler.init_noise_sigma)
            init = image_proc.preprocess(p.start.work).to(torch.float32)
            image_latents = encode(init).repeat(n, 1, 1, 1)
            noise = randn_tensor(image_latents.shape, generator=generator, device=device, dtype=dtype)
            return _StartLatents(scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(n)))

        if p.mask is None:
            # A 9-channel inpainting UNet always reads a mask and a masked picture. Without a mask it
            # repaints everything: an all-white mask over the start picture (or over nothing, for a
            # new picture, since a full mask blanks the picture anyway), as A1111 conditions
            # inpainting models for txt2img and img2img. This is diffusers' inpainting pipeline
            # with an all-white mask.
            picture = p.start.work if p.start is not None else Image.new("RGB", p.size)
            mask_image = Image.new("L", p.size, 255)
        else:
            picture, mask_image = p.start.work, p.mask.work
        strength = r.init.strength if r.init is not None else 1.0
        init = image_proc.preprocess(picture, height=height, width=width).to(torch.float32)
        image_latents = None
        # Random draws in diffusers' order: image latents (if needed), noise, masked-image latents.
        if not nine_channel or strength < 1.0:
            image_latents = encode(init).repeat(n, 1, 1, 1)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        if strength == 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(n))
        mask_proc = VaeImageProcessor(
            vae_scale_factor=base.vae_scale_factor,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )
        mask = mask_proc.preprocess(mask_image, height=height, width=width)
        masked_image = init * (mask < 0.5)
        mask = torch.nn.functional.interpolate(mask, size=shape[2:]).to(device, dtype)
        mask = mask.repeat(n, 1, 1, 1)
        # Encoded for ordinary UNets too: diffusers does, and the draw moves the generator that
        # ancestral schedulers use later.
        masked_latents = encode(masked_image).repeat(n, 1, 1, 1)
        if not nine_channel:
            return _StartLatents(latents, keep=(image_latents, noise, mask))
        if cfg:
            mask, masked_latents = torch.cat([mask] * 2), torch.cat([masked_latents] * 2)
        return _StartLatents(latents, condition=(mask, masked_latents))

    def _prepare_controls(
        self, r: GenerationRequest, p: Prepared, n: int, cfg: bool
    ) -> list[tuple[Any, torch.Tensor, Any]]:
        from diffusers.image_processor import VaeImageProcessor

        width, height = p.size
        proc = VaeImageProcessor(
            vae_scale_factor=self._base.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )
        out = []
        for spec, image in zip(r.controls, p.controls, strict=True):
            cond = proc.preprocess(image, height=height, width=width).to(torch.float32)
            cond = cond.repeat_interleave(n, dim=0).to(self.device, self.dtype)
            if cfg:
                cond = torch.cat([cond] * 2)
            out.append((self._controlnets[Path(spec.model)], cond, spec))
        return out

    @staticmethod
    def _control_residuals(controls, model_in, t, prompt, i, total):
        down = mid = None
        for model, cond, spec in controls:
            # Same window rule as diffusers' control_guidance_start / _end.
            if not in_window(i, total, spec.start, spec.end):
                continue  # a scale of zero would add exact zeros: skipping is identical and cheaper
            d, m = model(
                model_in,
                t,
                encoder_hidden_states=prompt,
                controlnet_cond=cond,
                conditioning_scale=spec.scale,
                guess_mode=False,
                return_dict=False,
            )
            if down is None:
                down, mid = list(d), m
            else:
                down = [a + b for a, b in zip(down, d, strict=True)]
                mid = mid + m
        return down, mid
