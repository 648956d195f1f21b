"""The independent identity judge: dlib's 128-d face recogniser.

Later stages score renders of the generated head against the photos with this network, which
played no part in guiding the optimisation (that is ArcFace, through Arc2Face), so a good score
is not the optimiser grading its own homework. dlib's metric is Euclidean distance between
descriptors; below 0.6 means "same person" (its published operating point; 99.38 % on LFW).
Cosine similarity is not discriminative for these descriptors, so distances are what is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .align import Face
from .detect_dlib import RECOGNITION, DlibFaceDetector, dlib_models_folder, import_dlib

SAME_PERSON_DISTANCE = 0.6


class DlibJudge:
    def __init__(self, detector: DlibFaceDetector | None = None):
        dlib = import_dlib()
        self._dlib = dlib
        self._detector = detector or DlibFaceDetector()
        self._net = dlib.face_recognition_model_v1(str(dlib_models_folder() / RECOGNITION))

    @property
    def detector(self) -> DlibFaceDetector:
        return self._detector

    def describe(self, rgb: np.ndarray, face: Face) -> np.ndarray:
        """128-d descriptor of ``face`` (a box from either backend) in uint8 RGB ``rgb``."""
        rgb = np.ascontiguousarray(rgb)
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        shape = self._detector._predictor(rgb, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.asarray(self._net.compute_face_descriptor(rgb, shape, 0), dtype=np.float64)

    def describe_image(self, rgb: np.ndarray) -> np.ndarray | None:
        """Descriptor of the largest face in the image, or None when no face is found."""
        faces = self._detector.detect(rgb)
        return self.describe(rgb, faces[0]) if faces else None


def distance_matrix(a: Sequence[np.ndarray | None], b: Sequence[np.ndarray | None]) -> np.ndarray:
    """Euclidean distances between descriptor lists; NaN where either side has none."""
    out = np.full((len(a), len(b)), np.nan)
    for i, da in enumerate(a):
        for j, db in enumerate(b):
            if da is not None and db is not None:
                out[i, j] = float(np.linalg.norm(da - db))
    return out


@dataclass
class JudgeResult:
    distances: np.ndarray  # [len(a), len(b)], NaN where a face was not found
    found_a: list[bool]
    found_b: list[bool]
    threshold: float = SAME_PERSON_DISTANCE
    messages: list[str] = field(default_factory=list)

    @property
    def same_person(self) -> np.ndarray:
        """Boolean [len(a), len(b)]: distance below the threshold (False where not measurable)."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.distances, nan=np.inf) < self.threshold

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "distances": [[None if np.isnan(v) else round(float(v), 4) for v in row]
                          for row in self.distances],
            "found_a": self.found_a, "found_b": self.found_b, "messages": self.messages,
        }


def _as_rgb_uint8(item) -> np.ndarray:
    """A path, a uint8 image or a float [0, 1] image ([H, W, C] or [1, H, W, C]) -> uint8 RGB."""
    if isinstance(item, (str, Path)):
        from .images import load_photo

        return load_photo(item).rgb
    array = np.asarray(item)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected an image [H, W, C], got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(np.rint(np.asarray(array, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def judge_similarity(images_a: Sequence, images_b: Sequence, judge: DlibJudge | None = None) -> JudgeResult:
    """Score every image in ``images_a`` (e.g. renders) against every one in ``images_b`` (photos).

    Images are paths, uint8 arrays or float [0, 1] arrays (the engine's convention), RGB, row 0 on top.
    """
    judge = judge or DlibJudge()
    messages = []

    def describe_all(images, label):
        out = []
        for index, item in enumerate(images):
            descriptor = judge.describe_image(_as_rgb_uint8(item))
            if descriptor is None:
                messages.append(f"{label}[{index}]: no face found by the judge")
            out.append(descriptor)
        return out

    da, db = describe_all(images_a, "a"), describe_all(images_b, "b")
    return JudgeResult(distances=distance_matrix(da, db), found_a=[d is not None for d in da],
                       found_b=[d is not None for d in db], messages=messages)
