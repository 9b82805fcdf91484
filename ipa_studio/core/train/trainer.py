"""A training run: one device or many through accelerate (DDP or DeepSpeed ZeRO-2), resumable.

Layout of the output folder::

    train_config.json            the settings of the run
    environment.json             the versions of Python, torch, diffusers, transformers, IPA Studio
    train_log.jsonl              one line per optimizer step: step, loss, images/s
    skipped_images.txt           files that could not be read (when there were any)
    samples/                     previews of held-out references (``sample_every``), one folder a step
    checkpoints/step-0001000/    accelerate state (adapter, optimizer, scaler, RNG) + training_state.json
                                 + <name>.safetensors, the adapter at that step in the official layout
    <name>.safetensors, <name>.bin   the final adapter in the official layout

Launch on many GPUs with ``accelerate launch [--config_file …] -m ipa_studio.cli train …``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipa_studio.core.adapter import IPAdapter, read_checkpoint
from ipa_studio.core.adapter.checkpoint import save_checkpoint

from .data import CaptionedImageDataset, EpochBatchSampler, collate, scan_dataset
from .recipe import (
    AdapterTrainingModel,
    DropRates,
    FrozenModels,
    TrainingError,
    install_for_training,
    micro_batch_generator,
    training_loss,
)

VARIANTS = ("global", "plus", "full")
MIXED_PRECISION = ("no", "fp16", "bf16")
STATE_FILE = "training_state.json"
CHECKPOINT_PREFIX = "step-"


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults are the paper's (§4.1.2) except the step count."""

    data: Path
    """A folder of captioned images, or a .json list in the official IP-Adapter format."""
    base_model: Path
    image_encoder: Path
    output: Path
    variant: str = "global"
    num_tokens: int | None = None
    init_adapter: Path | None = None
    """Start from this adapter file instead of a fresh one (fine-tuning an official adapter)."""
    resolution: int = 512
    batch_size: int = 8
    """Per device; the paper used 8 on each of 8 V100s."""
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    max_steps: int = 1000
    """Optimizer steps (the paper trained 1M)."""
    gradient_accumulation: int = 1
    mixed_precision: str | None = None
    """"no", "fp16" or "bf16"; None takes what ``accelerate launch`` / its config says."""
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int | None = 3
    resume: str | Path | None = None
    """A checkpoint folder, or "latest" for the newest one in ``output/checkpoints`` (if any)."""
    seed: int = 42
    num_workers: int = 0
    drop: DropRates = field(default_factory=DropRates)
    name: str = "ip-adapter"
    save_precision: str = "fp32"
    device: str | None = None
    """"cpu" forces the CPU; otherwise accelerate's choice (the local GPU of each process)."""
    progress: bool = True
    data_root: Path | None = None
    """The folder the ``image_file`` paths of a .json dataset are relative to (default: its folder)."""
    sample_every: int = 0
    """Steps between sample previews; 0 = none (and no image is held out of the data)."""
    sample_count: int = 4
    """References taken out of the data at the start to preview the adapter on."""
    sample_steps: int = 20
    sample_guidance: float = 7.5

    def check(self) -> None:
        if self.variant not in VARIANTS:
            raise TrainingError(f"Unknown variant '{self.variant}'. Choose one of: {', '.join(VARIANTS)}.")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise TrainingError(f"Mixed precision is one of {', '.join(MIXED_PRECISION)}.")
        if self.resolution < 64 or self.resolution % 8:
            raise TrainingError("The resolution must be a multiple of 8, at least 64.")
        if self.save_precision not in ("fp32", "fp16"):
            raise TrainingError("The saved adapter precision is fp32 or fp16.")
        for name in ("batch_size", "max_steps", "gradient_accumulation", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name.replace('_', ' ').capitalize()} must be at least 1.")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise TrainingError("The learning rate must be above 0 and the weight decay 0 or more.")
        if self.sample_every < 0 or (self.sample_every and not 1 <= self.sample_count <= 16):
            raise TrainingError("Sample previews need an interval of 0 or more steps and 1 to 16 references.")
        if self.sample_every and self.sample_steps < 1:
            raise TrainingError("Sample previews need at least 1 denoising step.")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of ``to_json`` (unknown keys refused, so a typo is not silently ignored)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise TrainingError(f"Unknown training setting(s): {', '.join(unknown)}.")
        values = dict(data)
        for key in ("data", "base_model", "image_encoder", "output", "init_adapter"):
            if values.get(key) is not None:
                values[key] = Path(values[key])
        if isinstance(values.get("drop"), dict):
            values["drop"] = DropRates(**values["drop"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise TrainingError(f"The training settings are incomplete: {exc}.") from None


@dataclass
class TrainingState:
    """Progress that accelerate does not track itself; stored as JSON next to its state."""

    step: int = 0
    batches: int = 0
    """Micro-batches consumed per process: with the epoch sampler, the position in the data."""
    images: int = 0
    """Images seen by all processes together."""
    skipped: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "batches": self.batches,
            "images": self.images,
            "skipped": sorted(self.skipped),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingState:
        return cls(int(data["step"]), int(data["batches"]), int(data["images"]), set(data.get("skipped", ())))


@dataclass
class TrainResult:
    steps: int
    final_loss: float | None
    adapter_files: list[Path]
    skipped: list[str]
    seconds: float
    output: Path


@dataclass(frozen=True)
class StepLog:
    step: int
    loss: float
    images_per_second: float
    learning_rate: float = 0.0


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def checkpoint_folders(output: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first. A folder left half-written by a crash has no
    state file (it is written last) and is ignored, so ``--resume latest`` never picks it."""
    folder = Path(output) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.name.startswith(CHECKPOINT_PREFIX)
        and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        and (p / STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


class Trainer:
    """Builds the run (models, adapter, optimizer, data) on construction; ``run()`` trains.

    ``frozen`` lets a caller pass models already in memory (tests, benchmarks); by default they are
    loaded from ``config.base_model`` / ``config.image_encoder``.
    """

    def __init__(self, config: TrainConfig, frozen: FrozenModels | None = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, set_seed

        config.check()
        self.config = config
        self.accelerator = acc = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation,
            cpu=config.device == "cpu",
        )
        set_seed(config.seed)
        self.weight_dtype = _weight_dtype(acc.mixed_precision)
        self.output = Path(config.output)
        if acc.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)

        self.scan = scan_dataset(config.data, config.data_root)
        self.log(self.scan.describe())
        self.held_out = hold_out(self.scan.items, config) if config.sample_every else []
        if self.held_out:
            # Previews of pictures the adapter trains on would flatter it: these never reach it.
            kept = set(self.held_out)
            self.scan.items = [item for item in self.scan.items if item not in kept]
            self.log(f"{len(self.held_out)} image(s) held out of training for the sample previews")

        if frozen is None:
            frozen = FrozenModels.load(config.base_model, config.image_encoder, acc.device, self.weight_dtype)
        else:
            for module in frozen.modules().values():
                module.to(acc.device)
                if self.weight_dtype != torch.float32:
                    module.to(self.weight_dtype)
        self.frozen = frozen
        enc = frozen.image_encoder.config
        if config.init_adapter is not None:
            adapter = IPAdapter(read_checkpoint(config.init_adapter))
            if adapter.variant != config.variant:
                raise TrainingError(
                    f"'{config.init_adapter}' is a {adapter.variant} adapter, not {config.variant}."
                )
        else:
            adapter = IPAdapter.initialise(
                frozen.unet,
                config.variant,
                encoder_projection_dim=enc.projection_dim,
                encoder_hidden_size=enc.hidden_size,
                num_tokens=config.num_tokens,
                name=config.name,
            )
        self.installed = install_for_training(
            adapter,
            frozen.unet,
            encoder_projection_dim=enc.projection_dim,
            encoder_hidden_size=enc.hidden_size,
        )
        if config.gradient_checkpointing:
            frozen.unet.enable_gradient_checkpointing()
        else:
            frozen.unet.disable_gradient_checkpointing()
        self.hidden_states = adapter.uses_hidden_states

        # AdamW, fixed learning rate, decay on every adapter parameter: the official script's setup.
        optimizer = torch.optim.AdamW(
            adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        if acc.distributed_type == DistributedType.DEEPSPEED:
            # Our data loader stays outside accelerate.prepare (it shards itself), so DeepSpeed's
            # "auto" batch size must be filled in by hand.
            ds = acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = config.batch_size
            ds["train_batch_size"] = config.batch_size * acc.num_processes * config.gradient_accumulation
        self.model, self.optimizer = acc.prepare(AdapterTrainingModel(self.installed), optimizer)

        self.sampler = EpochBatchSampler(
            len(self.scan.items), config.batch_size, config.seed, acc.process_index, acc.num_processes
        )
        dataset = CaptionedImageDataset(self.scan.items, config.resolution, frozen.clip_processor)
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=self.sampler,
            collate_fn=collate,
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            pin_memory=acc.device.type == "cuda",
        )
        self.state = TrainingState()
        self._samples: Any = None
        self._saved_step = -1
        resume = self._resume_folder()
        if resume is not None:
            self.load_checkpoint(resume)

    # ------------------------------------------------------------------ helpers
    def log(self, message: str) -> None:
        if self.accelerator.is_main_process and self.config.progress:
            print(message, file=sys.stderr, flush=True)

    @property
    def adapter(self) -> IPAdapter:
        return self.accelerator.unwrap_model(self.model).adapter

    def _resume_folder(self) -> Path | None:
        resume = self.config.resume
        if resume is None:
            return None
        if str(resume) == "latest":
            found = checkpoint_folders(self.output)
            if not found:
                self.log(f"no checkpoint in '{self.output / 'checkpoints'}' yet: starting from step 0")
                return None
            return found[-1]
        folder = Path(resume)
        if not (folder / STATE_FILE).is_file():
            raise TrainingError(f"'{folder}' is not a training checkpoint folder (no {STATE_FILE} in it).")
        return folder

    def save_adapter(self, path: Path) -> Path:
        """The adapter in the official layout, in the configured precision."""
        adapter = self.adapter
        dtype = torch.float16 if self.config.save_precision == "fp16" else torch.float32
        proj = {k: v.to(dtype) for k, v in adapter.image_proj.state_dict().items()}
        layers = [
            (k.weight.to(dtype), v.weight.to(dtype))
            for k, v in zip(adapter.to_k_ip, adapter.to_v_ip, strict=True)
        ]
        return save_checkpoint(path, proj, layers)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        folder = self.output / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.state.step:07d}"
        if (folder / STATE_FILE).is_file() and self._saved_step == self.state.step:
            return folder  # saved at this very step already (a pause), nothing has changed since
        acc.wait_for_everyone()
        acc.save_state(str(folder))
        if acc.is_main_process:
            self.save_adapter(folder / f"{self.config.name}.safetensors")
            # Written last: a folder with the state file is a complete checkpoint.
            (folder / STATE_FILE).write_text(json.dumps(self.state.to_json()), encoding="utf-8")
            keep = self.config.keep_checkpoints
            if keep is not None:
                for old in checkpoint_folders(self.output)[:-keep]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self._saved_step = self.state.step
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        try:
            self.accelerator.load_state(str(folder))
        except (RuntimeError, KeyError, ValueError, FileNotFoundError) as exc:
            raise TrainingError(
                f"The checkpoint '{folder}' does not fit this run (another variant, token count or "
                f"base model?): {str(exc).splitlines()[0]}"
            ) from exc
        self.state = TrainingState.from_json(json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
        self.log(f"resumed from '{folder}' at step {self.state.step}")

    # ------------------------------------------------------------------ training
    def prepare_samples(self) -> list[Path]:
        """Encode the held-out references and write their crops (``samples/references``); returns
        the crops' paths. Done by the first preview when not called before."""
        from .samples import SampleMaker

        if not self.held_out or not self.accelerator.is_main_process:
            return []
        if self._samples is None:
            self._samples = SampleMaker(
                self.frozen,
                self.installed,
                self.held_out,
                self.output / "samples",
                seed=self.config.seed,
                steps=self.config.sample_steps,
                guidance=self.config.sample_guidance,
                resolution=self.config.resolution,
                autocast=self.accelerator.autocast,
            )
        return self._samples.references

    def make_samples(self) -> list[Path]:
        """Previews of the held-out references with the adapter as it is now (main process only)."""
        if not self.prepare_samples():
            return []
        was_training = self.adapter.training
        self.adapter.eval()
        try:
            return self._samples.make(self.state.step)
        finally:
            self.adapter.train(was_training)

    def run(
        self,
        on_step: Callable[[StepLog], bool | None] | None = None,
        *,
        on_checkpoint: Callable[[int, Path], None] | None = None,
        on_samples: Callable[[int, list[Path]], None] | None = None,
    ) -> TrainResult:
        """Train to ``max_steps``. ``on_step`` returning True stops early: the run then ends as if
        ``max_steps`` were the current step (a checkpoint to resume from and the adapter files)."""
        from tqdm import tqdm

        acc, cfg, state = self.accelerator, self.config, self.state
        started = time.perf_counter()
        stop = False
        if acc.is_main_process:
            (self.output / "train_config.json").write_text(
                json.dumps(cfg.to_json(), indent=2) + "\n", encoding="utf-8"
            )
            (self.output / "environment.json").write_text(
                json.dumps(environment_versions(), indent=2) + "\n", encoding="utf-8"
            )

        def checkpoint() -> None:
            folder = self.save_checkpoint()
            if on_checkpoint is not None and acc.is_main_process:
                on_checkpoint(state.step, folder)

        def samples() -> None:
            paths = self.make_samples()
            if paths and on_samples is not None:
                on_samples(state.step, paths)

        if cfg.sample_every and state.step == 0:
            samples()  # the starting point, to compare every later row with
        log_path = self.output / "train_log.jsonl"
        bar = tqdm(
            total=cfg.max_steps,
            initial=state.step,
            unit="step",
            desc="training",
            disable=not (acc.is_main_process and cfg.progress),
            file=sys.stderr,
        )
        self.model.train()
        per_epoch = self.sampler.batches_per_epoch
        losses: list[torch.Tensor] = []
        last_loss: float | None = None
        window_start, window_images = time.perf_counter(), 0
        try:
            while state.step < cfg.max_steps:
                epoch, start = divmod(state.batches, per_epoch)
                self.sampler.set_position(epoch, start)
                for batch in self.loader:
                    generator = micro_batch_generator(cfg.seed, acc.process_index, state.batches)
                    with acc.accumulate(self.model):
                        loss = training_loss(
                            self.model,
                            self.frozen,
                            batch,
                            cfg.drop,
                            generator,
                            hidden_states=self.hidden_states,
                        )
                        acc.backward(loss)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    state.batches += 1
                    state.images += len(batch["captions"]) * acc.num_processes
                    window_images += len(batch["captions"]) * acc.num_processes
                    state.skipped.update(batch["skipped"])
                    losses.append(loss.detach().float())
                    if not acc.sync_gradients:
                        continue
                    state.step += 1
                    mean = acc.reduce(torch.stack(losses).mean(), reduction="mean")
                    last_loss = float(mean)
                    losses.clear()
                    now = time.perf_counter()
                    speed = window_images / max(now - window_start, 1e-9)
                    window_start, window_images = now, 0
                    if not math.isfinite(last_loss):
                        raise TrainingError(
                            f"The loss became {last_loss} at step {state.step}. Lower the learning rate, "
                            "or use bf16 instead of fp16."
                        )
                    bar.update(1)
                    bar.set_postfix(loss=f"{last_loss:.4f}", img_s=f"{speed:.2f}")
                    if acc.is_main_process:
                        with log_path.open("a", encoding="utf-8") as f:
                            f.write(
                                json.dumps({"step": state.step, "loss": last_loss, "images_per_s": speed})
                                + "\n"
                            )
                    if on_step is not None:
                        lr = float(self.optimizer.param_groups[0]["lr"])
                        stop = bool(on_step(StepLog(state.step, last_loss, speed, lr)))
                    if cfg.sample_every and state.step % cfg.sample_every == 0:
                        samples()
                    if stop or state.step >= cfg.max_steps:
                        break
                    if state.step % cfg.checkpoint_every == 0:
                        checkpoint()
                if stop:
                    break
            if cfg.sample_every and state.step % cfg.sample_every:
                samples()  # the final adapter's row
            checkpoint()
            files = self._finish()
        finally:
            bar.close()
        from accelerate.utils import gather_object

        # Each process saw its own share of the files; the list of unreadable ones is the union.
        seen = {p for part in gather_object([sorted(state.skipped)]) for p in part}
        skipped = sorted(seen | {str(p) for p, _ in self.scan.unreadable})
        if skipped and acc.is_main_process:
            (self.output / "skipped_images.txt").write_text("\n".join(skipped) + "\n", encoding="utf-8")
            self.log(f"{len(skipped)} unreadable image file(s) skipped; listed in skipped_images.txt")
        return TrainResult(state.step, last_loss, files, skipped, time.perf_counter() - started, self.output)

    def _finish(self) -> list[Path]:
        acc = self.accelerator
        acc.wait_for_everyone()
        files = [self.output / f"{self.config.name}.safetensors", self.output / f"{self.config.name}.bin"]
        if acc.is_main_process:
            for path in files:
                self.save_adapter(path)
            self.log("adapter written to " + " and ".join(str(p) for p in files))
        acc.wait_for_everyone()
        return files


def hold_out(items: list[Any], config: TrainConfig) -> list[Any]:
    """The references of the sample previews: ``sample_count`` items picked by the run's seed, so a
    resumed run holds out the same ones. At least one batch is left to train on."""
    count = min(config.sample_count, max(0, len(items) - config.batch_size))
    if count < 1:
        raise TrainingError(
            f"Sample previews hold {config.sample_count} image(s) out of training, but the folder has "
            f"only {len(items)} readable image(s) for batches of {config.batch_size}. Add images, lower "
            "the batch size, or turn the previews off."
        )
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(config.seed + 7919))
    return [items[i] for i in sorted(order[:count].tolist())]


def environment_versions() -> dict[str, str]:
    """What a run needs to be reproduced, besides its settings: the software it ran on."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "diffusers", "transformers", "accelerate", "ipa-studio"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["cuda"] = torch.version.cuda or "none"
    return versions


def bundled_config(name: str) -> Path:
    """Path of a launch config shipped in ``ipa_studio/resources/train``."""
    return Path(__file__).resolve().parents[2] / "resources" / "train" / name


def default_workers() -> int:
    """Data-loading processes: a few per GPU process, never more than the CPUs allow."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))
