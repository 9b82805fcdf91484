"""The preprocessors as a service: which exist, what they need, and one cached runner for the app.

``Preprocessors`` is what the GUI's control panel (from its worker thread) and the CLI call: it loads
each annotator network once, on first use, and keeps every result in an LRU cache keyed by
(image content hash, preprocessor, settings), so re-opening a photo, toggling a ControlNet off and on
or re-running a generation never runs a detector twice. Qt-free; one lock makes it safe to share
between threads, although jobs are expected to run on one worker.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from ipa_studio.core.devices import pick_device
from ipa_studio.core.errors import RequestError
from ipa_studio.core.images import content_hash, load_image
from ipa_studio.core.preprocess.catalog import (
    MIDAS_FILE,
    OPENPOSE_BODY_FILE,
    OPENPOSE_FACE_FILE,
    OPENPOSE_HAND_FILE,
    ZOE_FILE,
)
from ipa_studio.core.preprocess.maps import Pose, depth_map, openpose_map
from ipa_studio.core.preprocess.weights import load_annotator, missing_files, require_files
from ipa_studio.core.request import ImageSource

ControlKind = Literal["openpose", "depth"]

MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048


@dataclass(frozen=True)
class PreprocessorInfo:
    """One entry of the preprocessor menu."""

    name: str
    label: str
    kind: ControlKind | None
    """The ControlNet kind its maps are made for; ``None`` for the pass-through."""
    files: tuple[str, ...]
    """Annotator files it always needs (hands and face add theirs, see ``required_files``)."""
    description: str


PREPROCESSORS: dict[str, PreprocessorInfo] = {
    info.name: info
    for info in (
        PreprocessorInfo(
            "none",
            "None: the image is a control map",
            None,
            (),
            "Use the image as it is, for a pose or depth map you already have.",
        ),
        PreprocessorInfo(
            "openpose",
            "OpenPose",
            "openpose",
            (OPENPOSE_BODY_FILE,),
            "Body skeleton of every person (optionally hands and face), for the openpose ControlNet.",
        ),
        PreprocessorInfo(
            "depth_midas",
            "Depth (MiDaS)",
            "depth",
            (MIDAS_FILE,),
            "MiDaS DPT-Hybrid relative depth: what the SD1.5 depth ControlNet was trained with. Fast.",
        ),
        PreprocessorInfo(
            "depth_zoe",
            "Depth (ZoeDepth)",
            "depth",
            (ZOE_FILE,),
            "ZoeDepth: newer, finer and more consistent depth than MiDaS; several times slower.",
        ),
    )
}


def preprocessors_for(kind: str | None) -> list[PreprocessorInfo]:
    """The preprocessors that make maps for a ControlNet of ``kind`` (all, for an unknown kind), the
    pass-through always last."""
    any_kind = kind in (None, "unknown")
    makers = [p for p in PREPROCESSORS.values() if p.kind is not None and (any_kind or p.kind == kind)]
    return makers + [PREPROCESSORS["none"]]


@dataclass(frozen=True)
class PreprocessSpec:
    """Which preprocessor and its settings; hashable, so it is part of the cache key."""

    preprocessor: str = "none"
    resolution: int = 512
    """Short side of the map in pixels (the detectors' ``detect_resolution``)."""
    hands: bool = False
    """OpenPose only: add hand keypoints (needs ``hand_pose_model.pth``)."""
    face: bool = False
    """OpenPose only: add face landmarks (needs ``facenet.pth``)."""

    def validate(self) -> None:
        if self.preprocessor not in PREPROCESSORS:
            known = ", ".join(PREPROCESSORS)
            raise RequestError(f"Unknown preprocessor '{self.preprocessor}'. Choose one of: {known}.")
        if not MIN_RESOLUTION <= self.resolution <= MAX_RESOLUTION:
            raise RequestError(
                f"The preprocessor resolution must be between {MIN_RESOLUTION} and {MAX_RESOLUTION} px "
                f"(got {self.resolution})."
            )
        if (self.hands or self.face) and self.preprocessor != "openpose":
            raise RequestError("Hands and face apply to the OpenPose preprocessor only.")


def required_files(spec: PreprocessSpec) -> tuple[str, ...]:
    """Annotator files ``spec`` needs, in the order people should fetch them."""
    files = list(PREPROCESSORS[spec.preprocessor].files)
    if spec.hands:
        files.append(OPENPOSE_HAND_FILE)
    if spec.face:
        files.append(OPENPOSE_FACE_FILE)
    return tuple(files)


@dataclass(frozen=True)
class ControlMap:
    """A control map and where it came from. ``poses`` holds the keypoints for OpenPose maps."""

    image: Image.Image
    spec: PreprocessSpec
    source_hash: str
    poses: tuple[Pose, ...] | None = None


@dataclass
class PreprocessStats:
    """What really ran: lets tests and the GUI's status line tell a cache hit from a detector run."""

    runs: int = 0
    cache_hits: int = 0
    loaded: list[str] = field(default_factory=list)


class Preprocessors:
    """Runs preprocessors with weights from ``weights_dir`` (a folder laid out like
    ``lllyasviel/Annotators``), loading each network on first use and caching results.

    Never touches the network: missing files raise ``PreprocessorWeightsMissing`` naming the files
    and the folder.
    """

    def __init__(
        self, weights_dir: str | Path, device: str | torch.device | None = None, *, cache_size: int = 32
    ) -> None:
        self._weights_dir = Path(weights_dir)
        self.device = pick_device(device)
        self.cache_size = cache_size
        self.stats = PreprocessStats()
        self._networks: dict[str, Any] = {}
        self._cache: OrderedDict[tuple[str, PreprocessSpec], ControlMap] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def weights_dir(self) -> Path:
        return self._weights_dir

    def set_weights_dir(self, weights_dir: str | Path) -> None:
        """Point at another annotator folder: drops loaded networks and cached maps made with them."""
        with self._lock:
            if Path(weights_dir) != self._weights_dir:
                self._weights_dir = Path(weights_dir)
                self.unload()
                self._cache.clear()

    def missing(self, spec: PreprocessSpec) -> list[str]:
        """Annotator files ``spec`` needs that are not in the folder (empty: ready to run)."""
        spec.validate()
        return missing_files(self._weights_dir, required_files(spec))

    def run(self, image: ImageSource, spec: PreprocessSpec) -> ControlMap:
        """Make the control map of ``image`` (a path or an image in memory).

        With the ``"none"`` preprocessor the image is used as-is (upright, 8-bit RGB). The returned
        image is the caller's own copy; the cached one cannot be changed through it.
        """
        spec.validate()
        picture = load_image(image, what="control image")
        key_hash = content_hash(picture)
        if spec.preprocessor == "none":
            return ControlMap(picture, spec, key_hash)
        key = (key_hash, spec)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                return _copy(cached)
            require_files(self._weights_dir, required_files(spec))
            result = self._compute(picture, spec, key_hash)
            self.stats.runs += 1
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return _copy(result)

    def _network(self, filename: str) -> Any:
        if filename not in self._networks:
            self._networks[filename] = load_annotator(self._weights_dir, filename, self.device)
            self.stats.loaded.append(filename)
        return self._networks[filename]

    def _compute(self, picture: Image.Image, spec: PreprocessSpec, key_hash: str) -> ControlMap:
        with torch.inference_mode():
            if spec.preprocessor == "openpose":
                from controlnet_aux.open_pose import OpenposeDetector

                detector = OpenposeDetector(
                    self._network(OPENPOSE_BODY_FILE),
                    self._network(OPENPOSE_HAND_FILE) if spec.hands else None,
                    self._network(OPENPOSE_FACE_FILE) if spec.face else None,
                )
                image, poses = openpose_map(
                    picture, detector, resolution=spec.resolution, hands=spec.hands, face=spec.face
                )
                return ControlMap(image, spec, key_hash, poses)
            filename = PREPROCESSORS[spec.preprocessor].files[0]
            image = depth_map(picture, self._network(filename), resolution=spec.resolution)
            return ControlMap(image, spec, key_hash)

    def unload(self) -> None:
        """Free the loaded networks (ZoeDepth alone holds 1.4 GB); cached maps stay."""
        with self._lock:
            self._networks.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _copy(result: ControlMap) -> ControlMap:
    return ControlMap(result.image.copy(), result.spec, result.source_hash, result.poses)
