"""Structure control (paper §4.3.2): photo → pose / depth map, and what a ControlNet file is.

* ``maps``: pure image → control-map functions over controlnet-aux detectors, pose drawing.
* ``weights``: loading the annotator networks from a local ``lllyasviel/Annotators``-style folder,
  with a specific message for every missing or wrong file.
* ``service``: the preprocessor menu and ``Preprocessors``, the cached runner the app calls.
* ``controlnets``: ``detect_controlnet``, reading only configs and weight headers.
* ``catalog``: the annotator and ControlNet downloads, as plain catalog data.

Importing this package does not import controlnet-aux; that happens when a preprocessor first runs.
"""

from ipa_studio.core.preprocess.controlnets import ControlNetInfo, detect_controlnet, kind_from_name
from ipa_studio.core.preprocess.maps import (
    BODY_KEYPOINTS,
    Pose,
    depth_map,
    draw_pose_map,
    map_size,
    openpose_map,
)
from ipa_studio.core.preprocess.service import (
    PREPROCESSORS,
    ControlMap,
    PreprocessorInfo,
    Preprocessors,
    PreprocessSpec,
    PreprocessStats,
    preprocessors_for,
    required_files,
)
from ipa_studio.core.preprocess.weights import PreprocessorWeightsMissing

__all__ = [
    "BODY_KEYPOINTS",
    "PREPROCESSORS",
    "ControlMap",
    "ControlNetInfo",
    "Pose",
    "PreprocessSpec",
    "PreprocessStats",
    "PreprocessorInfo",
    "PreprocessorWeightsMissing",
    "Preprocessors",
    "depth_map",
    "detect_controlnet",
    "draw_pose_map",
    "kind_from_name",
    "map_size",
    "openpose_map",
    "preprocessors_for",
    "required_files",
]
