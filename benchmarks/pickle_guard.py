"""What the pickle guard (``core/models/pickle_scan.py``) costs on checkpoint-shaped pickles, and how
fast it refuses the hostile ones.

The pickle part of a checkpoint depends on its keys, not on the size of its tensors, so the model
here has the full SD1.5 single-file key set (UNet, VAE, text encoder, 1 131 tensors) twice over (an
EMA copy, as in training checkpoints) plus per-tensor optimizer state, with one-element tensors.
Prints, from interleaved repeats in this one run: guard time, PyTorch's weights-only load time and
their ratio (zip and legacy format); then the time and peak Python memory to refuse each bomb.

    python benchmarks/pickle_guard.py --repeats 5
"""

from __future__ import annotations

import argparse
import pickletools
import statistics
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ipa_studio.core.errors import UnsafeFileError  # noqa: E402
from ipa_studio.core.models.pickle_scan import check_pickle_file  # noqa: E402
from ipa_studio.core.models.safe_load import load_weights  # noqa: E402
from tests.fixtures import hostile  # noqa: E402
from tests.fixtures.checkpoints import sd15_shapes  # noqa: E402


def checkpoint_state() -> dict:
    keys = list(sd15_shapes())
    weights = {k: torch.zeros(1) for k in keys}
    ema = {"model_ema." + k.replace(".", ""): torch.zeros(1) for k in keys if k.startswith("model.")}
    optimizer = {i: {"exp_avg": torch.zeros(1), "exp_avg_sq": torch.zeros(1)} for i in range(len(keys))}
    return {
        "state_dict": {**weights, **ema},
        "optimizer_states": [
            {"state": optimizer, "param_groups": [{"lr": 1e-4, "params": list(range(len(keys)))}]}
        ],
        "global_step": 470000,
        "epoch": 6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="pickle-guard-"))
    state = checkpoint_state()
    files = {}
    for legacy in (False, True):
        path = folder / f"{'legacy' if legacy else 'zip'}.ckpt"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        files["legacy" if legacy else "zip"] = path
    tensors = sum(1 for _ in state["state_dict"]) + 2 * len(state["optimizer_states"][0]["state"])
    ops = sum(1 for _ in pickletools.genops(zipfile.ZipFile(files["zip"]).read("zip/data.pkl")))
    print(f"checkpoint-shaped pickle: {tensors} tensors, {ops} pickle instructions")
    for label, path in files.items():
        guard, load = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            check_pickle_file(path)
            guard.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_weights(path)  # guard + torch.load(weights_only=True)
            load.append(time.perf_counter() - start)
        g, total = statistics.median(guard), statistics.median(load)
        line = f"  {label:6}  guard {g * 1000:7.1f} ms   whole safe load {total * 1000:7.1f} ms"
        print(f"{line}   share {g / total:.2f}")
    bombs = {
        "billion laughs (10^30 paths)": hostile.write_torch_zip(
            folder / "laughs.bin", hostile.billion_laughs()
        ),
        "lists nested 200 000 deep": hostile.write_torch_zip(folder / "deep.bin", hostile.deep_lists()),
        "tuple key nested 300 000 deep": hostile.write_torch_zip(
            folder / "tuple.bin", hostile.deep_tuple_key()
        ),
        "storage claiming 400 GB": hostile.write_torch_legacy(
            folder / "claim.ckpt", hostile.storage_claim(10**11, legacy=True), ["0"], b"\0" * 24
        ),
    }
    print("refusals:")
    for label, path in bombs.items():
        start = time.perf_counter()
        try:
            load_weights(path)
            verdict = "LOADED"
        except UnsafeFileError:
            verdict = "refused"
        seconds = time.perf_counter() - start
        tracemalloc.start()  # a second pass: tracing slows every allocation, so it is not timed
        try:
            load_weights(path)
        except UnsafeFileError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  {label:32} {verdict:8} {seconds * 1000:8.1f} ms   peak {peak / 2**20:6.1f} MiB")


if __name__ == "__main__":
    main()
