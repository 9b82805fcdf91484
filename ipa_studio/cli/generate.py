"""``ipa-studio generate``: one request from the command line, the same engine as the window."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from ipa_studio.core.request import (
    ENCODER_FITS,
    SCHEDULERS,
    ControlSpec,
    EncoderView,
    GenerationRequest,
    HiresSpec,
    InitImage,
    LoraSpec,
    MaskSpec,
    ModelSpec,
    NegativeImage,
    Reference,
)

PRECISIONS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def parse_reference(text: str) -> Reference:
    """``IMAGE[:WEIGHT]``. A colon followed by something that is not a number belongs to the path
    (``C:\\pics\\a.png``, ``my:file.png``)."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            weight = float(tail)
        except ValueError:
            return Reference(text)
        if weight < 0:
            raise argparse.ArgumentTypeError(f"the weight in '{text}' must be zero or more")
        return Reference(path, weight)
    return Reference(text)


def parse_scale(text: str) -> float | dict[str, float]:
    """λ as a number, or per block: ``down_blocks=0,mid_block=0.5,up_blocks.1=1,default=0.6``."""
    try:
        return float(text)
    except ValueError:
        pass
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"'{text}' is not a λ: give a number (0.6) or blocks like 'down_blocks=0,up_blocks=1'"
            ) from None
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"'{part}' in --scale needs the form BLOCK=NUMBER")
    return out


def parse_window(text: str) -> tuple[float, float]:
    """``START:END`` as fractions of the steps, e.g. ``0.2:0.8``."""
    start, sep, end = text.partition(":")
    try:
        window = (float(start), float(end))
    except ValueError:
        window = None
    if not sep or window is None:
        raise argparse.ArgumentTypeError(f"'{text}' is not a window: give START:END, e.g. 0.2:0.8")
    return window


def parse_view(text: str) -> EncoderView:
    """``centre``, ``crop:LEFT,TOP,SIDE`` (a square of the picture), ``pad`` or ``tile``."""
    fit, sep, box = text.partition(":")
    if fit not in ENCODER_FITS or (sep != "") != (fit == "crop"):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a view: give centre, crop:LEFT,TOP,SIDE, pad or tile"
        )
    if not sep:
        return EncoderView(fit)  # type: ignore[arg-type]
    try:
        left, top, side = (int(v) for v in box.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': the crop square is LEFT,TOP,SIDE in pixels") from None
    return EncoderView("crop", (left, top, side))


def _lora_argument(text: str) -> LoraSpec:
    from ipa_studio.core.errors import RequestError
    from ipa_studio.core.lora import parse_lora_argument

    try:
        path, strength, text_strength = parse_lora_argument(text)
    except RequestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return LoraSpec(Path(path), strength, text_strength)


def _per_reference(values: list, count: int, flag: str, parser: argparse.ArgumentParser) -> list:
    """One value for every reference, one per reference, or none (the defaults)."""
    if len(values) in (0, count):
        return values or [None] * count
    if len(values) == 1:
        return values * count
    parser.error(f"give {flag} once (for every --ref) or once per --ref ({count}), not {len(values)} times")
    raise AssertionError  # parser.error exits


def add_request_arguments(g: argparse.ArgumentParser) -> None:
    """The options that describe one generation, shared by ``generate`` and ``sweep``."""
    m = g.add_argument_group("models")
    m.add_argument(
        "--model",
        required=True,
        type=Path,
        help="SD1.5 base model: a diffusers folder or a single .safetensors / .ckpt file",
    )
    m.add_argument("--adapter", type=Path, help="IP-Adapter checkpoint (.safetensors, .bin or .pth)")
    m.add_argument(
        "--image-encoder",
        type=Path,
        help="image encoder (CLIP ViT-H/14): its folder, or the single file ComfyUI keeps "
        "(clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors); default: the 'image_encoder' folder "
        "beside the adapter (the official repository's layout), else the model library's matching encoder",
    )
    m.add_argument(
        "--lora",
        action="append",
        default=[],
        type=_lora_argument,
        metavar="FILE[:STRENGTH[:TEXT_STRENGTH]]",
        help="a LoRA (kohya/A1111, diffusers or PEFT layout), repeatable; STRENGTH (default 1) for the "
        "UNet, TEXT_STRENGTH for the text encoder (default: the same)",
    )
    m.add_argument(
        "--embedding",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a textual-inversion embedding (A1111 .pt / .safetensors, diffusers learned_embeds), "
        "repeatable; write its file name (without suffix) in --prompt or --negative to use it",
    )
    p = g.add_argument_group("prompts")
    p.add_argument(
        "--ref",
        action="append",
        default=[],
        type=parse_reference,
        metavar="IMAGE[:WEIGHT]",
        help="reference image, repeatable; WEIGHT (default 1) sets its share among the references",
    )
    p.add_argument(
        "--prompt",
        default="",
        help="text prompt (may be empty for image-only); A1111 syntax: (word:1.2), (word), [word], BREAK; "
        "longer than 75 tokens is fine",
    )
    p.add_argument("--negative", default="", help="negative prompt (same syntax)")
    p.add_argument(
        "--scale",
        type=parse_scale,
        default=1.0,
        metavar="λ",
        help="image prompt strength: 0 = text only, 1 = image (default); or per block, "
        "e.g. 'down_blocks=0,up_blocks=1'",
    )
    s = g.add_argument_group("sampling")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    s.add_argument("--width", type=int, default=512)
    s.add_argument("--height", type=int, default=512)
    s.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    s.add_argument("--num-images", type=int, default=1)
    e = g.add_argument_group("img2img, inpainting and ControlNet")
    e.add_argument("--init", type=Path, help="init image for img2img / inpainting (sets the size)")
    e.add_argument("--strength", type=float, default=0.75, help="how much of the init image to repaint")
    e.add_argument("--mask", type=Path, help="inpainting mask: white = repaint (same size as --init)")
    e.add_argument(
        "--masked-only",
        action="store_true",
        help="repaint only the mask's surroundings, at the full --width x --height, and paste back",
    )
    e.add_argument(
        "--mask-padding", type=int, default=32, help="context pixels around the mask (--masked-only)"
    )
    e.add_argument("--mask-blur", type=int, default=4, help="feather of the mask edge when blending back")
    e.add_argument("--control", action="append", default=[], type=Path, help="control map, repeatable")
    e.add_argument(
        "--controlnet",
        action="append",
        default=[],
        type=Path,
        help="ControlNet per --control: a diffusers folder or a single file (.pth / .safetensors)",
    )
    e.add_argument("--control-scale", action="append", default=[], type=float, help="strength per --control")
    i = g.add_argument_group("image prompt controls (once for every --ref, or once per --ref)")
    i.add_argument(
        "--ref-window",
        action="append",
        default=[],
        type=parse_window,
        metavar="START:END",
        help="the part of the steps a reference acts in (fractions, like ControlNet start/end)",
    )
    i.add_argument(
        "--ref-mask",
        action="append",
        default=[],
        metavar="FILE|none",
        help="where in the picture a reference acts: a mask, white = here ('none': everywhere)",
    )
    i.add_argument(
        "--ref-view",
        action="append",
        default=[],
        type=parse_view,
        metavar="VIEW",
        help="what the image encoder sees: centre (default), crop:LEFT,TOP,SIDE, pad or tile",
    )
    i.add_argument("--negative-image", type=Path, help="a picture the result should move away from")
    i.add_argument(
        "--negative-noise",
        type=float,
        default=0.0,
        help="a noised unconditional image: the negative image (or each reference) faded to noise, 0-1",
    )
    i.add_argument(
        "--preset",
        help="per-block λ preset ('Style', 'Composition', …; see 'ipa-studio presets'); --scale is "
        "then its strength",
    )
    i.add_argument(
        "--library",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="use the reference library (default folder, or DIR): saved references' features come "
        "from disk, with no encoder call",
    )
    i.add_argument("--save-refs", action="store_true", help="add the --ref pictures to the library first")
    h = g.add_argument_group("second pass (hires fix)")
    h.add_argument("--hires", type=float, metavar="FACTOR", help="upscale by FACTOR and repaint at that size")
    h.add_argument("--hires-strength", type=float, default=0.5, help="how much the second pass repaints")
    h.add_argument("--hires-steps", type=int, default=0, help="steps of the second pass (0: --steps)")
    h.add_argument("--hires-upscaler", default="lanczos", help="upscaler (built in: lanczos)")
    o = g.add_argument_group("running")
    o.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    o.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default=None,
        help="number format (default: fp16 on CUDA, bf16 on CPUs that compute it natively "
        "(AVX512-BF16 / AMX), fp32 elsewhere)",
    )
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate images from reference images and/or a prompt")
    g.set_defaults(run=run)
    add_request_arguments(g)
    g.add_argument("--out", type=Path, required=True, help="output PNG (numbered when --num-images > 1)")


def _controls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[ControlSpec, ...]:
    if len(args.controlnet) != len(args.control):
        parser.error("give one --controlnet for each --control")
    scales = args.control_scale or [1.0] * len(args.control)
    if len(scales) != len(args.control):
        parser.error("give one --control-scale for each --control (or none)")
    return tuple(ControlSpec(c, n, s) for c, n, s in zip(args.control, args.controlnet, scales, strict=True))


def find_image_encoder(adapter: Path) -> Path:
    """The encoder an adapter needs when none was named: the official repository keeps it in an
    ``image_encoder`` folder beside the adapter files; otherwise ask the model library."""
    for folder in (adapter.parent / "image_encoder", adapter.parent.parent / "image_encoder"):
        if (folder / "config.json").is_file():
            return folder
    from ipa_studio.core.models.library import ModelLibrary

    return Path(ModelLibrary().image_encoder_for(adapter).path)


def _references(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Reference, ...]:
    count = len(args.ref)
    if count == 0 and (args.ref_window or args.ref_mask or args.ref_view):
        parser.error("--ref-window, --ref-mask and --ref-view describe --ref images: give --ref too")
    windows = _per_reference(args.ref_window, count, "--ref-window", parser)
    masks = _per_reference(args.ref_mask, count, "--ref-mask", parser)
    views = _per_reference(args.ref_view, count, "--ref-view", parser)
    out = []
    for ref, window, mask, view in zip(args.ref, windows, masks, views, strict=True):
        start, end = window or (0.0, 1.0)
        mask = None if mask in (None, "none") else Path(mask)
        out.append(Reference(ref.image, ref.weight, start, end, mask, view or EncoderView()))
    return tuple(out)


def _scale(args: argparse.Namespace, parser: argparse.ArgumentParser) -> float | dict[str, float]:
    if args.preset is None:
        return args.scale
    if not isinstance(args.scale, float):
        parser.error("--preset sets the per-block shape: give --scale as one number (its strength)")
    from ipa_studio.core.presets import find_preset

    return find_preset(args.preset).scale(args.scale)


def request_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> GenerationRequest:
    if args.mask is not None and args.init is None:
        parser.error("--mask needs --init (the image to inpaint)")
    negative = None
    if args.negative_image is not None or args.negative_noise:
        negative = NegativeImage(args.negative_image, args.negative_noise)
    hires = None
    if args.hires is not None:
        hires = HiresSpec(args.hires, args.hires_strength, args.hires_steps, args.hires_upscaler)
    request = GenerationRequest(
        models=ModelSpec(args.model, args.adapter, args.image_encoder),
        references=_references(args, parser),
        prompt=args.prompt,
        negative_prompt=args.negative,
        scale=_scale(args, parser),
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed if args.seed is not None else random.randrange(2**32),
        width=args.width,
        height=args.height,
        scheduler=args.scheduler,
        num_images=args.num_images,
        init=InitImage(args.init, args.strength) if args.init is not None else None,
        mask=MaskSpec(args.mask, args.masked_only, args.mask_padding, args.mask_blur) if args.mask else None,
        controls=_controls(args, parser),
        negative_image=negative,
        hires=hires,
        loras=tuple(args.lora),
        embeddings=tuple(args.embedding),
    )
    from ipa_studio.core.prepare import check_request

    # Every number is checked before anything is looked up or loaded.
    check_request(request)
    request = request.replace(loras=request.loras + _tagged_loras(request))
    if args.image_encoder is None and args.adapter is not None:
        encoder = find_image_encoder(args.adapter)
        request = request.replace(models=ModelSpec(args.model, args.adapter, encoder))
    return request


def _tagged_loras(request: GenerationRequest) -> tuple[LoraSpec, ...]:
    """LoRAs the prompt names A1111's way (``<lora:name:0.8>``) and no --lora gives, found by name
    in the model library; the others are reported by the engine as left out."""
    if "<lora:" not in request.prompt.lower() and "<lyco:" not in request.prompt.lower():
        return ()
    from ipa_studio.core.lora import prompt_lora_tags
    from ipa_studio.core.models.library import ModelLibrary

    given = {Path(str(spec.path)).stem.lower() for spec in request.loras}
    tags = [t for t in prompt_lora_tags(request.prompt) if t.name.lower() not in given]
    if not tags:
        return ()
    known = {e.name.lower(): e for e in ModelLibrary().entries("lora", usable_only=True)}
    found = []
    for tag in tags:
        entry = known.get(tag.name.lower())
        if entry is not None:
            found.append(LoraSpec(entry.path, tag.strength, tag.text_strength))
            given.add(tag.name.lower())
    return tuple(found)


def output_paths(out: Path, count: int) -> list[Path]:
    if out.suffix.lower() != ".png":
        out = out.with_suffix(".png")
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i + 1}{out.suffix}") for i in range(count)]


def check_outputs(out: Path, targets: list[Path]) -> None:
    """Refuse output paths that cannot take a picture, before any model is loaded."""
    from ipa_studio.core.errors import RequestError

    for path in (out, *targets):
        if path.is_dir():
            raise RequestError(
                f"--out '{out}' names a folder ('{path}' exists and is one); give the picture's file "
                f"name, for example --out {out / 'picture.png'}"
            )
    if not targets[0].parent.is_dir():
        raise SystemExit(f"error: the output folder '{targets[0].parent}' does not exist")


def make_engine(args: argparse.Namespace, request: GenerationRequest):  # -> Engine (imported late)
    """The engine for ``--device`` / ``--precision``, with the reference library if asked for
    (``--save-refs`` adds the request's references to it first)."""
    import torch

    from ipa_studio.core.engine import Engine

    store = None
    if args.library is not None or args.save_refs:
        from ipa_studio.core.references import ReferenceStore

        store = ReferenceStore(args.library or None)
        if args.save_refs:
            for ref in request.references:
                saved = store.add(ref.image)
                print(f"saved reference {saved.path}", file=sys.stderr)
    dtype = getattr(torch, PRECISIONS[args.precision]) if args.precision else None
    return Engine(device=args.device, dtype=dtype, reference_store=store)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # Heavy imports only once the arguments are known good, so --help stays instant.
    from tqdm import tqdm

    from ipa_studio.core.images import save_png
    from ipa_studio.core.metadata import request_to_metadata

    request = request_from_args(args, parser)
    targets = output_paths(args.out, request.num_images)
    check_outputs(args.out, targets)
    print(f"seed {request.seed}", file=sys.stderr)
    engine = make_engine(args, request)
    bar = tqdm(total=request.steps, desc=request.mode, unit="step", disable=args.quiet, file=sys.stderr)

    def on_step(info) -> None:
        bar.total = info.total
        bar.update(info.step - bar.n)

    try:
        result = engine.generate(request, on_step=on_step)
    finally:
        bar.close()
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    for index, (image, path) in enumerate(zip(result.images, targets, strict=True)):
        extra = {"image_index": index} if len(targets) > 1 else {}
        meta = request_to_metadata(request, extra={**extra, "seconds": round(result.seconds, 2)})
        save_png(image, path, meta)
        print(path)
    return 0
