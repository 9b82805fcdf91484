"""Training in a separate process on the tiny models: the event stream, the run folder, pause /
resume and stop / resume giving the very weights of an uninterrupted run, and plain words when the
process fails or is killed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ipa_studio.core.adapter import read_checkpoint
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.train.curves import nice_ticks, smoothed, write_curves
from ipa_studio.core.train.process import (
    TrainingProcess,
    describe_ending,
    last_words,
    parse_event,
)
from ipa_studio.core.train.trainer import TrainConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The child processes spin-wait with more threads on a busy machine (see tests/conftest.py), and
    # runs compared bit for bit must use the same thread count (it changes the order of sums).
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train-data")
    for i in range(10):
        make_reference_image(200 + i, (72 + 4 * i, 64)).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"shapes number {i}", encoding="utf-8")
    return folder


def _settings(path: Path, dataset: Path, sd15: Path, encoder: Path, output: Path, **kw: object) -> Path:
    values: dict = dict(resolution=64, batch_size=2, device="cpu", max_steps=6, checkpoint_every=1000, seed=5)
    config = TrainConfig(
        data=dataset, base_model=sd15, image_encoder=encoder, output=output, **{**values, **kw}
    )
    path.write_text(json.dumps(config.to_json()), encoding="utf-8")
    return path


def _run(settings: Path, on_event=None) -> tuple[list[dict], TrainingProcess]:
    proc = TrainingProcess(settings)
    seen = []
    for event in proc.events(timeout=240):
        seen.append(event)
        if on_event is not None:
            on_event(proc, event)
    proc.wait()
    return seen, proc


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs"


@pytest.fixture(scope="module")
def uninterrupted(dataset, tiny_sd15, tiny_image_encoder, tmp_path_factory) -> Path:
    """The reference: six steps with no pause, no stop."""
    root = tmp_path_factory.mktemp("plain")
    settings = _settings(root / "s.json", dataset, tiny_sd15, tiny_image_encoder, root / "run")
    events, proc = _run(settings)
    assert proc.proc.returncode == 0, proc.stderr
    assert events[-1]["event"] == "finished" and events[-1]["step"] == 6
    return root / "run" / "ip-adapter.safetensors"


def test_a_run_streams_its_events_and_fills_its_folder(dataset, tiny_sd15, tiny_image_encoder, tmp_path):
    settings = _settings(
        tmp_path / "s.json",
        dataset,
        tiny_sd15,
        tiny_image_encoder,
        tmp_path / "run",
        max_steps=4,
        checkpoint_every=2,
        sample_every=2,
        sample_count=2,
        sample_steps=2,
    )
    events, proc = _run(settings)
    assert proc.proc.returncode == 0, proc.stderr
    kinds = [e["event"] for e in events]
    assert kinds[0] != "error", events
    started = next(e for e in events if e["event"] == "started")
    assert started["start_step"] == 0 and started["total_steps"] == 4
    assert started["settings"]["sample_every"] == 2
    assert set(started["environment"]) >= {"python", "torch", "diffusers", "transformers", "ipa-studio"}
    assert "8 images with captions" in started["dataset"]  # 10 minus the 2 held out
    assert len(started["references"]) == 2

    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    for e in steps:
        assert math.isfinite(e["loss"]) and math.isfinite(e["smoothed"])
        assert e["lr"] == pytest.approx(1e-4) and e["total_steps"] == 4
    assert steps[0]["smoothed"] == pytest.approx(steps[0]["loss"])  # no pull towards zero at the start
    assert steps[-1]["steps_per_s"] > 0 and steps[-1]["eta_s"] == pytest.approx(0.0)

    samples = [e for e in events if e["event"] == "sample"]
    assert [e["step"] for e in samples] == [0, 2, 4]
    for e in samples:
        assert len(e["paths"]) == 2
        for path in e["paths"]:
            with Image.open(path) as image:
                assert image.size == (64, 64)
    # Fixed seeds and references: step 0 and step 4 differ only by what the adapter learnt.
    first, last = (np.asarray(Image.open(samples[i]["paths"][0]), dtype=np.float32) for i in (0, -1))
    assert first.shape == last.shape and np.abs(first - last).max() > 0

    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [e["step"] for e in checkpoints] == [2, 4]
    for e in checkpoints:
        assert read_checkpoint(Path(e["path"]) / "ip-adapter.safetensors").variant == "global"
    assert kinds[-1] == "finished" and events[-1]["stopped"] is False
    assert kinds.index("started") < kinds.index("step")

    run = tmp_path / "run"
    for name in ("train_config.json", "environment.json", "train_log.jsonl", "train.log", "events.jsonl"):
        assert (run / name).is_file(), name
    assert json.loads((run / "train_config.json").read_text())["max_steps"] == 4
    logged = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert logged == events
    with Image.open(events[-1]["curves"]) as curves:
        assert curves.size == (1000, 640)
    assert events[-1]["adapter"] == str(run / "ip-adapter.safetensors")


def test_pause_holds_the_run_and_resume_ends_with_identical_weights(
    dataset, tiny_sd15, tiny_image_encoder, tmp_path, uninterrupted
):
    import queue

    settings = _settings(tmp_path / "s.json", dataset, tiny_sd15, tiny_image_encoder, tmp_path / "run")
    proc = TrainingProcess(settings)
    events = []
    for event in proc.events(timeout=240):
        events.append(event)
        if event["event"] == "step" and event["step"] == 2:
            proc.send("pause")
        if event["event"] == "paused":
            # Held: no step comes while paused.
            with pytest.raises(queue.Empty):
                events.append(next(proc.events(timeout=1.5)))
            proc.send("resume")
    assert proc.wait() == 0, proc.stderr
    [paused] = [e for e in events if e["event"] == "paused"]
    assert 2 <= paused["step"] < 6
    assert (Path(paused["checkpoint"]) / "training_state.json").is_file()
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the same step after the pause, none repeated or skipped
    assert [e["event"] for e in events].index("resumed") == [e["event"] for e in events].index("paused") + 1
    _assert_identical(tmp_path / "run" / "ip-adapter.safetensors", uninterrupted)


def test_stop_then_resume_from_its_checkpoint_ends_with_identical_weights(
    dataset, tiny_sd15, tiny_image_encoder, tmp_path, uninterrupted
):
    settings = _settings(tmp_path / "s.json", dataset, tiny_sd15, tiny_image_encoder, tmp_path / "run")

    def stop_at_three(proc: TrainingProcess, event: dict) -> None:
        if event["event"] == "step" and event["step"] == 3:
            proc.send("stop")

    events, proc = _run(settings, stop_at_three)
    assert proc.proc.returncode == 0, proc.stderr
    finished = events[-1]
    assert finished["event"] == "finished" and finished["stopped"] is True
    stopped_at = finished["step"]
    assert 3 <= stopped_at < 6

    again = _settings(
        tmp_path / "again.json", dataset, tiny_sd15, tiny_image_encoder, tmp_path / "run", resume="latest"
    )
    events, proc = _run(again)
    assert proc.proc.returncode == 0, proc.stderr
    started = next(e for e in events if e["event"] == "started")
    assert started["start_step"] == stopped_at
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(stopped_at + 1, 7))
    _assert_identical(tmp_path / "run" / "ip-adapter.safetensors", uninterrupted)


def test_a_killed_process_is_explained_in_plain_words(dataset, tiny_sd15, tiny_image_encoder, tmp_path):
    settings = _settings(
        tmp_path / "s.json", dataset, tiny_sd15, tiny_image_encoder, tmp_path / "run", max_steps=500
    )
    proc = TrainingProcess(settings)
    last_step = None
    for event in proc.events(timeout=240):
        if event["event"] == "step":
            last_step = event["step"]
            proc.proc.kill()
            break
    code = proc.wait()
    assert code == -9
    text = describe_ending(code, stderr=proc.stderr, step=last_step, run_folder=tmp_path / "run")
    assert text.startswith(f"The training process was ended from outside (SIGKILL) at step {last_step}.")
    assert "ran out of memory" in text and str(tmp_path / "run") in text


def test_a_bad_dataset_is_an_error_event_in_the_persons_words(tiny_sd15, tiny_image_encoder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    settings = _settings(tmp_path / "s.json", empty, tiny_sd15, tiny_image_encoder, tmp_path / "run")
    events, proc = _run(settings)
    assert proc.proc.returncode == 1
    assert events[-1]["event"] == "error"
    assert "holds no readable images with captions" in events[-1]["message"]
    assert "Traceback" in (tmp_path / "run" / "train.log").read_text()  # the details stay in the log


def test_settings_that_cannot_be_read_are_an_error_event(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text(json.dumps({"data": "x", "unknown_knob": 1}), encoding="utf-8")
    events, proc = _run(bad)
    assert proc.proc.returncode == 1
    assert [e["event"] for e in events] == ["error"]
    assert events[0]["message"] == "Unknown training setting(s): unknown_knob."


# ------------------------------------------------------------------------------- pure helpers


def test_parse_event_takes_only_events():
    assert parse_event('{"event": "step", "step": 3}') == {"event": "step", "step": 3}
    assert parse_event(b'{"event": "paused", "step": 1}\n')["step"] == 1
    for line in ("", "loading…", "{not json", '{"event": "launch"}', "[1, 2]", '{"step": 1}'):
        assert parse_event(line) is None


def test_last_words_pick_the_exception_line():
    stderr = (
        'Traceback (most recent call last):\n  File "x.py", line 3, in <module>\n'
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    assert last_words(stderr) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert last_words("one\ntwo\n\nthree\nfour\n") == "two / three / four"
    assert last_words("") == ""
    text = describe_ending(3, stderr="Segmentation fault", step=12)
    assert text == (
        "The training process ended unexpectedly at step 12 (exit code 3). Its last words: Segmentation fault"
    )


def test_smoothing_and_ticks():
    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    values = smoothed([1.0, 0.0] * 50)
    assert 0.4 < values[-1] < 0.6 and max(values[10:]) - min(values[10:]) < 0.2
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(1, 1000)[-1] == 1000
    from ipa_studio.core.train.curves import tick_text

    labels = [tick_text(v) for v in nice_ticks(0.95e-4, 1.05e-4)]
    assert len(set(labels)) == len(labels) > 2, labels  # a near-constant rate still reads apart


def test_curves_png_shows_both_loss_lines_and_the_rate(tmp_path):
    steps = list(range(1, 51))
    losses = [0.5 + 0.3 * math.sin(s) for s in steps]
    path = write_curves(tmp_path / "curves.png", steps, losses, [1e-4] * 50)
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = {tuple(p) for p in pixels}
    from ipa_studio.core.train import curves

    assert curves.RAW in colours and curves.SMOOTH in colours and curves.LR in colours
