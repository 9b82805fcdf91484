"""Loading annotator networks from a local folder laid out like ``lllyasviel/Annotators``.

controlnet-aux reads a local folder without any network access, but only when everything is in place:
given a folder that does not exist it treats the path as a hub repo id and calls ``hf_hub_download``;
MiDaS with a missing file tries to download it with basicsr; ZoeDepth on timm ≥ 1.0 always loads with
``strict=False``, so a wrong file would quietly leave most of the network random. Every file is
therefore checked here first (present, not a web page or git-lfs pointer, not truncated, holding only
tensors) and ZoeDepth's key coverage is verified after loading, so people get a specific message
instead of a hub error, a download attempt or a meaningless map.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ipa_studio.core.errors import ModelFileError
from ipa_studio.core.models.safe_load import load_weights
from ipa_studio.core.preprocess.catalog import (
    ANNOTATOR_REPO,
    MIDAS_FILE,
    OPENPOSE_BODY_FILE,
    OPENPOSE_FACE_FILE,
    OPENPOSE_HAND_FILE,
    ZOE_FILE,
    annotator_entry_for,
)

WHAT = {
    OPENPOSE_BODY_FILE: "OpenPose body model",
    OPENPOSE_HAND_FILE: "OpenPose hand model",
    OPENPOSE_FACE_FILE: "OpenPose face model",
    MIDAS_FILE: "MiDaS DPT-Hybrid depth model",
    ZOE_FILE: "ZoeDepth model",
}


class PreprocessorWeightsMissing(ModelFileError):
    """Annotator files a preprocessor needs are not in the annotator folder.

    ``files`` and ``folder`` say what to put where; ``catalog_names`` are the catalog entries that
    download them, for a "Download" button.
    """

    def __init__(self, files: Sequence[str], folder: Path) -> None:
        self.files = tuple(files)
        self.folder = Path(folder)
        self.catalog_names = tuple(annotator_entry_for(f)["name"] for f in self.files)
        names = " and ".join(", ".join(self.files).rsplit(", ", 1))
        super().__init__(
            f"Preprocessor weights missing: put {names} in {self.folder} "
            f"(from the Hugging Face repo {ANNOTATOR_REPO}, or download them in the model library)."
        )


def missing_files(folder: Path, files: Sequence[str]) -> list[str]:
    folder = Path(folder)
    return [f for f in files if not (folder / f).is_file()]


def require_files(folder: Path, files: Sequence[str]) -> None:
    """Raise ``PreprocessorWeightsMissing`` naming every file of ``files`` absent from ``folder``."""
    missing = missing_files(folder, files)
    if missing:
        raise PreprocessorWeightsMissing(missing, folder)


def _state_keys(obj: Any, name: str) -> frozenset[str]:
    # ZoeDepth's training code saved {"model": state_dict}; Lightning-style files use "state_dict".
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                return frozenset(inner)
        return frozenset(k for k in obj if isinstance(k, str))
    raise ModelFileError(f"{name} does not hold a dictionary of weights.")


def check_weight_file(path: Path) -> frozenset[str]:
    """Check one annotator file without running code from it; returns its weight names.

    Zip-format pickles are memory-mapped, so only their structure is read here (controlnet-aux reads
    the data once, afterwards).
    """
    path = Path(path)
    try:
        state = load_weights(path, mmap=True)
    except ModelFileError as exc:
        # Annotator files live in a folder the user chose: name it, so the right file gets replaced.
        raise type(exc)(f"{exc} (in {path.parent})") from exc
    return _state_keys(state, f"'{path.name}' in {path.parent}")


def _wrong_file(folder: Path, filename: str, exc: BaseException) -> ModelFileError:
    if isinstance(exc, KeyError):  # OpenPose's transfer() looks each weight up by name
        detail = f"it has no weight named {exc.args[0]!r}" if exc.args else "weights are missing"
    else:
        # load_state_dict's message is a "…:" line followed by the details; keep the first detail.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[:2]) if lines else type(exc).__name__
        detail = detail if len(detail) <= 200 else detail[:200] + "…"
    return ModelFileError(
        f"'{filename}' in {folder} is not the {WHAT[filename]} (its weights do not fit the network: "
        f"{detail}). Download it again from {ANNOTATOR_REPO}."
    )


def _load_body(folder: Path) -> Any:
    from controlnet_aux.open_pose.body import Body

    return Body(str(folder / OPENPOSE_BODY_FILE))


def _load_hand(folder: Path) -> Any:
    from controlnet_aux.open_pose.hand import Hand

    return Hand(str(folder / OPENPOSE_HAND_FILE))


def _load_face(folder: Path) -> Any:
    from controlnet_aux.open_pose.face import Face

    return Face(str(folder / OPENPOSE_FACE_FILE))


def _load_midas(folder: Path) -> Any:
    from controlnet_aux.midas import MidasDetector

    return MidasDetector.from_pretrained(str(folder), model_type="dpt_hybrid", filename=MIDAS_FILE)


def _load_zoe(folder: Path) -> Any:
    from controlnet_aux.zoe import ZoeDetector

    return ZoeDetector.from_pretrained(str(folder), model_type="zoedepth", filename=ZOE_FILE)


_LOADERS = {
    OPENPOSE_BODY_FILE: _load_body,
    OPENPOSE_HAND_FILE: _load_hand,
    OPENPOSE_FACE_FILE: _load_face,
    MIDAS_FILE: _load_midas,
    ZOE_FILE: _load_zoe,
}


def _check_zoe_coverage(folder: Path, detector: Any, keys: frozenset[str]) -> None:
    # relative_position_index is a buffer timm ≥ 1.0 rebuilds itself, so ZoeDepth drops it on load.
    def relevant(names: Any) -> set[str]:
        return {k for k in names if "relative_position_index" not in k}

    missing = relevant(detector.model.state_dict()) - relevant(keys)
    if missing:
        example = sorted(missing)[0]
        raise ModelFileError(
            f"'{ZOE_FILE}' in {folder} is not the {WHAT[ZOE_FILE]}: {len(missing)} of its weights are "
            f"missing (for example '{example}'). Download it again from {ANNOTATOR_REPO}."
        )


def load_annotator(folder: Path, filename: str, device: torch.device) -> Any:
    """Load one annotator network from ``folder`` onto ``device``.

    Returns controlnet-aux's own object: ``Body`` / ``Hand`` / ``Face`` for the OpenPose files,
    ``MidasDetector`` / ``ZoeDetector`` for the depth files.
    """
    folder = Path(folder)
    require_files(folder, [filename])
    keys = check_weight_file(folder / filename)
    try:
        loaded = _LOADERS[filename](folder)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise _wrong_file(folder, filename, exc) from exc
    if filename == ZOE_FILE:
        _check_zoe_coverage(folder, loaded, keys)
    if device.type != "cpu":
        loaded.to(device)
    return loaded
