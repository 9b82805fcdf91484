"""Hostile inputs, by class: files and requests built to hang, crash, exhaust memory, lose data or get
a broken file called usable. Each case must end in a specific message (or a refusal), quickly, with
nothing lost and nothing left behind.

Cases that could crash or hang the test process if a guard regressed run in a child process with a
time limit, so a regression fails the test instead of stopping the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ipa_studio.core.errors import ModelFileError, UnsafeFileError
from ipa_studio.core.models.detect import detect
from ipa_studio.core.models.safe_load import load_weights
from tests.fixtures import hostile

ROOT = Path(__file__).resolve().parents[2]


def _run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


# ------------------------------------------------------------------------ hangs and memory runaways


def _bombs(folder: Path) -> dict[str, Path]:
    return {
        "billion laughs (zip .bin)": hostile.write_torch_zip(folder / "laughs.bin", hostile.billion_laughs()),
        "billion laughs (legacy .ckpt)": hostile.write_torch_legacy(
            folder / "laughs.ckpt", hostile.billion_laughs(), [], b""
        ),
        "deep nesting": hostile.write_torch_zip(folder / "deep.ckpt", hostile.deep_lists()),
        "deep tuple as a key": hostile.write_torch_zip(folder / "tuple.pt", hostile.deep_tuple_key()),
        "contains itself": hostile.write_torch_zip(folder / "cycle.pth", hostile.self_containing_dict()),
        "storage claims 400 GB (zip)": hostile.write_torch_zip(
            folder / "claim.bin", hostile.storage_claim(10**11), {"data/0": b"\0" * 16}
        ),
        "storage claims 400 GB (legacy)": hostile.write_torch_legacy(
            folder / "claim.ckpt", hostile.storage_claim(10**11, legacy=True), ["0"], b"\0" * 24
        ),
    }


def test_pickle_bombs_are_refused_quickly_with_bounded_memory_naming_the_limit(tmp_path: Path) -> None:
    bombs = _bombs(tmp_path)
    # A child process: before the guard, the deep tuple killed the process (C stack overflow) and the
    # billion laughs never ended.
    child = _run_child(
        f"""
        import json, sys, time, tracemalloc
        from pathlib import Path
        from ipa_studio.core.models.detect import detect
        from ipa_studio.core.models.safe_load import load_weights
        out = {{}}
        for label, path in {json.dumps({k: str(v) for k, v in bombs.items()})}.items():
            tracemalloc.start()
            start = time.perf_counter()
            try:
                load_weights(path)
                loaded = "loaded"
            except Exception as exc:
                loaded = type(exc).__name__ + ": " + str(exc)
            found = detect(path)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out[label] = dict(load=loaded, usable=found.usable, reason=found.reason,
                              seconds=time.perf_counter() - start, peak=peak)
        print(json.dumps(out))
        """
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.splitlines()[-1])
    expected = {
        "billion laughs (zip .bin)": "more than 5,000,000 items",
        "billion laughs (legacy .ckpt)": "more than 5,000,000 items",
        "deep nesting": "nests containers more than 100 deep",
        "deep tuple as a key": "nests tuples more than 100 deep",
        "contains itself": "contains itself",
        "storage claims 400 GB (zip)": "claim 400,000,000,000 bytes",
        "storage claims 400 GB (legacy)": "claim 400,000,000,000 bytes",
    }
    for label, words in expected.items():
        result = results[label]
        assert result["load"].startswith("UnsafeFileError: ") and words in result["load"], (label, result)
        assert not result["usable"] and words in result["reason"], (label, result)
        # The guard reads opcodes without building the objects: a few MB at most.
        assert result["peak"] < 64 << 20, (label, result["peak"])


def test_a_lightning_callback_called_with_arguments_is_an_inert_leftover(tmp_path: Path) -> None:
    path = hostile.write_torch_zip(tmp_path / "last.ckpt", hostile.lightning_callback_with_arguments())
    state = load_weights(path)  # was: TypeError "_TrainingLeftover() takes no arguments"
    assert state["w"] == 1 and len(state["callbacks"]) == 1
    found = detect(path)
    assert not found.usable and found.reason == "it holds no weights at all"


def test_real_checkpoint_layouts_pass_the_pickle_guard(tmp_path: Path) -> None:
    """torch.save's own zip and legacy files, with shared storages, nested dicts and views."""
    base = torch.arange(12, dtype=torch.float32)
    state = {
        "state_dict": {"a.weight": base.view(3, 4), "a.view": base[2:6], "b": torch.ones(2).half()},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]}],
        "global_step": 10,
    }
    for legacy in (False, True):
        path = tmp_path / f"real-{legacy}.ckpt"
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
        loaded = load_weights(path)
        assert torch.equal(loaded["state_dict"]["a.view"], base[2:6])


def test_a_truncated_pickle_is_called_damaged_not_unsafe(tmp_path: Path) -> None:
    path = hostile.write_torch_zip(tmp_path / "cut.bin", hostile.billion_laughs(3)[:-20])
    with pytest.raises(ModelFileError, match="truncated or damaged") as info:
        load_weights(path)
    assert not isinstance(info.value, UnsafeFileError)
