"""Time from Generate to the saved PNG, today's default against the Fast preset, on this CPU.

Full-size SD1.5 (UNet, VAE, text encoder), the ViT-H/14 image encoder and a global IP-Adapter, all
random weights, and a full-size random-weight LoRA in the published LCM-LoRA key layout (rank 64 on
every linear and convolution the LCM distillation script targets; see
``tests/fixtures/fewstep_loras.py``), saved as ``lcm-lora-sdv1-5.safetensors``. One reference
picture, 512 × 512:

  (a) 30 DDIM steps, guidance 7.5, fp32, no LoRA                      (today's default)
  (b) the Fast preset ``core/fewstep.py`` proposes for that LoRA —
      LCM, 4 steps, guidance 1 (no unconditional half) — with the LoRA, in the CPU's default
      precision (bf16 where the CPU has it natively, else fp32)

Each timed picture runs in a fresh process that has loaded the models first (as the window has
when Generate is pressed); the time runs from ``Engine.generate`` — which reads and applies the
LoRA — to ``save_png`` returning, the way the window and the CLI save (metadata included). The
presets alternate (a b b a a b …) so that a drift in the machine's speed hits both alike. Printed: each
picture's seconds, the medians, the ratio b/a of the medians and the median of the per-round
ratios, and the peak memory (resident set) during Generate and over the whole process.

    python benchmarks/time_to_image.py --repeats 2

Targets (issue 16): b/a ≤ 0.07 and (b) ≤ 15 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PRESETS = ("a", "b")
LORA_NAME = "lcm-lora-sdv1-5.safetensors"


def build(folder: Path) -> None:
    """Full-size random models and the LCM-LoRA file in ``folder``."""
    import torch
    from adapter_overhead import build_full_size
    from diffusers import UNet2DConditionModel

    from tests.fixtures.fewstep_loras import write_lcm_lora

    base, encoder, global_path, _plus = build_full_size(folder)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    lora = write_lcm_lora(unet, folder / LORA_NAME, rank=64, alpha=64.0, dtype=torch.float16)
    (folder / "paths.json").write_text(
        json.dumps(
            {"base": str(base), "encoder": str(encoder), "adapter": str(global_path), "lora": str(lora)}
        )
    )


class _PeakRSS:
    """Samples the process's resident set every 10 ms while running (the peak of one phase)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(0.01)

    def __enter__(self) -> _PeakRSS:
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def apply_lora_outside_engine(engine, lora: Path, strength: float) -> str:
    """For an engine that does not apply ``GenerationRequest.loras`` itself: the same merge through
    ``core/lora.py``'s patcher. Returns how the LoRA was applied, for the printout."""
    try:
        from ipa_studio.core.lora import AppliedLora, LoraPatcher, read_lora
    except ImportError:
        return "NOT APPLIED (this checkout has no ipa_studio.core.lora): timings are without the LoRA"
    base = engine.base
    LoraPatcher(base.unet, base.text_encoder).apply([AppliedLora(read_lora(lora), strength, strength)])
    return "applied by core.lora.LoraPatcher from this script (the engine ignores request.loras)"


def child(preset: str, folder: Path, out: Path, size: int = 512) -> dict:
    """Load, then time one Generate → saved PNG. Runs in its own process."""
    import torch
    from PIL import Image

    from ipa_studio.core.devices import default_dtype
    from ipa_studio.core.engine import Engine
    from ipa_studio.core.fewstep import apply_preset, detect_fewstep
    from ipa_studio.core.images import save_png
    from ipa_studio.core.metadata import request_to_metadata
    from ipa_studio.core.request import GenerationRequest, LoraSpec, ModelSpec, Reference

    paths = json.loads((folder / "paths.json").read_text())
    reference = Image.effect_mandelbrot((300, 240), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    request = GenerationRequest(
        models=ModelSpec(paths["base"], paths["adapter"], paths["encoder"]),
        references=(Reference(reference),),
        prompt="a lighthouse on a cliff at dusk, oil painting",
        scale=0.8,
        steps=30,
        guidance=7.5,
        seed=1,
        width=size,
        height=size,
        scheduler="ddim",
    )
    how = "none"
    if preset == "a":
        engine = Engine(device="cpu", dtype=torch.float32)
    else:
        fast = detect_fewstep(paths["lora"])
        if fast is None:
            raise SystemExit("the Fast preset was not recognised for the LCM-LoRA file")
        engine = Engine(device="cpu", dtype=default_dtype("cpu"))
        request = apply_preset(request, fast).replace(loras=(LoraSpec(paths["lora"], 1.0),))
    engine.load(request.replace(loras=()))  # the models the window has loaded before Generate
    if request.loras and not hasattr(engine, "applied_loras"):
        # An engine from before LoRA support: merge it here, outside the timed part.
        how = apply_lora_outside_engine(engine, Path(paths["lora"]), 1.0)
        request = request.replace(loras=())

    def picture(index: int) -> tuple[float, int]:
        target = out / f"{preset}-{os.getpid()}-{index}.png"
        with _PeakRSS() as rss:
            start = time.perf_counter()
            result = engine.generate(request)
            save_png(
                result.images[0], target, request_to_metadata(request, extra={"seconds": result.seconds})
            )
            seconds = time.perf_counter() - start
        return seconds, rss.peak

    seconds, peak = picture(0)
    if request.loras:
        if not engine.applied_loras:
            raise SystemExit("the engine was given the LoRA but did not apply it")
        how = "applied by the engine from request.loras, inside the timed Generate"
    again = picture(1)[0] if preset == "b" else None  # the same settings again: the LoRA is in place
    return {
        "preset": preset,
        "seconds": seconds,
        "again": again,
        "peak_generate": peak,
        "peak_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "dtype": str(engine.dtype).replace("torch.", ""),
        "settings": f"{request.scheduler} {request.steps} steps, guidance {request.guidance:g}",
        "lora": how,
        "threads": torch.get_num_threads(),
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="timed pictures per preset")
    p.add_argument("--child", choices=PRESETS, help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=512, help="picture side in pixels")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.folder / "out", args.size)), flush=True)
        return

    try:
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "out").mkdir()
        t0 = time.perf_counter()
        build(folder)
        print(
            f"built full-size random models and the LCM-LoRA in {time.perf_counter() - t0:.0f} s", flush=True
        )
        order = []
        for r in range(args.repeats):
            order += ["a", "b"] if r % 2 == 0 else ["b", "a"]
        runs: dict[str, list[dict]] = {"a": [], "b": []}
        for preset in order:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    preset,
                    "--folder",
                    str(folder),
                    "--size",
                    str(args.size),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"preset {preset} failed")
            found = json.loads(proc.stdout.strip().splitlines()[-1])
            runs[preset].append(found)
            extra = f", same settings again {found['again']:.1f} s" if found["again"] is not None else ""
            print(
                f"({preset}) {found['settings']}, {found['dtype']}: {found['seconds']:.1f} s{extra}; "
                f"peak {_gib(found['peak_generate'])} during Generate, {_gib(found['peak_process'])} process",
                flush=True,
            )
    a = [x["seconds"] for x in runs["a"]]
    b = [x["seconds"] for x in runs["b"]]
    rounds = [y / x for x, y in zip(a, b, strict=True)]
    print()
    print(f"LoRA: {runs['b'][0]['lora']}; threads: {runs['a'][0]['threads']}")
    print(f"(a) 30 DDIM steps, guidance 7.5, fp32:        median {statistics.median(a):.1f} s  {a}")
    b_label = f"(b) Fast preset, {runs['b'][0]['settings']}, {runs['b'][0]['dtype']}"
    print(f"{b_label}: median {statistics.median(b):.1f} s  {b}")
    print(
        f"ratio b/a: {statistics.median(b) / statistics.median(a):.4f} (medians), "
        f"{statistics.median(rounds):.4f} (median of per-round ratios)   target ≤ 0.07"
    )
    print(f"(b) ≤ 15 s: {'yes' if statistics.median(b) <= 15 else 'no'}")
    for key in ("a", "b"):
        gen = max(x["peak_generate"] for x in runs[key])
        proc_peak = max(x["peak_process"] for x in runs[key])
        print(f"peak memory ({key}): {_gib(gen)} during Generate, {_gib(proc_peak)} over the process")


if __name__ == "__main__":
    main()
