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


# ------------------------------------------------------------------ detection calling broken files usable


def _valid_header() -> dict:
    return {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
        "c": {"dtype": "I64", "shape": [1], "data_offsets": [32, 40]},
    }


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda h: h["b"].update(data_offsets=[20, 28]), "overlap"),
        (lambda h: h["b"].update(dtype="F7"), "unknown dtype 'F7'"),
        (lambda h: h["a"].update(shape=[2, 4]), "F32 [2, 4] = 32 bytes, but its data offsets span 24"),
        (lambda h: h["c"].update(data_offsets=[32, 48], shape=[2]), "is truncated"),
        (lambda h: h.update(__metadata__=["not", "a", "table"]), "__metadata__ is not a table of texts"),
        (lambda h: h.update(__metadata__={"step": 5}), "__metadata__ is not a table of texts"),
        (lambda h: h.update(a="F32"), "entry for tensor 'a' is not a table"),
        (lambda h: h["a"].update(shape=[-2, -3]), "invalid shape"),
        (lambda h: h["c"].update(data_offsets=[40, 32]), "run backwards"),
    ],
)
def test_broken_safetensors_headers_are_not_called_usable(tmp_path: Path, change, words: str) -> None:
    from safetensors.torch import load_file

    header = _valid_header()
    change(header)
    path = hostile.write_safetensors_header(tmp_path / "broken.safetensors", header, data_len=40)
    found = detect(path)
    assert not found.usable and found.kind == "invalid" and words in found.reason, found.reason
    with pytest.raises(Exception):  # noqa: B017, PT011 - the independent reader refuses it too
        load_file(str(path))


def test_header_validation_agrees_with_the_safetensors_reader_on_random_damage(tmp_path: Path) -> None:
    """Random damage to a header written by safetensors itself: our header check and the safetensors
    reader (the independent one the loader uses) accept and refuse exactly the same files."""
    import random

    from safetensors.torch import load_file, save_file

    from ipa_studio.core.models.detect import read_safetensors_header

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.ones(2, 3), "b": torch.ones(4).half(), "c": torch.ones(1, dtype=torch.long)}, good)
    raw = good.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    base_header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    rng = random.Random(15)
    dtypes = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "F7", "Q4", ""]
    agree = refused = 0
    for case in range(300):
        header = json.loads(json.dumps(base_header))
        payload = data
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(["a", "b", "c"])
            what = rng.randrange(6)
            if not isinstance(header[name], dict) or "shape" not in header[name]:
                continue  # already replaced by something that is not an entry
            if what == 0:
                header[name]["dtype"] = rng.choice(dtypes)
            elif what == 1:
                header[name]["shape"] = [max(0, d + rng.choice([-1, 0, 1])) for d in header[name]["shape"]]
            elif what == 2:
                i = rng.randrange(2)
                header[name]["data_offsets"][i] = max(
                    0, header[name]["data_offsets"][i] + rng.choice([-8, -2, 2, 8])
                )
            elif what == 3:
                payload = payload + b"\0" * rng.choice([1, 8]) if rng.random() < 0.5 else payload[:-4]
            elif what == 4:
                header["__metadata__"] = rng.choice([None, {"k": "v"}, {"k": 1}, [], "text"])
            else:
                header[name] = rng.choice([None, [], {"dtype": "F32"}, header[name]])
        path = tmp_path / f"case{case}.safetensors"
        head = json.dumps(header).encode()
        path.write_bytes(len(head).to_bytes(8, "little") + head + payload)
        try:
            load_file(str(path))
            reader_ok = True
        except Exception:  # noqa: BLE001 - any refusal by the reader counts
            reader_ok = False
        try:
            read_safetensors_header(path)
            ours_ok = True
        except ModelFileError:
            ours_ok = False
        assert ours_ok == reader_ok, (case, header, len(payload))
        agree += 1
        refused += not ours_ok
    assert agree == 300 and 100 < refused < 300  # the damage was varied: some files stay readable
