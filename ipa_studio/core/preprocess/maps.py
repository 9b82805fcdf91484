"""Pure image → control-map functions over controlnet-aux's detectors, and pose drawing.

Each function takes an RGB image and an already loaded detector and returns a new RGB map; nothing here
loads weights, caches or touches global state (``service.Preprocessors`` does that). Maps come out at
``map_size(image.size, resolution)``: the photo's aspect ratio with the short side at ``resolution``,
both sides multiples of 8, so a map can be used directly as the generation size and overlays the photo
in a preview.

controlnet-aux is imported inside the functions: importing it registers dozens of detectors (and
their timm models), which costs seconds and is only worth paying when a preprocessor actually runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

Point = tuple[float, float]
"""A keypoint as (x, y), normalised to 0…1 over the map's width and height."""

BODY_KEYPOINTS: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)
"""The 18 OpenPose (COCO-18) body keypoints, in the order the openpose ControlNet was trained on."""

HAND_KEYPOINTS = 21


@dataclass(frozen=True)
class Pose:
    """One person: body keypoints in ``BODY_KEYPOINTS`` order, ``None`` where a point was not found.

    Hands (21 points each) and face landmarks are ``None`` when not detected or not asked for.
    """

    body: tuple[Point | None, ...]
    left_hand: tuple[Point | None, ...] | None = None
    right_hand: tuple[Point | None, ...] | None = None
    face: tuple[Point | None, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.body) != len(BODY_KEYPOINTS):
            raise ValueError(f"A body pose has {len(BODY_KEYPOINTS)} keypoints, not {len(self.body)}.")
        for hand in (self.left_hand, self.right_hand):
            if hand is not None and len(hand) != HAND_KEYPOINTS:
                raise ValueError(f"A hand has {HAND_KEYPOINTS} keypoints, not {len(hand)}.")


def map_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """(width, height) of the map made from an image of ``size``: short side ``resolution``, ×8."""
    width, height = size
    k = resolution / min(width, height)
    return max(8, round(width * k / 8) * 8), max(8, round(height * k / 8) * 8)


def _resized_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    import cv2

    pixels = np.asarray(image.convert("RGB"))
    if (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    # Same filters as controlnet-aux's own resize_image, so the detectors see what they are used to.
    upscale = size[0] > pixels.shape[1]
    return cv2.resize(pixels, size, interpolation=cv2.INTER_LANCZOS4 if upscale else cv2.INTER_AREA)


# --------------------------------------------------------------------------------------------------
# Pose
# --------------------------------------------------------------------------------------------------


def _point(keypoint: Any) -> Point | None:
    # controlnet-aux marks a missing hand / face point with negative coordinates, a body point with None.
    if keypoint is None or keypoint.x < 0 or keypoint.y < 0:
        return None
    return (float(keypoint.x), float(keypoint.y))


def _points(keypoints: Sequence[Any] | None) -> tuple[Point | None, ...] | None:
    return None if keypoints is None else tuple(_point(k) for k in keypoints)


def _keypoints(points: Sequence[Point | None] | None, missing_as_none: bool) -> list[Any] | None:
    from controlnet_aux.open_pose.body import Keypoint

    if points is None:
        return None
    missing = None if missing_as_none else Keypoint(-1.0, -1.0)
    return [missing if p is None else Keypoint(float(p[0]), float(p[1])) for p in points]


def _from_aux(result: Any) -> Pose:
    return Pose(
        body=_points(result.body.keypoints),  # type: ignore[arg-type]
        left_hand=_points(result.left_hand),
        right_hand=_points(result.right_hand),
        face=_points(result.face),
    )


# The 20 hand bones in controlnet-aux's (and OpenPose's) order; each is drawn in its own hue.
_HAND_EDGES = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
_EPS = 0.01  # controlnet-aux skips points within this many pixels of the top / left edge


def _draw_hand(canvas: np.ndarray, hand: Sequence[Point | None]) -> None:
    """controlnet-aux's ``draw_handpose``, line for line, with the hue computed by ``colorsys``.

    The original imports matplotlib (for ``hsv_to_rgb`` alone) without declaring it as a dependency,
    and does so even when there is no hand to draw; ``colorsys`` gives the same floats for s = v = 1.
    """
    import colorsys

    import cv2

    height, width = canvas.shape[:2]

    def pixel(p: Point | None) -> tuple[int, int]:
        return (-1, -1) if p is None else (int(p[0] * width), int(p[1] * height))

    for i, (a, b) in enumerate(_HAND_EDGES):
        if hand[a] is None or hand[b] is None:
            continue
        (x1, y1), (x2, y2) = pixel(hand[a]), pixel(hand[b])
        if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
            color = tuple(c * 255 for c in colorsys.hsv_to_rgb(i / len(_HAND_EDGES), 1.0, 1.0))
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
    for p in hand:
        x, y = pixel(p)
        if x > _EPS and y > _EPS:
            cv2.circle(canvas, (x, y), 4, (0, 0, 255), thickness=-1)


def draw_pose_map(
    poses: Sequence[Pose], size: tuple[int, int], *, hands: bool = True, face: bool = True
) -> Image.Image:
    """Draw ``poses`` on black the way controlnet-aux does (its ``draw_poses``): the colours, limb
    widths and point sizes the openpose ControlNet was trained on. ``size`` is (width, height)."""
    from controlnet_aux.open_pose import util

    width, height = size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        canvas = util.draw_bodypose(canvas, _keypoints(pose.body, True))
        if hands:
            for hand in (pose.left_hand, pose.right_hand):
                if hand:
                    _draw_hand(canvas, hand)
        if face and pose.face:
            canvas = util.draw_facepose(canvas, _keypoints(pose.face, False))
    return Image.fromarray(canvas, "RGB")


def openpose_map(
    image: Image.Image, detector: Any, *, resolution: int = 512, hands: bool = False, face: bool = False
) -> tuple[Image.Image, tuple[Pose, ...]]:
    """Detect people with an ``OpenposeDetector`` and draw their skeletons: (map, poses).

    The detector needs its hand / face networks only when ``hands`` / ``face`` are asked for.
    """
    size = map_size(image.size, resolution)
    pixels = _resized_pixels(image, size)
    found = detector.detect_poses(pixels, include_hand=hands, include_face=face)
    poses = tuple(_from_aux(r) for r in found)
    # Drawn at the map size from normalised keypoints, never drawn small and scaled up: lines stay crisp.
    return draw_pose_map(poses, size, hands=hands, face=face), poses


# --------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------


def depth_map(image: Image.Image, detector: Any, *, resolution: int = 512) -> Image.Image:
    """Relative depth (near = bright) with a ``MidasDetector`` or ``ZoeDetector``, as grey RGB."""
    import cv2

    size = map_size(image.size, resolution)
    pixels = np.asarray(image.convert("RGB"))
    # The detectors resize to multiples of 64 themselves (their networks need it); the result is then
    # brought to the exact map size.
    out = detector(pixels, detect_resolution=resolution, image_resolution=resolution, output_type="np")
    if (out.shape[1], out.shape[0]) != size:
        out = cv2.resize(out, size, interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(np.ascontiguousarray(out), "RGB")
