"""Known downloads for structure control: the annotator weights and the SD1.5 ControlNets.

Plain data in the schema of ``ipa_studio/resources/catalog.json`` (``name``, ``kind``, ``repo_id``,
``files``, ``size_bytes`` …), kept here until the model library merges it into the main catalog.
Sizes are the rounded figures of the Hugging Face file pages (hence ``size_approximate``); no sha256
is listed because none is published by the repos themselves, so the downloader takes the hub's LFS
hash.

Layout once downloaded: every annotator entry is a single file, so they all land side by side in one
folder (``<models>/annotators/`` by default), which is exactly the layout of the
``lllyasviel/Annotators`` repo that controlnet_aux's ``from_pretrained(folder)`` reads. Each ControlNet
entry is a diffusers folder named after its repo (``<models>/controlnet/control_v11p_sd15_openpose/``),
and ``detect_controlnet`` reads the kind from that name.
"""

from __future__ import annotations

from typing import Any

ANNOTATOR_REPO = "lllyasviel/Annotators"
ANNOTATORS_SUBFOLDER = "annotators"
CONTROLNETS_SUBFOLDER = "controlnet"

# File names inside the annotator folder (and inside the lllyasviel/Annotators repo).
OPENPOSE_BODY_FILE = "body_pose_model.pth"
OPENPOSE_HAND_FILE = "hand_pose_model.pth"
OPENPOSE_FACE_FILE = "facenet.pth"
MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"
ZOE_FILE = "ZoeD_M12_N.pt"


def _annotator(name: str, filename: str, size: int, description: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "annotator",
        "repo_id": ANNOTATOR_REPO,
        "files": [filename],
        "size_bytes": size,
        "size_approximate": True,
        "description": description,
        "sha256": None,
        **extra,
    }


ANNOTATOR_ENTRIES: tuple[dict[str, Any], ...] = (
    _annotator(
        "annotator-openpose-body",
        OPENPOSE_BODY_FILE,
        209_000_000,
        "OpenPose body keypoints (CMU): turns a photo of people into the skeleton map the openpose "
        "ControlNet reads.",
    ),
    _annotator(
        "annotator-openpose-hand",
        OPENPOSE_HAND_FILE,
        147_000_000,
        "OpenPose hand keypoints: adds fingers to the pose map. Needs the body model.",
        requires=["annotator-openpose-body"],
    ),
    _annotator(
        "annotator-openpose-face",
        OPENPOSE_FACE_FILE,
        154_000_000,
        "OpenPose face landmarks: adds the face outline and features to the pose map. Needs the body model.",
        requires=["annotator-openpose-body"],
    ),
    _annotator(
        "annotator-midas-dpt-hybrid",
        MIDAS_FILE,
        493_000_000,
        "MiDaS DPT-Hybrid depth estimation, the depth map the SD1.5 depth ControlNet was trained with.",
    ),
    _annotator(
        "annotator-zoedepth",
        ZOE_FILE,
        1_440_000_000,
        "ZoeDepth (2023, BEiT-L backbone): sharper, more consistent depth than MiDaS; slower and larger.",
    ),
)

CONTROLNET_ENTRIES: tuple[dict[str, Any], ...] = (
    {
        "name": "control_v11p_sd15_openpose",
        "kind": "controlnet",
        "repo_id": "lllyasviel/control_v11p_sd15_openpose",
        "files": ["config.json", "diffusion_pytorch_model.safetensors"],
        "size_bytes": 1_450_000_000,
        "size_approximate": True,
        "description": "ControlNet 1.1 OpenPose for SD1.5: follows a body (and hand / face) skeleton map.",
        "sha256": None,
        "requires": ["annotator-openpose-body"],
    },
    {
        "name": "control_v11f1p_sd15_depth",
        "kind": "controlnet",
        "repo_id": "lllyasviel/control_v11f1p_sd15_depth",
        "files": ["config.json", "diffusion_pytorch_model.safetensors"],
        "size_bytes": 1_450_000_000,
        "size_approximate": True,
        "description": "ControlNet 1.1 depth for SD1.5: follows a depth map (MiDaS, ZoeDepth or your own).",
        "sha256": None,
        "requires": ["annotator-midas-dpt-hybrid"],
    },
)

ENTRIES: tuple[dict[str, Any], ...] = ANNOTATOR_ENTRIES + CONTROLNET_ENTRIES
"""Everything above, ready to append to the ``entries`` list of the main catalog."""


def annotator_entry_for(filename: str) -> dict[str, Any]:
    """The catalog entry that downloads annotator file ``filename``."""
    for entry in ANNOTATOR_ENTRIES:
        if entry["files"] == [filename]:
            return entry
    raise KeyError(filename)
