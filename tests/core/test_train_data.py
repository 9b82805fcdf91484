"""Training data: caption sources, unreadable files skipped and counted, the paper's resize + crop,
and batch order that a resumed run can replay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.train.data import (
    CaptionedImageDataset,
    DatasetError,
    EpochBatchSampler,
    collate,
    resize_center_crop,
    scan_captioned_folder,
)


def _picture(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    make_reference_image(seed, size).save(path)
    return path


def _truncated_png(path: Path) -> Path:
    """A PNG whose header is fine but whose pixel data stops half-way: only a full decode fails."""
    full = path.with_name("full_" + path.name)
    _picture(full, 9, (64, 64))
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_sidecar_captions_and_unreadable_files_are_counted(tmp_path):
    _picture(tmp_path / "a.png", 1)
    (tmp_path / "a.txt").write_text("  a red square \n", encoding="utf-8")
    sub = tmp_path / "more"
    sub.mkdir()
    _picture(sub / "b.jpg", 2)
    (sub / "b.txt").write_text("a blue circle", encoding="utf-8")
    _picture(tmp_path / "no_caption.png", 3)
    (tmp_path / "garbage.png").write_bytes(b"this is not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.md").write_text("not an image and not looked at", encoding="utf-8")

    scan = scan_captioned_folder(tmp_path)
    captions = {p.path.name: p.caption for p in scan.items}
    assert captions == {"a.png": "a red square", "b.jpg": "a blue circle", "no_caption.png": ""}
    assert sorted(p.name for p, _ in scan.unreadable) == ["empty.jpg", "garbage.png"]
    assert scan.missing_captions == 1
    assert "2 unreadable file(s) skipped" in scan.describe()


def test_metadata_jsonl_wins_over_sidecars(tmp_path):
    _picture(tmp_path / "x.png", 1)
    _picture(tmp_path / "y.png", 2)
    (tmp_path / "x.txt").write_text("ignored sidecar", encoding="utf-8")
    lines = [
        {"file_name": "x.png", "text": "from metadata"},
        {"file_name": "y.png", "caption": "caption key"},
        {"file_name": "gone.png", "text": "file was deleted"},
    ]
    (tmp_path / "metadata.jsonl").write_text(
        "\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8"
    )
    scan = scan_captioned_folder(tmp_path)
    assert [(p.path.name, p.caption) for p in scan.items] == [
        ("x.png", "from metadata"),
        ("y.png", "caption key"),
    ]
    assert scan.unreadable == [(tmp_path / "gone.png", "no such file")]
    assert scan.source == "metadata.jsonl"


def test_malformed_metadata_names_the_line(tmp_path):
    _picture(tmp_path / "x.png", 1)
    (tmp_path / "metadata.jsonl").write_text(
        '{"file_name": "x.png", "text": "ok"}\n{oops\n', encoding="utf-8"
    )
    with pytest.raises(DatasetError, match="line 2"):
        scan_captioned_folder(tmp_path)


def test_a_folder_without_readable_images_is_refused(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="no readable images"):
        scan_captioned_folder(tmp_path)


def test_a_file_that_fails_only_when_decoded_is_replaced_and_reported(tmp_path):
    _picture(tmp_path / "0.png", 1)
    _truncated_png(tmp_path / "1.png")
    _picture(tmp_path / "2.png", 2)
    scan = scan_captioned_folder(tmp_path)
    assert len(scan.items) == 3  # the header is intact, so the scan cannot tell
    dataset = CaptionedImageDataset(scan.items, 32, CLIPImageProcessor(size=32, crop_size=32))
    sample = dataset[1]
    assert sample["skipped"] == [str(tmp_path / "1.png")]
    assert torch.equal(sample["pixels"], dataset[2]["pixels"])  # the next readable image stands in
    batch = collate([dataset[i] for i in range(3)])
    assert batch["pixels"].shape == (3, 3, 32, 32) and batch["clip_pixels"].shape == (3, 3, 32, 32)
    assert batch["skipped"] == [str(tmp_path / "1.png")]


def test_shortest_side_is_resized_then_centre_cropped():
    # A 200x100 picture: left quarter red, middle half green, right quarter blue.
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, :50, 0] = 255
    pixels[:, 50:150, 1] = 255
    pixels[:, 150:, 2] = 255
    out = resize_center_crop(Image.fromarray(pixels), 64)
    assert out.size == (64, 64)
    # Resized to 128x64, the crop keeps x 32..96: the green middle, with only the outermost columns
    # touched by the (antialiased) filter, the same amount on both sides.
    array = np.asarray(out).astype(int)
    inner = array[:, 1:-1]
    assert inner[:, :, 1].min() == 255 and inner[:, :, [0, 2]].max() == 0
    assert np.array_equal(array[:, 0, 0], array[:, -1, 2]) and array[:, 0, 0].max() < 64

    tall = resize_center_crop(Image.new("RGB", (30, 90)), 48)
    assert tall.size == (48, 48)


def test_samples_are_in_the_vae_range_and_the_clip_input_comes_from_the_whole_image(tmp_path):
    _picture(tmp_path / "wide.png", 4, (120, 40))
    scan = scan_captioned_folder(tmp_path)
    processor = CLIPImageProcessor(size=32, crop_size=32)
    sample = CaptionedImageDataset(scan.items, 64, processor)[0]
    assert sample["pixels"].shape == (3, 64, 64)
    assert -1.0 <= sample["pixels"].min() and sample["pixels"].max() <= 1.0
    expected = processor(images=Image.open(tmp_path / "wide.png").convert("RGB"), return_tensors="pt")
    assert torch.equal(sample["clip_pixels"], expected.pixel_values[0])


def test_epoch_batches_are_disjoint_across_processes_and_replayable():
    world, batch, size = 2, 3, 20
    samplers = [EpochBatchSampler(size, batch, seed=5, rank=r, world=world) for r in range(world)]
    assert samplers[0].batches_per_epoch == 3  # 20 // 6: the remainder is dropped for every process
    epoch0 = [b for s in samplers for b in s]
    flat = [i for b in epoch0 for i in b]
    assert len(flat) == len(set(flat)) == 18

    for s in samplers:
        s.set_position(1)
    epoch1 = [b for s in samplers for b in s]
    assert epoch1 != epoch0

    samplers[0].set_position(1, start=2)
    resumed = list(samplers[0])
    samplers[0].set_position(1)
    assert resumed == list(samplers[0])[2:]

    with pytest.raises(DatasetError, match="fewer than one batch"):
        EpochBatchSampler(5, 3, seed=0, rank=0, world=2)
