"""``ipa-studio train``: train an IP-Adapter on a folder of captioned images (paper §3.2.3, §4.1.2).

One device: ``ipa-studio train …``. Several GPUs, or DeepSpeed ZeRO-2 as in the paper:
``accelerate launch --config_file "$(ipa-studio train --show-configs | grep zero2.yaml)" -m ipa_studio.cli
train …`` (see docs/training.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_FILES = (
    "accelerate_single_gpu.yaml",
    "accelerate_multi_gpu.yaml",
    "accelerate_deepspeed_zero2.yaml",
    "deepspeed_zero2.json",
)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train your own IP-Adapter on a folder of captioned images",
        description="Train an IP-Adapter with the paper's recipe: frozen SD1.5 and image encoder; "
        "trained projection and W'k, W'v; AdamW lr 1e-4, weight decay 0.01; text / image / both "
        "dropped with p=0.05 each. Run it under `accelerate launch -m ipa_studio.cli train` for "
        "several GPUs or DeepSpeed.",
    )
    t.set_defaults(run=run)
    t.add_argument(
        "--show-configs", action="store_true", help="print the paths of the bundled accelerate configs"
    )
    m = t.add_argument_group("models and data")
    m.add_argument(
        "--data",
        type=Path,
        help="folder of images with .txt captions or a metadata.jsonl, or a .json list in the official "
        'IP-Adapter format [{"image_file": ..., "text": ...}]',
    )
    m.add_argument(
        "--data-json",
        type=Path,
        help="the official tutorial_train.py's --data_json_file: a JSON list of "
        '{"image_file": ..., "text": ...} (same as --data FILE.json)',
    )
    m.add_argument(
        "--data-root",
        type=Path,
        help="the official --data_root_path: the folder the image_file paths are relative to "
        "(default: the JSON file's folder)",
    )
    m.add_argument("--model", type=Path, help="SD1.5 base model (diffusers folder)")
    m.add_argument("--image-encoder", type=Path, help="image encoder folder (CLIP ViT-H/14)")
    m.add_argument("--output", type=Path, help="folder for checkpoints, logs and the final adapter")
    m.add_argument("--name", default="ip-adapter", help="file name of the adapter (default ip-adapter)")
    a = t.add_argument_group("adapter")
    a.add_argument(
        "--variant",
        choices=("global", "plus", "full"),
        default="global",
        help="global: 4 tokens from the image embedding (paper); plus: Resampler, 16 tokens (§4.4.2)",
    )
    a.add_argument("--num-tokens", type=int, default=None, help="image tokens (default 4 global, 16 plus)")
    a.add_argument("--init-adapter", type=Path, help="start from this adapter file instead of a fresh one")
    r = t.add_argument_group("recipe (defaults: the paper's)")
    r.add_argument("--resolution", type=int, default=512, help="training resolution (default 512)")
    r.add_argument("--batch-size", type=int, default=8, help="images per device and step (default 8)")
    r.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    r.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    r.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (the paper: 1,000,000)")
    r.add_argument("--drop-text", type=_probability, default=0.05, help="drop only the text (0.05)")
    r.add_argument("--drop-image", type=_probability, default=0.05, help="drop only the image (0.05)")
    r.add_argument("--drop-both", type=_probability, default=0.05, help="drop text and image (0.05)")
    r.add_argument("--seed", type=int, default=42)
    h = t.add_argument_group("hardware")
    h.add_argument("--gradient-accumulation", type=int, default=1, help="micro-batches per optimizer step")
    h.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        default=None,
        help="default: what `accelerate launch` / its config says, else no",
    )
    h.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute UNet activations: less memory"
    )
    h.add_argument("--num-workers", type=int, default=None, help="data-loading processes per device")
    h.add_argument("--device", choices=("cpu",), default=None, help="force the CPU (default: the GPU)")
    c = t.add_argument_group("checkpoints")
    c.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints (1000)")
    c.add_argument("--keep-checkpoints", type=int, default=3, help="how many to keep (default 3; 0 = all)")
    c.add_argument("--resume", default=None, metavar="FOLDER|latest", help="continue from a checkpoint")
    c.add_argument(
        "--save-precision", choices=("fp32", "fp16"), default="fp32", help="of the final adapter files"
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipa_studio.core.train.trainer import bundled_config, default_workers

    if args.show_configs:
        for name in CONFIG_FILES:
            print(bundled_config(name))
        return 0
    if args.data_json is not None:
        if args.data is not None:
            parser.error("give the training data once: --data or --data-json, not both")
        args.data = args.data_json
    if args.data_root is not None and (args.data is None or args.data.suffix.lower() != ".json"):
        parser.error("--data-root goes with a .json dataset list (--data-json FILE or --data FILE.json)")
    missing = [
        f"--{n.replace('_', '-')}"
        for n in ("data", "model", "image_encoder", "output")
        if not getattr(args, n)
    ]
    if missing:
        parser.error(f"train needs {', '.join(missing)}")

    from ipa_studio.core.train import DropRates, TrainConfig, Trainer

    config = TrainConfig(
        data=args.data,
        base_model=args.model,
        image_encoder=args.image_encoder,
        output=args.output,
        variant=args.variant,
        num_tokens=args.num_tokens,
        init_adapter=args.init_adapter,
        resolution=args.resolution,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        max_steps=args.max_steps,
        gradient_accumulation=args.gradient_accumulation,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints or None,
        resume=args.resume,
        seed=args.seed,
        num_workers=default_workers() if args.num_workers is None else args.num_workers,
        drop=DropRates(text=args.drop_text, image=args.drop_image, both=args.drop_both),
        name=args.name,
        save_precision=args.save_precision,
        device=args.device,
        progress=not args.quiet,
        data_root=args.data_root,
    )
    trainer = Trainer(config)
    result = trainer.run()
    if trainer.accelerator.is_main_process:
        for path in result.adapter_files:
            print(path)
    return 0
