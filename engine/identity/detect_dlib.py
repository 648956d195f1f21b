"""Offline face detection with dlib: HOG detector + 68-point landmarks -> the 5 ArcFace points.

The model files come from the ``face-recognition-models`` package, found with
``importlib.util.find_spec`` (importing that package runs ``pkg_resources``, which recent
setuptools no longer ships). The ``face_recognition`` wrapper is never used: it exits the process
when its own imports fail.

Detection policy (HOG is fast but sees only faces larger than ~80 px, and upsampling invents
faces in busy textures: on scikit-image's astronaut photo upsample=1 finds a second, false face):
detect on a copy at most ``DETECT_MAX_SIDE`` wide with no upsampling; only when that finds nothing,
try again upsampled once (finds faces down to ~40 px). Landmarks are then fitted on the full
loaded image for precision.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from ..errors import EngineError
from .align import Face, five_points_from_68

# HOG scores near 0 are marginal: on the astronaut photo a patch of the suit scores 0.12, while
# real faces score 0.2-3 (the faintest real one in insightface's group photo: 0.21).
MIN_SCORE = 0.18
DETECT_MAX_SIDE = 1280
# Upsampling a larger image costs seconds on CPU, for faces that large photos rarely have.
UPSAMPLE_MAX_SIDE = 1280

# dlib's nose tip (point 30) and outer mouth corners sit a little differently from SCRFD's points,
# which the ArcFace template was made from; its eye centres (means of 6 points) are the steadiest.
# Weighting the eyes 8:1 in the fit puts them within ~1 px of the template on frontal portraits
# (equal weights: up to 3.1 px, measured by re-fitting landmarks on the crop) while nose and mouth
# still take part in scale and rotation.
FIT_WEIGHTS = (8.0, 8.0, 1.0, 1.0, 1.0)

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"


class DlibUnavailable(EngineError):
    code = "dlib_unavailable"


def dlib_models_folder() -> Path:
    """The folder of dlib's model files inside the installed ``face-recognition-models``."""
    found = importlib.util.find_spec("face_recognition_models")
    if found is None or not found.origin:
        raise DlibUnavailable("dlib's face models are not installed (package face-recognition-models)",
                              hint="pip install face-recognition-models dlib-bin")
    folder = Path(found.origin).parent / "models"
    for name in (LANDMARKS_68, RECOGNITION):
        if not (folder / name).is_file():
            raise DlibUnavailable(f"dlib model file {folder / name} is missing",
                                  hint="reinstall face-recognition-models")
    return folder


def import_dlib():
    try:
        import dlib
    except ImportError as exc:
        raise DlibUnavailable(f"dlib does not import ({exc})", hint="pip install dlib-bin") from None
    return dlib


def _downscaled(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    long_side = max(rgb.shape[:2])
    if long_side <= max_side:
        return rgb, 1.0
    factor = max_side / long_side
    size = (max(1, round(rgb.shape[1] * factor)), max(1, round(rgb.shape[0] * factor)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)), factor


@functools.lru_cache(maxsize=1)
def _load_models():
    """dlib's detector and 68-point predictor, loaded once per process (the .dat takes ~1 s)."""
    dlib = import_dlib()
    folder = dlib_models_folder()
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(folder / LANDMARKS_68))


class DlibFaceDetector:
    """HOG face detector and 68-point shape predictor; also hands shapes to the judge."""

    name = "dlib"

    def __init__(self):
        self._dlib, self._detector, self._predictor = _load_models()

    def _boxes(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        small, factor = _downscaled(rgb, DETECT_MAX_SIDE)
        small = np.ascontiguousarray(small)
        rects, scores, _ = self._detector.run(small, 0, MIN_SCORE)
        if not rects and max(small.shape[:2]) <= UPSAMPLE_MAX_SIDE:
            rects, scores, _ = self._detector.run(small, 1, MIN_SCORE)
        found = []
        for rect, score in zip(rects, scores):
            box = (rect.left() / factor, rect.top() / factor,
                   (rect.right() + 1) / factor, (rect.bottom() + 1) / factor)
            found.append((box, float(score)))
        return found

    def landmarks68(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """dlib's 68 points of the face in ``box`` (any detector's box) in ``rgb``."""
        rect = self._dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1,
                                    int(round(box[3])) - 1)
        shape = self._predictor(np.ascontiguousarray(rgb), rect)
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in ``rgb`` (uint8 RGB), largest first."""
        faces = []
        for box, score in self._boxes(rgb):
            points68 = self.landmarks68(rgb, box)
            faces.append(Face(box=box, score=score, points5=five_points_from_68(points68), points68=points68,
                              fit_weights=FIT_WEIGHTS))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
