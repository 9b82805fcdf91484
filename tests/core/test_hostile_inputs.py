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


def test_a_zip_checkpoint_announcing_too_many_records_is_refused_before_its_directory_is_read(
    tmp_path: Path, monkeypatch
) -> None:
    from ipa_studio.core.models import pickle_scan

    path = tmp_path / "many.bin"
    torch.save({"a": torch.zeros(1), "b": torch.zeros(1)}, path)
    monkeypatch.setattr(pickle_scan, "MAX_ZIP_ENTRIES", 3)  # a real bomb would need millions
    with pytest.raises(UnsafeFileError, match=r"announces \d+ records \(the limit is 3\)"):
        load_weights(path)


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


# ------------------------------------------------------------------------ data loss in the model library


def _small_model(path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(4)}, str(path))
    return path


_WRITER = """
import sys
import time
from pathlib import Path
from ipa_studio.core.models.library import ModelLibrary

root, tag, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
library = ModelLibrary(root)
(root.parent / f"ready-{tag}").touch()
while not (root.parent / "go").exists():  # both start together, after their slow imports
    time.sleep(0.01)
for i in range(rounds):
    library.add(root.parent / "src" / f"{tag}-{i}.safetensors", hash_files=False)
    if tag == "b" and i % 4 == 0:
        library.verify()  # hashes every entry, then records the hashes
    if tag == "a" and i % 4 == 0:
        library.refresh(hash_new=False)
print("done")
"""


def test_concurrent_library_writers_lose_nothing(tmp_path: Path) -> None:
    rounds = 40
    for tag in "ab":
        for i in range(rounds):
            _small_model(tmp_path / "src" / f"{tag}-{i}.safetensors")
    root = tmp_path / "models"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [
        subprocess.Popen(
            [sys.executable, str(script), str(root), tag, str(rounds)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in "ab"
    ]
    import time

    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{tag}").exists() for tag in "ab") and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "go").touch()
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0 and "done" in out, err[-3000:]
    from ipa_studio.core.models.library import ModelLibrary

    names = sorted(e.name for e in ModelLibrary(root).entries())
    assert names == sorted(f"{tag}-{i}" for tag in "ab" for i in range(rounds))


def test_verify_records_hashes_into_the_index_as_it_is_then(tmp_path: Path, monkeypatch) -> None:
    """An entry added while verify hashes is kept (verify used to write back its stale copy)."""
    from ipa_studio.core.models import library as library_module

    library = library_module.ModelLibrary(tmp_path / "models")
    library.add(_small_model(tmp_path / "one.safetensors"), hash_files=False)
    real_sha = library_module.sha256_of

    def sha_while_someone_adds(path, *args, **kwargs):
        other = library_module.ModelLibrary(library.root)
        other.add(_small_model(tmp_path / "two.safetensors"), hash_files=False)
        return real_sha(path, *args, **kwargs)

    monkeypatch.setattr(library_module, "sha256_of", sha_while_someone_adds)
    (result,) = library.verify()
    monkeypatch.undo()
    assert result.ok
    entries = {e.name: e for e in library.entries()}
    assert set(entries) == {"one", "two"} and entries["one"].sha256 is not None


def test_the_models_folder_itself_is_never_added_or_deleted(tmp_path: Path) -> None:
    from ipa_studio.core.models.library import LibraryError, ModelLibrary

    library = ModelLibrary(tmp_path / "models")
    kept = _small_model(library.root / "kept.safetensors")
    with pytest.raises(LibraryError, match="is the models folder itself"):
        library.add(library.root)
    # An index that says so anyway (hand-edited, or written by an older version) deletes nothing.
    library.add(kept)
    data = json.loads(library.index_path.read_text())
    root_entry = {**data["entries"][0], "path": str(library.root), "owned": True}
    data["entries"] += [{**root_entry, "name": "everything"}, {**root_entry, "name": "forced"}]
    library.index_path.write_text(json.dumps(data))
    library.remove("everything")
    with pytest.raises(LibraryError, match="it is the models folder itself"):
        library.remove("forced", delete_files=True)
    assert kept.exists() and {e.name for e in library.entries()} == {"kept", "forced"}


def test_remove_in_a_copied_library_never_deletes_the_original_librarys_files(tmp_path: Path) -> None:
    from ipa_studio.core.models.library import LibraryError, ModelLibrary

    original = ModelLibrary(tmp_path / "original")
    entry = original.add(_small_model(tmp_path / "a.safetensors"), copy=True)
    assert entry.owned and entry.path.parent == original.root.resolve()
    copy = ModelLibrary(tmp_path / "copy")
    copy.root.mkdir()
    (copy.root / "library.json").write_text(original.index_path.read_text())  # "owned": true inside
    with pytest.raises(LibraryError, match="only files inside its models folder"):
        copy.remove("a", delete_files=True)
    assert [e.name for e in copy.entries()] == ["a"]  # refused before anything changed
    copy.remove("a")
    assert entry.path.exists() and copy.entries() == [] and [e.name for e in original.entries()] == ["a"]


def test_remove_judges_symlinks_by_where_the_link_itself_lies(tmp_path: Path) -> None:
    from ipa_studio.core.models.library import ModelLibrary

    library = ModelLibrary(tmp_path / "models")
    outside = _small_model(tmp_path / "outside" / "model.safetensors")
    library.root.mkdir()
    link = library.root / "link.safetensors"
    link.symlink_to(outside)
    (library.root / "linked-folder").symlink_to(outside.parent, target_is_directory=True)
    library.refresh(hash_new=False)
    through_folder = library.add(library.root / "linked-folder" / "model.safetensors", name="via-folder")
    library.remove("via-folder")  # resolves outside the models folder: forgotten, not deleted
    assert outside.exists() and through_folder.path == outside.resolve()
    library.add(link, name="link")
    # refresh and add store resolved paths; an index written by hand may hold the link itself
    data = json.loads(library.index_path.read_text())
    for raw in data["entries"]:
        if raw["name"] == "link":
            raw["path"] = str(link)
    library.index_path.write_text(json.dumps(data))
    library.remove("link")
    assert not link.is_symlink() and outside.exists()  # the link went, its target stayed


def test_an_interrupted_conversion_leaves_no_orphans_after_the_next_start(tmp_path: Path) -> None:
    from ipa_studio.core import files
    from ipa_studio.core.models.library import ModelLibrary

    source = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, source)
    root = tmp_path / "models"
    child = _run_child(
        f"""
        import os, signal
        import safetensors.torch
        from ipa_studio.core.models.library import ModelLibrary

        def save_then_die(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"partial" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the write

        safetensors.torch.save_file = save_then_die
        ModelLibrary({str(root)!r}).add({str(source)!r}, convert=True)
        """
    )
    assert child.returncode == -9
    left = [p.name for p in root.iterdir() if files.is_temp_name(p.name)]
    assert left, "the child did not get as far as writing"
    # A live process's partial file is never taken for an orphan.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_tmp = root / f".other.safetensors.ipa-{files._HOST}-{live.pid}-abcd{files.TEMP_SUFFIX}"
        live_tmp.write_bytes(b"being written")
        ModelLibrary(root)  # the next start
        assert sorted(p.name for p in root.iterdir() if files.is_temp_name(p.name)) == [live_tmp.name]
        assert not (root / "model.safetensors").exists() and ModelLibrary(root).entries() == []
    finally:
        live.kill()
        live.wait()
    ModelLibrary(root).refresh()  # once its process is gone, the next scan removes it too
    assert not live_tmp.exists()


def _enospc(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_during_add_leaves_nothing_half_written_and_says_so(tmp_path: Path, monkeypatch) -> None:
    import shutil

    import safetensors.torch

    from ipa_studio.core.models.library import LibraryError, ModelLibrary

    library = ModelLibrary(tmp_path / "models")
    library.add(_small_model(tmp_path / "first.safetensors"))
    index_before = library.index_path.read_bytes()
    big = _small_model(tmp_path / "big.safetensors")

    def copy_half_then_fail(src, dst, *args, **kwargs):
        Path(dst).write_bytes(Path(src).read_bytes()[:10])
        raise OSError(28, "No space left on device")

    def save_half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left (os error 28)")

    source = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(8)}}, source)
    attempts = [
        ("copy", lambda: library.add(big, copy=True), (shutil, "copy2", copy_half_then_fail)),
        (
            "convert",
            lambda: library.add(source, convert=True),
            (safetensors.torch, "save_file", save_half_then_fail),
        ),
        ("index", lambda: library.add(big), (os, "fsync", _enospc)),
    ]
    for label, attempt, (module, attr, fake) in attempts:
        with monkeypatch.context() as patch:
            patch.setattr(module, attr, fake)
            with pytest.raises(LibraryError, match="not enough free space") as info:
                attempt()
        assert "Nothing was added" in str(info.value) or "unchanged" in str(info.value), label
        assert sorted(p.name for p in library.root.iterdir()) == [".library.lock", "library.json"], label
        assert library.index_path.read_bytes() == index_before, label


def test_a_read_only_library_fails_to_write_as_an_oserror_and_still_lists(
    tmp_path: Path, monkeypatch
) -> None:
    """The window lists a read-only library when refreshing it raises OSError; the lock must not
    change that."""
    from ipa_studio.core import files
    from ipa_studio.core.models.library import LibraryError, ModelLibrary

    library = ModelLibrary(tmp_path / "models")
    library.add(_small_model(tmp_path / "a.safetensors"))

    def read_only(self):
        raise PermissionError(13, "Permission denied", str(self.path))

    monkeypatch.setattr(files.FileLock, "_acquire", read_only)
    with pytest.raises(OSError) as info:
        library.refresh()
    assert isinstance(info.value, LibraryError) and "Permission denied" in str(info.value)
    assert [e.name for e in library.entries()] == ["a"]


@pytest.mark.parametrize(
    ("index", "words"),
    [
        ("[]", "holds a list instead of a table"),
        ("null", "holds null instead of a table"),
        ('{"entries": {"a": 1}}', "its 'entries' is a table, not a list"),
        ('{"entries": [5]}', "entry number 1: it is a number, not a table"),
        ('{"entries": [{"name": "x"}]}', "entry 'x': it has no 'path'"),
        ('{"folders": [3]}', "its 'folders' list holds something other than paths"),
        ('{"entries": [' + "[" * 100_000 + "]" * 100_000 + "]}", "is damaged"),
    ],
    ids=["list", "null", "entries-table", "entry-number", "entry-no-path", "folders-numbers", "deep"],
)
def test_a_wrong_shaped_library_index_is_a_message_not_a_traceback(
    tmp_path: Path, capsys, index: str, words: str
) -> None:
    from ipa_studio.cli import main

    root = tmp_path / "models"
    root.mkdir()
    (root / "library.json").write_text(index)
    assert main(["models", "--library", str(root), "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The model library index") and words in err and "Traceback" not in err
    assert (root / "library.json").read_text() == index  # never overwritten


# ------------------------------------------------------------------ silently wrong results, tracebacks


def _adapter_mutations(state: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor], bool]]:
    """(label, mutated flat state, must be refused) for one official flat adapter state."""
    import random

    rng = random.Random(7)
    keys = sorted(state)
    proj_key = next(k for k in keys if k.startswith("image_proj.") and state[k].ndim == 2)
    out: list[tuple[str, dict[str, torch.Tensor], bool]] = []

    def changed(**items: torch.Tensor | None) -> dict[str, torch.Tensor]:
        new = dict(state)
        for key, value in items.items():
            if value is None:
                new.pop(key)
            else:
                new[key] = value
        return new

    for key in rng.sample(keys, 6):
        out.append((f"without {key}", changed(**{key: None}), False))
        out.append((f"{key} empty", changed(**{key: torch.zeros(0, *state[key].shape[1:])}), True))
        out.append((f"{key} 1-D", changed(**{key: state[key].flatten()}), False))
        out.append((f"{key} 0-D", changed(**{key: torch.tensor(1.0)}), False))
    nan, inf = state[proj_key].clone(), state["ip_adapter.1.to_v_ip.weight"].clone()
    nan[0, 0], inf[-1, -1] = float("nan"), float("inf")
    out += [
        ("NaN", changed(**{proj_key: nan}), True),
        ("Inf", changed(**{"ip_adapter.1.to_v_ip.weight": inf}), True),
        ("extra projection key", changed(**{"image_proj.extra.weight": torch.ones(2, 2)}), True),
        ("extra layer bias", changed(**{"ip_adapter.1.to_k_ip.bias": torch.ones(2)}), True),
        ("extra odd key", changed(**{"ip_adapter.foo.weight": torch.ones(2, 2)}), True),
        ("zero-size extra key", changed(**{"ip_adapter.3.to_k_ip.zero": torch.zeros(0)}), True),
    ]
    return out


@pytest.mark.parametrize("variant", ["global", "plus", "full"])
def test_damaged_adapter_checkpoints_get_a_message_never_a_traceback(
    tmp_path: Path, tiny_adapters: dict, variant: str
) -> None:
    from safetensors.torch import load_file, save_file

    from ipa_studio.core.adapter import IPAdapter, read_checkpoint
    from ipa_studio.core.errors import IPAStudioError

    state = load_file(str(tiny_adapters[(variant, "safetensors")]))
    for number, (label, mutated, must_refuse) in enumerate(_adapter_mutations(state)):
        path = tmp_path / f"case{number}.safetensors"
        save_file(mutated, str(path))
        found = detect(path)  # never raises
        try:
            IPAdapter(read_checkpoint(path))
            refused = None
        except IPAStudioError as exc:
            refused = str(exc)
        if must_refuse:
            assert refused and f"'{path.name}'" in refused, (label, refused)
        if label in ("NaN", "Inf"):
            assert "NaN or infinite" in refused and ("'image_proj." in refused or "'ip_adapter.1." in refused)
        if "empty" in label or "zero-size" in label:
            assert not found.usable and "empty" in found.reason, (label, found.reason)


def test_nan_in_an_adapter_is_refused_at_load_naming_file_and_tensor(
    tmp_path: Path, tiny_adapters: dict
) -> None:
    from ipa_studio.core.adapter import read_checkpoint

    state = torch.load(tiny_adapters[("global", "bin")], weights_only=True)
    state["ip_adapter"]["5.to_k_ip.weight"][3, 1] = float("nan")
    path = tmp_path / "nan-adapter.bin"
    torch.save(state, path)
    with pytest.raises(ModelFileError) as info:
        read_checkpoint(path)
    assert str(info.value).startswith(
        "'nan-adapter.bin' is damaged: its tensor 'ip_adapter.5.to_k_ip.weight' holds 1 NaN"
    )
    state["image_proj"]["proj.weight"] = "not a tensor"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match="'image_proj.proj.weight' is not a tensor"):
        read_checkpoint(path)


def _drop_one_tensor(weights: Path) -> str:
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    dropped = sorted(state)[len(state) // 2]
    del state[dropped]
    save_file(state, str(weights))
    return dropped


def test_an_image_encoder_folder_missing_a_tensor_is_refused(
    tmp_path: Path, tiny_image_encoder: Path
) -> None:
    """transformers fills a missing tensor with random values and carries on; that is refused."""
    import shutil

    from ipa_studio.core.models.loader import load_image_encoder

    folder = Path(shutil.copytree(tiny_image_encoder, tmp_path / "image_encoder"))
    dropped = _drop_one_tensor(folder / "model.safetensors")
    with pytest.raises(ModelFileError, match="is incomplete") as info:
        load_image_encoder(folder, torch.device("cpu"), torch.float32)
    assert dropped in str(info.value) and "random values" in str(info.value)


def test_a_diffusers_folder_missing_a_tensor_is_refused_before_generation(
    tmp_path: Path, tiny_sd15: Path
) -> None:
    """diffusers leaves a missing tensor on the meta device; generation then failed with
    "Tensor on device meta is not on the expected device"."""
    import shutil

    from ipa_studio.core.models.loader import load_base_model

    folder = Path(shutil.copytree(tiny_sd15, tmp_path / "sd15"))
    dropped = _drop_one_tensor(folder / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelFileError, match=r"The UNet in .* is incomplete") as info:
        load_base_model(folder, torch.device("cpu"), torch.float32)
    assert dropped in str(info.value)


@pytest.mark.parametrize("payload", ["code", "bomb"])
def test_a_hostile_pytorch_model_bin_in_an_image_encoder_folder_gets_our_refusal(
    tmp_path: Path, tiny_image_encoder: Path, payload: str
) -> None:
    import shutil

    from ipa_studio.core.models.loader import load_image_encoder
    from tests.fixtures.malicious import write_malicious_pickle

    folder = tmp_path / "image_encoder"
    folder.mkdir()
    shutil.copy(tiny_image_encoder / "config.json", folder)
    marker = tmp_path / "code-ran"
    if payload == "code":
        write_malicious_pickle(folder / "pytorch_model.bin", marker)
    else:
        hostile.write_torch_zip(folder / "pytorch_model.bin", hostile.billion_laughs())
    with pytest.raises(UnsafeFileError) as info:
        load_image_encoder(folder, torch.device("cpu"), torch.float32)
    message = str(info.value)
    # torch's own message tells the user to retry with weights_only=False, which would run the code.
    assert "weights_only" not in message and "pytorch_model.bin" in message
    assert not marker.exists()


# ------------------------------------------------------------------------ special files, huge strips


def test_fifos_and_devices_are_refused_before_they_are_opened(tmp_path: Path) -> None:
    """Opening a FIFO blocks until someone writes to it; before the check, `inspect`, `add` and a
    FIFO given as a reference image hung. A child process with a time limit turns a hang into a failure."""
    fifo_image, fifo_model = tmp_path / "ref.png", tmp_path / "model.safetensors"
    os.mkfifo(fifo_image)
    os.mkfifo(fifo_model)
    zero = tmp_path / "zero.ckpt"
    zero.symlink_to("/dev/zero")
    folder = tmp_path / "encoder"
    folder.mkdir()
    os.mkfifo(folder / "config.json")
    fifo_library = tmp_path / "fifo-library"
    fifo_library.mkdir()
    os.mkfifo(fifo_library / "library.json")
    child = _run_child(
        f"""
        import json
        from ipa_studio.cli import main
        from ipa_studio.core.errors import IPAStudioError
        from ipa_studio.core.images import load_image
        from ipa_studio.core.models.detect import detect
        from ipa_studio.core.models.library import ModelLibrary
        out = {{}}
        for label, call in [
            ("image", lambda: load_image({str(fifo_image)!r})),
            ("add", lambda: ModelLibrary({str(tmp_path / "models")!r}).add({str(fifo_model)!r})),
        ]:
            try:
                call()
                out[label] = "accepted"
            except IPAStudioError as exc:
                out[label] = str(exc)
        out["detect"] = detect({str(fifo_model)!r}).reason
        out["device"] = detect({str(zero)!r}).reason
        out["inspect"] = main(["models", "inspect", {str(fifo_model)!r}])
        out["folder"] = detect({str(folder)!r}).reason
        out["list"] = main(["models", "--library", {str(fifo_library)!r}, "list"])
        print(json.dumps(out))
        """,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    out = json.loads(child.stdout.splitlines()[-1])
    assert "is a named pipe (FIFO), not an image file" in out["image"]
    assert "is a named pipe (FIFO), not a model file or folder" in out["add"]
    assert "is a named pipe (FIFO), not a weight file" in out["detect"]
    assert "is a character device, not a weight file" in out["device"]
    assert out["inspect"] == 1
    assert out["folder"].startswith("not a model folder") and out["list"] == 2
    assert "library.json' is damaged (it is a named pipe (FIFO), not a file)" in child.stderr


def test_a_long_thin_strip_is_refused_before_any_resize(tmp_path: Path) -> None:
    from PIL import Image

    from ipa_studio.core.errors import ImageInputError
    from ipa_studio.core.images import encoder_crop, load_image

    strip = tmp_path / "strip.png"
    Image.new("L", (3_000_000, 1)).save(strip)  # 3 megapixels: under the pixel limit
    for call in (
        lambda: load_image(strip),
        lambda: encoder_crop(strip),
        lambda: load_image(Image.open(strip)),
    ):
        with pytest.raises(
            ImageInputError, match=r"3000000×1 pixels: one side is 3,000,000 times the other.*100:1"
        ):
            call()
    wide = Image.new("RGB", (2000, 25))  # 80:1, a wide panorama, still fine
    assert load_image(wide).size == (2000, 25)


def test_out_naming_an_existing_folder_is_refused_before_any_model_loads(tmp_path: Path, capsys) -> None:
    from ipa_studio.cli import main

    folder = tmp_path / "results"
    folder.mkdir()
    (tmp_path / "results.png").mkdir()  # the name --out results would have become
    args = ["generate", "--model", str(tmp_path / "no-such-model"), "--steps", "2", "--seed", "1"]
    for out in (folder, tmp_path / "results.png"):
        assert main([*args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "names a folder" in err and "picture.png" in err
    assert list(folder.iterdir()) == []


def test_sigterm_while_the_png_is_written_leaves_no_tmp(tmp_path: Path) -> None:
    from ipa_studio.core import files

    out = tmp_path / "out" / "picture.png"
    out.parent.mkdir()
    ready = tmp_path / "writing"
    script = f"""
        import time
        from pathlib import Path
        from PIL import Image
        from ipa_studio.core.files import remove_temps_on_termination
        from ipa_studio.core.images import save_png

        def slow_save(self, fp, *args, **kwargs):
            fp.write(b"\\x89PNG partial")
            fp.flush()
            Path({str(ready)!r}).touch()
            time.sleep(60)  # SIGTERM arrives here, halfway through the write

        remove_temps_on_termination()  # what `ipa-studio` does first (see the next test)
        Image.Image.save = slow_save
        save_png(Image.new("RGB", (64, 64)), {str(out)!r}, {{"parameters": "x"}})
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], env=env, stderr=subprocess.PIPE, text=True
    )
    import signal
    import time

    deadline = time.monotonic() + 120
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ready.exists(), child.stderr.read() if child.poll() is not None else "timed out"
    assert [p for p in out.parent.iterdir() if files.is_temp_name(p.name)]  # the partial file is there
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == -signal.SIGTERM
    assert list(out.parent.iterdir()) == []  # neither a partial PNG nor its temporary file


def test_the_cli_removes_its_partial_files_on_sigterm(tmp_path: Path, monkeypatch) -> None:
    import signal

    from ipa_studio.cli import main
    from ipa_studio.core import files

    monkeypatch.setattr(files, "_installed", False)
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        main(["models", "--library", str(tmp_path / "models"), "catalog"])
        assert signal.getsignal(signal.SIGTERM) is files._on_termination
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_stale_tmp_from_a_killed_save_is_removed_by_the_next_save(tmp_path: Path) -> None:
    from PIL import Image

    from ipa_studio.core import files
    from ipa_studio.core.images import save_png

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".old.png.ipa-{files._HOST}-{dead.pid}-0badc0de{files.TEMP_SUFFIX}"
    stale.write_bytes(b"half a picture")
    mine = files.temp_path(tmp_path / "busy.png")  # this live process's own: never touched
    mine.write_bytes(b"being written")
    save_png(Image.new("RGB", (8, 8)), tmp_path / "new.png", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["new.png", mine.name])
