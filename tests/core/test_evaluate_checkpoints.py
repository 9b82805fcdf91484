"""Evaluating every saved checkpoint of a run: which files are found with which step, one summary
row per checkpoint that equals a single-adapter evaluation of that file, the best named, cancel."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ipa_studio.cli import main
from ipa_studio.core.errors import Cancelled, IPAStudioError
from ipa_studio.core.evaluate import (
    Checkpoint,
    CheckpointScore,
    EvalConfig,
    evaluate_checkpoints,
    find_checkpoints,
    pick_best,
)
from ipa_studio.core.evaluate import checkpoints as module


def _cli(pairs, tiny_clip, tiny_sd15, tiny_image_encoder, out, *which: str) -> list[str]:
    return [
        "evaluate",
        "--pairs", str(pairs),
        "--model", str(tiny_sd15),
        *which,
        "--image-encoder", str(tiny_image_encoder),
        "--clip-model", str(tiny_clip),
        "--num-images", "2",
        "--steps", "2",
        "--size", "64",
        "--seed", "7",
        "--device", "cpu",
        "--quiet",
        "--out", str(out),
    ]  # fmt: skip


def test_layout_constants_are_the_trainers():
    from ipa_studio.core.train import trainer

    assert (module.STATE_FILE, module.CHECKPOINT_PREFIX) == (trainer.STATE_FILE, trainer.CHECKPOINT_PREFIX)


def test_a_run_folder_gives_each_saved_checkpoint_with_its_step(tiny_run):
    found = find_checkpoints([tiny_run])
    assert [c.step for c in found] == [1, 2, 3]
    assert [c.adapter for c in found] == [
        tiny_run / "checkpoints" / f"step-{s:07d}" / "ip-adapter.safetensors" for s in (1, 2, 3)
    ]
    # The same from checkpoint folders or adapter files given in any order, without duplicates.
    files = [c.adapter for c in reversed(found)]
    assert find_checkpoints([*files, found[0].adapter.parent]) == found
    assert [c.label for c in found] == ["step 1", "step 2", "step 3"]


def test_loose_adapter_files_take_the_step_from_their_name(tmp_path, tiny_adapters):
    a = tmp_path / "my-adapter-step2000.safetensors"
    a.write_bytes(tiny_adapters[("global", "safetensors")].read_bytes())
    b = tmp_path / "other.safetensors"
    b.write_bytes(a.read_bytes())
    found = find_checkpoints([b, a])
    assert [(c.adapter.name, c.step) for c in found] == [(a.name, 2000), (b.name, None)]
    assert found[1].label == "other.safetensors"


def test_unusable_paths_are_refused_in_words(tmp_path):
    with pytest.raises(IPAStudioError, match="does not exist"):
        find_checkpoints([tmp_path / "missing"])
    with pytest.raises(IPAStudioError, match="neither a training run folder"):
        find_checkpoints([tmp_path])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step-0000005").mkdir()  # no state file: half-written, ignored
    with pytest.raises(IPAStudioError, match="has no complete checkpoint yet"):
        find_checkpoints([tmp_path])
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(IPAStudioError, match="not an adapter file"):
        find_checkpoints([notes])
    with pytest.raises(IPAStudioError, match="Choose a training run folder"):
        find_checkpoints([])


def _score(step: int | None, clip_i: float, clip_t: float) -> CheckpointScore:
    return CheckpointScore(Checkpoint(Path(f"{step}.safetensors"), step), clip_i, clip_t, 0.0, 1, 1, Path())


def test_best_is_the_highest_clip_i_then_clip_t_then_the_earlier_step():
    scores = [
        _score(100, 0.70, 0.20),
        _score(200, 0.72, 0.10),
        _score(300, 0.72, 0.30),
        _score(400, 0.72, 0.30),
    ]
    assert pick_best(scores).checkpoint.step == 300
    assert pick_best(scores, "clip_t").checkpoint.step == 300
    assert pick_best(scores[:2], "clip_t").checkpoint.step == 100
    with pytest.raises(IPAStudioError, match="judged by clip_i or clip_t"):
        pick_best(scores, "loss")


def test_cli_evaluates_each_checkpoint_of_a_run(
    tiny_run, eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, tmp_path, capsys
):
    out = tmp_path / "run-eval.csv"
    assert (
        main(_cli(eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, out, "--checkpoints", str(tiny_run)))
        == 0
    )
    printed = capsys.readouterr().out.splitlines()
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert all(int(r["images"]) == 4 and int(r["pairs"]) == 2 for r in rows)
    clip_i = [float(r["clip_i"]) for r in rows]
    assert len(set(clip_i)) == 3, "the three checkpoints should score differently"
    best = max(range(3), key=lambda i: clip_i[i])
    assert [r["best"] for r in rows] == ["1" if i == best else "0" for i in range(3)]
    assert printed[best].rstrip().endswith("<- best")
    assert printed[3].startswith(f"best: step {best + 1} (highest mean CLIP-I")

    summary = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert summary["best"]["step"] == best + 1 and summary["best_by"] == "clip_i"
    assert [c["step"] for c in summary["checkpoints"]] == [1, 2, 3]
    assert summary["settings"]["seed"] == 7 and summary["settings"]["num_images"] == 2

    # Each row is what a plain single-adapter evaluation of that checkpoint's file gives.
    for row in rows:
        single = tmp_path / f"single-{row['step']}.csv"
        assert (
            main(
                _cli(
                    eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, single, "--adapter", row["adapter"]
                )
            )
            == 0
        )
        alone = json.loads(single.with_suffix(".json").read_text(encoding="utf-8"))
        assert float(row["clip_i"]) == pytest.approx(alone["clip_i"], abs=1e-6)
        assert float(row["clip_t"]) == pytest.approx(alone["clip_t"], abs=1e-6)
        per_image = Path(row["csv"])
        assert per_image.name == f"run-eval.step-{int(row['step']):07d}.csv"
        assert len(per_image.read_text(encoding="utf-8").splitlines()) == 1 + 4


def test_cli_best_by_clip_t(tiny_run, eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, tmp_path, capsys):
    out = tmp_path / "by-t.csv"
    args = _cli(eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, out, "--checkpoints", str(tiny_run))
    assert main([*args, "--best-by", "clip-t", "--limit", "1"]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    best = max(rows, key=lambda r: (float(r["clip_t"]), float(r["clip_i"])))
    assert [r["best"] for r in rows] == [str(int(r is best)) for r in rows]
    assert "highest mean CLIP-T" in capsys.readouterr().out


def test_cli_needs_an_adapter_or_checkpoints(
    eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, tmp_path, capsys
):
    with pytest.raises(SystemExit):
        main(_cli(eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, tmp_path / "x.csv"))
    assert "one of the arguments --adapter --checkpoints is required" in capsys.readouterr().err


def test_cancel_stops_between_steps_and_keeps_finished_checkpoints(
    tiny_run, eval_pairs, tiny_clip, tiny_sd15, tiny_image_encoder, tmp_path
):
    config = EvalConfig(
        pairs=eval_pairs,
        base_model=tiny_sd15,
        adapter=Path(),
        image_encoder=tiny_image_encoder,
        clip_model=tiny_clip,
        out=tmp_path / "c.csv",
        num_images=1,
        steps=3,
        size=64,
        device="cpu",
    )
    seen = []

    def on_progress(p):
        seen.append((p.checkpoint, p.pair, p.step))

    # Cancel once the second checkpoint's first denoising step has run.
    result = pytest.raises(
        Cancelled,
        evaluate_checkpoints,
        config,
        find_checkpoints([tiny_run]),
        on_progress=on_progress,
        should_cancel=lambda: (1, 0, 1) in seen,
    )
    assert "cancelled" in str(result.value)
    assert seen[-1] == (1, 0, 1)
    assert (tmp_path / "c.step-0000001.csv").is_file()
    assert not (tmp_path / "c.step-0000002.csv").exists() and not (tmp_path / "c.csv").exists()
    fractions = []
    evaluate_checkpoints(
        config, find_checkpoints([tiny_run])[:1], on_progress=lambda p: fractions.append(p.fraction)
    )
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1
