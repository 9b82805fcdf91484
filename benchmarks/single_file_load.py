"""A full-size SD1.5 single file in the layout of runwayml's v1-5-pruned-emaonly (random weights):
detection, loading, and the same tensors as diffusers' own ``from_single_file``.

The file is written by the independent fixture builder (``tests/fixtures/real_layouts.py``: text
encoder under ``cond_stage_model.transformer.text_model.*``, int64 position_ids, EMA counters,
scheduler buffers), fp16 like most downloads (≈2 GB). Prints, from runs interleaved in this one
process:

  * detection time of the file (header only) and its verdict;
  * our load time / diffusers ``StableDiffusionPipeline.from_single_file`` load time (median of the
    per-round ratios; both offline, fp32 on the CPU, configs from a weights-free folder);
  * whether every UNet / VAE / text-encoder tensor is equal between the two (it must be).

    python benchmarks/single_file_load.py --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ipa_studio.core.models.detect import detect  # noqa: E402
from ipa_studio.core.models.loader import bundled_resources, load_base_model, single_file_configs  # noqa: E402
from ipa_studio.core.models.tiny import SD15_MODEL_INDEX  # noqa: E402
from tests.fixtures.real_layouts import sd15_original_state, write_checkpoint  # noqa: E402

PARTS = ("unet", "vae", "text_encoder")


def build(folder: Path) -> tuple[Path, Path]:
    """(the single file, a weights-free config folder for diffusers)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = single_file_configs()
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg["unet"]).state_dict()
    vae = AutoencoderKL.from_config(cfg["vae"]).state_dict()
    text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).state_dict()
    state = sd15_original_state(unet, vae, text, dtype=torch.float16)
    del unet, vae, text
    path = write_checkpoint(folder / "v1-5-pruned-emaonly.safetensors", state)
    del state
    config = folder / "config"
    for part in PARTS:
        (config / part).mkdir(parents=True)
        (config / part / "config.json").write_text(json.dumps(cfg[part]))
    (config / "scheduler").mkdir()
    (config / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg["scheduler"]))
    shutil.copytree(bundled_resources() / "tokenizer", config / "tokenizer")
    (config / "model_index.json").write_text(json.dumps(SD15_MODEL_INDEX))
    return path, config


def load_ours(path: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    base = load_base_model(path, torch.device("cpu"), torch.float32)
    took = time.perf_counter() - start
    return took, {p: getattr(base, p) for p in PARTS}


def load_diffusers(path: Path, config: Path) -> tuple[float, dict]:
    from diffusers import StableDiffusionPipeline

    start = time.perf_counter()
    pipe = StableDiffusionPipeline.from_single_file(
        str(path), config=str(config), local_files_only=True, torch_dtype=torch.float32, safety_checker=None
    )
    took = time.perf_counter() - start
    return took, {p: getattr(pipe, p) for p in PARTS}


def fingerprint(parts: dict) -> dict[str, str]:
    """{part.name: sha256 of its bytes} of every tensor: compares two models without holding both."""
    out = {}
    for part, module in parts.items():
        for name, tensor in module.state_dict().items():
            data = tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()
            out[f"{part}.{name}"] = f"{tensor.dtype}{tuple(tensor.shape)}" + hashlib.sha256(data).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        path, config = build(Path(tmp))
        print(f"file: {path.stat().st_size / 1e9:.2f} GB, {path.name}")
        start = time.perf_counter()
        found = detect(path)
        took = time.perf_counter() - start
        print(f"detection: {took:.2f} s (first call, imports included) -> {found.summary()}")
        start = time.perf_counter()
        detect(path)
        print(f"detection again: {time.perf_counter() - start:.2f} s")
        # Both readers get the file from the page cache: the first read from disk would otherwise
        # be charged to whichever loads first.
        with path.open("rb") as f:
            while f.read(64 << 20):
                pass
        ratios, equal = [], False
        for round_ in range(args.repeats):
            order = (load_ours, load_diffusers) if round_ % 2 == 0 else (load_diffusers, load_ours)
            times, digests = {}, {}
            for fn in order:
                took, parts = fn(path) if fn is load_ours else fn(path, config)
                times[fn.__name__] = took
                if round_ == 0:
                    digests[fn.__name__] = fingerprint(parts)
                # One full-size fp32 model is ~4.5 GB: never hold two at once.
                del parts
                gc.collect()
            if round_ == 0:
                equal = digests["load_ours"] == digests["load_diffusers"]
            ratios.append(times["load_ours"] / times["load_diffusers"])
            print(
                f"round {round_ + 1}: ours {times['load_ours']:.1f} s, "
                f"diffusers {times['load_diffusers']:.1f} s, ratio {ratios[-1]:.2f}"
            )
        print(f"load time ours / diffusers (median of {len(ratios)}): {statistics.median(ratios):.2f}")
        print(f"every UNet / VAE / text-encoder tensor equal to diffusers': {equal}")


if __name__ == "__main__":
    main()
