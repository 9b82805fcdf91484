"""Preprocessors: photo → pose / depth map through controlnet-aux, offline, with cached results.

The annotator files are random-weight networks of controlnet-aux's own classes saved under the real
file names in an ``lllyasviel/Annotators``-style folder (tests/fixtures/annotators.py), so loading
goes through controlnet-aux's real code. Random OpenPose weights find nobody, so pose maps from photos
are black; the skeleton drawing itself is checked pixel by pixel from hand-made keypoints.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipa_studio.core.engine import Engine
from ipa_studio.core.errors import ModelFileError, RequestError, UnsafeFileError
from ipa_studio.core.models.tiny import make_reference_image
from ipa_studio.core.preprocess import (
    BODY_KEYPOINTS,
    PREPROCESSORS,
    Pose,
    Preprocessors,
    PreprocessorWeightsMissing,
    PreprocessSpec,
    draw_pose_map,
    kind_from_name,
    map_size,
    preprocessors_for,
    required_files,
)
from ipa_studio.core.preprocess import catalog as pcatalog
from ipa_studio.core.request import ControlSpec, GenerationRequest, ModelSpec
from tests.fixtures import annotators
from tests.fixtures.malicious import write_malicious_pickle
from tests.fixtures.network import loopback_only

RES = 64  # the smallest resolution the preprocessors accept: keeps every detector run well under 1 s


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """OpenPose body / hand / face and MiDaS (no ZoeDepth: its absence is tested too)."""
    folder = annotators.build_annotator_folder(tmp_path_factory.mktemp("annotators"))
    yield folder
    shutil.rmtree(folder)  # 1 GB: pytest keeps the last three temp roots, these files need not stay


@pytest.fixture(scope="module")
def pre(weights: Path) -> Preprocessors:
    return Preprocessors(weights, "cpu")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return make_reference_image(21, (96, 128))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# --------------------------------------------------------------------------------------------------
# Pose drawing from known keypoints
# --------------------------------------------------------------------------------------------------

W, H = 160, 200


def _body(**points: tuple[float, float]) -> tuple[tuple[float, float] | None, ...]:
    return tuple(points.get(name) for name in BODY_KEYPOINTS)


BODY = _body(nose=(0.5, 0.1), neck=(0.5, 0.25), right_shoulder=(0.3, 0.25), left_shoulder=(0.7, 0.25))


def _at(image: Image.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(c) for c in image.getpixel((x, y)))


def test_pose_map_from_known_keypoints_has_the_openpose_skeleton() -> None:
    image = draw_pose_map([Pose(BODY)], (W, H))
    assert image.size == (W, H) and image.mode == "RGB"
    # Limbs are filled at 60 % of their colour, in OpenPose's order: neck→right shoulder red,
    # neck→left shoulder orange, neck→nose blue.
    assert _at(image, 64, 50) == (153, 0, 0)
    assert _at(image, 96, 50) == (153, 51, 0)
    assert _at(image, 80, 35) == (0, 0, 153)
    # Keypoints are full-colour discs drawn over the limbs: nose, neck, right / left shoulder.
    assert _at(image, 80, 20) == (255, 0, 0)
    assert _at(image, 80, 50) == (255, 85, 0)
    assert _at(image, 48, 50) == (255, 170, 0)
    assert _at(image, 112, 50) == (85, 255, 0)
    # A limb is 2×4 px wide: 6 px off its axis is background again; so is everything far away.
    assert _at(image, 64, 56) == (0, 0, 0)
    assert _at(image, 5, H - 5) == (0, 0, 0)
    # Missing keypoints (elbows …) draw nothing: only the 3 limb and 4 point colours appear.
    colours = {tuple(c) for c in _pixels(image).reshape(-1, 3)} - {(0, 0, 0)}
    limb_and_point_colours = {
        (153, 0, 0), (153, 51, 0), (0, 0, 153), (255, 0, 0), (255, 85, 0), (255, 170, 0), (85, 255, 0)
    }  # fmt: skip
    assert colours == limb_and_point_colours


def _hand() -> tuple[tuple[float, float] | None, ...]:
    # Wrist and the first thumb joint only: one bone, drawn in the first hue (red), points blue.
    return ((0.2, 0.8), (0.4, 0.8)) + (None,) * 19


def test_pose_map_hands_and_face_are_drawn_only_when_asked() -> None:
    pose = Pose(BODY, right_hand=_hand(), face=((0.9, 0.9), (0.85, 0.9)))
    full = draw_pose_map([pose], (W, H))
    assert _at(full, 48, 160) == (255, 0, 0)  # bone wrist→thumb
    assert _at(full, 32, 160) == (0, 0, 255)  # hand keypoint
    assert _at(full, 144, 180) == (255, 255, 255)  # face landmark
    bare = draw_pose_map([pose], (W, H), hands=False, face=False)
    assert _at(bare, 48, 160) == _at(bare, 32, 160) == _at(bare, 144, 180) == (0, 0, 0)
    assert np.array_equal(_pixels(bare), _pixels(draw_pose_map([Pose(BODY)], (W, H))))


def test_hand_drawing_is_controlnet_aux_line_for_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our hand renderer only swaps matplotlib's hsv_to_rgb for colorsys; prove the pixels are the same
    by running controlnet-aux's own draw_handpose against a stand-in matplotlib."""
    import colorsys
    import types

    from controlnet_aux.open_pose import util
    from controlnet_aux.open_pose.body import Keypoint

    fake = types.ModuleType("matplotlib")
    fake.colors = types.SimpleNamespace(  # type: ignore[attr-defined]
        hsv_to_rgb=lambda hsv: np.array(colorsys.hsv_to_rgb(*hsv))
    )
    monkeypatch.setitem(sys.modules, "matplotlib", fake)
    rng = np.random.default_rng(0)
    hand = [(float(x), float(y)) for x, y in rng.uniform(0.05, 0.95, size=(21, 2))]
    hand[7] = None  # type: ignore[call-overload]
    theirs = util.draw_handpose(
        np.zeros((H, W, 3), np.uint8), [Keypoint(-1, -1) if p is None else Keypoint(*p) for p in hand]
    )
    ours = draw_pose_map([Pose((None,) * 18, left_hand=tuple(hand))], (W, H))
    assert np.array_equal(_pixels(ours), theirs)
    assert theirs.any()


def test_pose_needs_18_body_points() -> None:
    with pytest.raises(ValueError, match="18 keypoints"):
        Pose(((0.5, 0.5),) * 17)


# --------------------------------------------------------------------------------------------------
# Detectors on photos
# --------------------------------------------------------------------------------------------------


def test_fixture_folder_is_what_controlnet_aux_from_pretrained_reads(weights: Path) -> None:
    from controlnet_aux import MidasDetector, OpenposeDetector

    with loopback_only() as refused:
        pose = OpenposeDetector.from_pretrained(str(weights))
        midas = MidasDetector.from_pretrained(str(weights))
    assert refused == []
    assert pose.hand_estimation is not None and pose.face_estimation is not None
    assert midas.model is not None


def test_openpose_map_from_photo(pre: Preprocessors, photo: Image.Image) -> None:
    with loopback_only() as refused:
        result = pre.run(photo, PreprocessSpec("openpose", resolution=RES, hands=True, face=True))
    assert refused == []
    assert result.image.size == map_size(photo.size, RES) == (64, 88)
    assert result.image.mode == "RGB"
    assert isinstance(result.poses, tuple)
    # The map is exactly the drawing of the returned keypoints (none, with random weights).
    expected = draw_pose_map(result.poses, result.image.size)
    assert np.array_equal(_pixels(result.image), _pixels(expected))


def test_midas_depth_map_size_and_range(pre: Preprocessors, photo: Image.Image) -> None:
    with loopback_only() as refused:
        result = pre.run(photo, PreprocessSpec("depth_midas", resolution=RES))
    assert refused == []
    pixels = _pixels(result.image)
    assert result.image.size == map_size(photo.size, RES) and result.image.mode == "RGB"
    assert pixels.dtype == np.uint8
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])
    # MiDaS normalises its relative depth to the full 0…255 range (the resize to the exact map size
    # may soften the extreme pixels by a step or two).
    assert pixels.min() <= 2 and pixels.max() >= 253


def test_zoe_depth_map_size_and_range(tmp_path_factory: pytest.TempPathFactory, photo: Image.Image) -> None:
    """The newer estimator. Its only fixture file is 1.4 GB and its network runs at 384×512 with a
    flipped second pass whatever the map size, so this one test takes ~30 s; it covers loading, the
    key-coverage check passing on a complete file, the map and a cache hit."""
    folder = annotators.build_annotator_folder(tmp_path_factory.mktemp("zoe"), (annotators.ZOE,))
    zoe = Preprocessors(folder, "cpu")
    spec = PreprocessSpec("depth_zoe", resolution=RES)
    try:
        with loopback_only() as refused:
            result = zoe.run(photo, spec)
    finally:
        shutil.rmtree(folder)  # 1.4 GB; the network is in memory by now
    assert refused == []
    pixels = _pixels(result.image)
    assert result.image.size == map_size(photo.size, RES) and pixels.dtype == np.uint8
    assert np.array_equal(pixels[..., 0], pixels[..., 2])
    # ZoeDepth stretches the 2nd…85th depth percentiles over the range and clips: both ends occur.
    assert pixels.min() <= 2 and pixels.max() >= 253
    again = zoe.run(photo.copy(), spec)
    assert zoe.stats.runs == 1 and zoe.stats.cache_hits == 1
    assert np.array_equal(_pixels(again.image), pixels)
    zoe.unload()


def test_results_are_cached_per_content_and_settings(
    weights: Path, photo: Image.Image, tmp_path: Path
) -> None:
    pre = Preprocessors(weights, "cpu")
    spec = PreprocessSpec("depth_midas", resolution=RES)
    first = pre.run(photo, spec)
    # Same pixels from a file: same content hash, no second run.
    photo.save(tmp_path / "photo.png")
    second = pre.run(tmp_path / "photo.png", spec)
    assert (pre.stats.runs, pre.stats.cache_hits) == (1, 1)
    assert np.array_equal(_pixels(first.image), _pixels(second.image))
    assert first.source_hash == second.source_hash
    # Other settings or other pixels run again; each network was loaded once.
    pre.run(photo, PreprocessSpec("depth_midas", resolution=RES + 8))
    pre.run(make_reference_image(22, (96, 128)), spec)
    assert (pre.stats.runs, pre.stats.cache_hits) == (3, 1)
    assert pre.stats.loaded == [annotators.MIDAS]
    # Callers get copies: scribbling on one does not change what the cache returns.
    second.image.paste((255, 0, 0), (0, 0, 8, 8))
    assert np.array_equal(_pixels(pre.run(photo, spec).image), _pixels(first.image))


def test_switching_the_weights_folder_drops_networks_and_results(
    weights: Path, photo: Image.Image, tmp_path: Path
) -> None:
    pre = Preprocessors(weights, "cpu")
    spec = PreprocessSpec("openpose", resolution=RES)
    pre.run(photo, spec)
    other = tmp_path / "other-annotators"
    other.mkdir()
    shutil.copyfile(weights / annotators.BODY, other / annotators.BODY)
    pre.set_weights_dir(other)
    pre.run(photo, spec)
    assert pre.weights_dir == other
    assert (pre.stats.runs, pre.stats.cache_hits) == (2, 0)
    assert pre.stats.loaded == [annotators.BODY, annotators.BODY]


def test_unload_frees_networks_and_keeps_results(weights: Path, photo: Image.Image) -> None:
    pre = Preprocessors(weights, "cpu")
    spec = PreprocessSpec("openpose", resolution=RES)
    pre.run(photo, spec)
    pre.unload()
    pre.run(photo, spec)  # cached: nothing to load
    assert pre.stats.loaded == [annotators.BODY]
    pre.run(photo, PreprocessSpec("openpose", resolution=RES, hands=True))
    assert pre.stats.loaded == [annotators.BODY, annotators.BODY, annotators.HAND]


def test_an_existing_control_map_is_used_as_is(pre: Preprocessors, tmp_path: Path) -> None:
    user_map = draw_pose_map([Pose(BODY)], (W, H))
    loaded_before = list(pre.stats.loaded)
    result = pre.run(user_map, PreprocessSpec())
    assert np.array_equal(_pixels(result.image), _pixels(user_map))
    user_map.save(tmp_path / "map.png")
    from_file = pre.run(tmp_path / "map.png", PreprocessSpec("none"))
    assert np.array_equal(_pixels(from_file.image), _pixels(user_map))
    assert pre.stats.loaded == loaded_before  # no network was needed


def test_photo_to_map_to_generation(
    pre: Preprocessors, photo: Image.Image, tiny_sd15: Path, tiny_controlnet: Path
) -> None:
    depth = pre.run(photo, PreprocessSpec("depth_midas", resolution=RES)).image
    engine = Engine(device="cpu", dtype=torch.float32)
    request = GenerationRequest(
        models=ModelSpec(tiny_sd15),
        prompt="a room",
        steps=2,
        width=64,
        height=64,
        controls=(ControlSpec(depth, tiny_controlnet, scale=1.0),),
    )
    guided = engine.generate(request)
    assert guided.images[0].size == (64, 64)
    assert torch.isfinite(guided.latents).all()
    # The map really steers the result: a flat grey map gives another image.
    flat = Image.new("RGB", depth.size, (128, 128, 128))
    other = engine.generate(request.replace(controls=(ControlSpec(flat, tiny_controlnet, scale=1.0),)))
    assert (guided.latents - other.latents).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# Missing and wrong weight files
# --------------------------------------------------------------------------------------------------


def test_missing_weights_name_file_and_folder(tmp_path: Path, photo: Image.Image) -> None:
    empty = tmp_path / "annotators"
    empty.mkdir()
    pre = Preprocessors(empty, "cpu")
    with pytest.raises(PreprocessorWeightsMissing) as err:
        pre.run(photo, PreprocessSpec("openpose", resolution=RES))
    assert str(err.value).startswith(f"Preprocessor weights missing: put body_pose_model.pth in {empty} ")
    assert isinstance(err.value, ModelFileError)
    assert err.value.catalog_names == ("annotator-openpose-body",)

    spec = PreprocessSpec("openpose", resolution=RES, hands=True, face=True)
    assert pre.missing(spec) == ["body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"]
    with pytest.raises(PreprocessorWeightsMissing, match="put body_pose_model.pth, hand_pose_model.pth and "):
        pre.run(photo, spec)


def test_missing_folder_never_reaches_the_hub(tmp_path: Path, photo: Image.Image) -> None:
    # controlnet-aux would take a non-existent folder for a hub repo id and try to download.
    nowhere = tmp_path / "not-there"
    pre = Preprocessors(nowhere, "cpu")
    with loopback_only() as refused:
        for name in ("openpose", "depth_midas", "depth_zoe"):
            with pytest.raises(PreprocessorWeightsMissing, match=f"in {nowhere} "):
                pre.run(photo, PreprocessSpec(name, resolution=RES))
    assert refused == []


def test_one_missing_file_in_a_partial_folder(pre: Preprocessors, weights: Path, photo: Image.Image) -> None:
    with pytest.raises(PreprocessorWeightsMissing, match=f"put ZoeD_M12_N.pt in {weights} ") as err:
        pre.run(photo, PreprocessSpec("depth_zoe", resolution=RES))
    assert err.value.files == ("ZoeD_M12_N.pt",) and err.value.catalog_names == ("annotator-zoedepth",)


def _folder_with(tmp_path: Path, name: str, content: Path | bytes) -> Path:
    folder = tmp_path / "annotators"
    folder.mkdir(exist_ok=True)
    if isinstance(content, Path):
        shutil.copyfile(content, folder / name)
    else:
        (folder / name).write_bytes(content)
    return folder


def test_wrong_file_under_a_real_name(tmp_path: Path, weights: Path, photo: Image.Image) -> None:
    folder = _folder_with(tmp_path, annotators.BODY, weights / annotators.HAND)
    with pytest.raises(ModelFileError, match="'body_pose_model.pth' in .* is not the OpenPose body model"):
        Preprocessors(folder, "cpu").run(photo, PreprocessSpec("openpose", resolution=RES))


def test_truncated_and_impostor_files(tmp_path: Path, weights: Path, photo: Image.Image) -> None:
    data = (weights / annotators.MIDAS).read_bytes()
    spec = PreprocessSpec("depth_midas", resolution=RES)
    cases = {
        data[: len(data) // 2]: "truncated",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 492757791\n": "git-lfs pointer",
        b"": "empty",
    }
    for content, words in cases.items():
        folder = _folder_with(tmp_path, annotators.MIDAS, content)
        with pytest.raises(ModelFileError, match=words):
            Preprocessors(folder, "cpu").run(photo, spec)


def test_malicious_annotator_file_never_runs(tmp_path: Path, photo: Image.Image) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "annotators"
    write_malicious_pickle(folder / annotators.BODY, marker)
    with pytest.raises(UnsafeFileError, match="refused as unsafe"):
        Preprocessors(folder, "cpu").run(photo, PreprocessSpec("openpose", resolution=RES))
    assert not marker.exists()


def test_incomplete_zoe_file_is_caught_despite_non_strict_loading(tmp_path: Path, photo: Image.Image) -> None:
    # ZoeDepth loads with strict=False on timm >= 1.0: this file would leave the whole network random.
    folder = tmp_path / "annotators"
    folder.mkdir()
    one_layer = {"core.core.scratch.output_conv.0.weight": torch.zeros(128, 256, 3, 3)}
    torch.save({"model": one_layer}, folder / annotators.ZOE)
    with pytest.raises(ModelFileError, match="is not the ZoeDepth model: .* weights are missing"):
        Preprocessors(folder, "cpu").run(photo, PreprocessSpec("depth_zoe", resolution=RES))


# --------------------------------------------------------------------------------------------------
# Menu, settings and catalog data
# --------------------------------------------------------------------------------------------------


def test_bad_settings_are_refused(pre: Preprocessors, photo: Image.Image) -> None:
    with pytest.raises(RequestError, match="Unknown preprocessor 'canny'"):
        pre.run(photo, PreprocessSpec("canny"))
    with pytest.raises(RequestError, match="between 64 and 2048"):
        pre.run(photo, PreprocessSpec("depth_midas", resolution=32))
    with pytest.raises(RequestError, match="OpenPose preprocessor only"):
        pre.run(photo, PreprocessSpec("depth_midas", hands=True))


def test_menu_per_controlnet_kind() -> None:
    assert [p.name for p in preprocessors_for("openpose")] == ["openpose", "none"]
    assert [p.name for p in preprocessors_for("depth")] == ["depth_midas", "depth_zoe", "none"]
    assert [p.name for p in preprocessors_for("unknown")] == ["openpose", "depth_midas", "depth_zoe", "none"]


def test_catalog_data_covers_every_file_and_fits_the_main_catalog() -> None:
    import json

    from ipa_studio.core.models.catalog import CATALOG, load_catalog

    entries = load_catalog(json.dumps({"version": 1, "entries": list(pcatalog.ENTRIES)}))
    by_name = {e.name: e for e in entries}
    assert not set(by_name) & {e.name for e in CATALOG}
    needed = {f for p in PREPROCESSORS for f in required_files(PreprocessSpec(p))}
    needed |= set(required_files(PreprocessSpec("openpose", hands=True, face=True)))
    annotator_files = {e.files[0] for e in entries if e.kind == "annotator"}
    assert needed == annotator_files
    assert all(e.repo_id == "lllyasviel/Annotators" for e in entries if e.kind == "annotator")
    # ControlNet entries download into folders named after the repo, which tells their kind.
    controlnets = {e.repo_id: kind_from_name(e.name) for e in entries if e.kind == "controlnet"}
    assert controlnets == {
        "lllyasviel/control_v11p_sd15_openpose": "openpose",
        "lllyasviel/control_v11f1p_sd15_depth": "depth",
    }
    for entry in entries:
        assert set(entry.requires) <= set(by_name)


def test_importing_the_package_does_not_import_controlnet_aux() -> None:
    # controlnet-aux registers every detector and its timm models on import: seconds at app start-up.
    code = "import sys, ipa_studio.core.preprocess; print('controlnet_aux' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
