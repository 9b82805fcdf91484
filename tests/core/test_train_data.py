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
    scan_dataset,
    scan_json_list,
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


# --- the official IP-Adapter repository's JSON dataset (tutorial_train.py) --------------------------


def _official_reader(json_file: Path, root: Path) -> list[tuple[str, tuple[int, int]]]:
    """The reading lines of tutorial_train.py's ``MyDataset`` (tencent-ailab/IP-Adapter): the
    independent reader that must accept the fixture before ours is tested."""
    import os

    data = json.load(open(json_file))  # noqa: SIM115 - as the official script does
    out = []
    for item in data:
        text = item["text"]
        raw_image = Image.open(os.path.join(root, item["image_file"]))
        out.append((text, raw_image.convert("RGB").size))
    return out


def test_official_json_dataset_is_read_like_the_official_script(official_json_dataset):
    json_file, root = official_json_dataset
    official = _official_reader(json_file, root)
    assert [t for t, _ in official] == [
        "A dog",
        "a red boat at sea",
        "shapes on a grey ground",
        "a cat on a sofa",
    ]

    scan = scan_dataset(json_file, root)
    assert [(i.caption, Image.open(i.path).size) for i in scan.items] == official
    assert [i.path for i in scan.items] == [
        root / "1.png",
        root / "2.png",
        root / "more/3.jpg",
        root / "4.png",
    ]
    assert scan.unreadable == [] and scan.missing_captions == 0
    assert "4 images with captions from 'data.json'" in scan.describe()


def test_official_json_root_defaults_to_the_json_folder(tmp_path):
    from tests.conftest import write_official_json_dataset

    json_file, root = write_official_json_dataset(tmp_path, {"a.png": "x", "b.png": "y"}, root_name=".")
    assert root.resolve() == json_file.parent.resolve()
    assert [i.caption for i in scan_dataset(json_file).items] == ["x", "y"]


def test_official_json_missing_and_broken_images_are_counted_with_examples(official_json_dataset):
    json_file, root = official_json_dataset
    (root / "2.png").unlink()
    (root / "4.png").write_bytes(b"not a picture")
    scan = scan_json_list(json_file, root)
    assert [i.caption for i in scan.items] == ["A dog", "shapes on a grey ground"]
    assert [(p.name, reason) for p, reason in scan.unreadable][0] == ("2.png", "no such file")
    assert scan.unreadable[1][0].name == "4.png"
    text = scan.describe()
    assert "2 unreadable file(s) skipped" in text and "'2.png': no such file" in text and "'4.png'" in text


def test_official_json_with_the_wrong_root_says_so(official_json_dataset, tmp_path):
    json_file, _ = official_json_dataset
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(DatasetError) as err:
        scan_json_list(json_file, elsewhere)
    message = str(err.value)
    assert "4 of the 4 images it lists are not under the root folder" in message
    assert "'1.png': no such file" in message and "--data-root" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '[{"image_file": "1.png", "text": "A dog"},]',
            "not valid JSON: Expecting value at line 1, column 43",
        ),
        (
            '{"image_file": "1.png", "text": "A dog"}',
            "holds an object; the official IP-Adapter format is a list",
        ),
        ("[]", "is an empty list"),
        (
            '[{"file_name": "1.png", "text": "a"}, {"file_name": "2.png", "text": "b"}]',
            "2 of the 2 entries of",
        ),
        ('[{"image_file": "1.png"}, {"image_file": 3, "text": "b"}, "x"]', "3 of the 3 entries"),
    ],
)
def test_malformed_official_json_is_refused_with_counts_and_examples(tmp_path, content, expected):
    (tmp_path / "1.png").write_bytes(b"")
    json_file = tmp_path / "data.json"
    json_file.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        scan_dataset(json_file)
    assert expected in str(err.value)


def test_wrong_official_json_fields_are_named(tmp_path):
    json_file = tmp_path / "data.json"
    entries = [{"file_name": f"{i}.png", "text": "a"} for i in range(5)]
    json_file.write_text(json.dumps(entries), encoding="utf-8")
    with pytest.raises(DatasetError) as err:
        scan_dataset(json_file)
    message = str(err.value)
    assert 'entry 1 has no "image_file" (it has "file_name", "text")' in message
    assert "and 2 more" in message and "metadata.jsonl" in message

    json_file.write_text('[{"image_file": "1.png"}, {"image_file": 3, "text": "b"}, "x"]', encoding="utf-8")
    message = str(pytest.raises(DatasetError, scan_dataset, json_file).value)
    assert 'entry 1 "1.png" has no "text"' in message
    assert 'entry 2 "image_file" is not a file name' in message and "entry 3 is str, not an object" in message


def test_a_root_folder_needs_a_json_dataset(tmp_path):
    with pytest.raises(DatasetError, match="goes with a .json dataset list"):
        scan_dataset(tmp_path, tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nothing.json")
