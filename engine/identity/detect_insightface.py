"""Production face detection: insightface's SCRFD (antelopev2's ``scrfd_10g_bnkps.onnx``).

The detector is built through ``insightface.model_zoo.get_model`` on the resolved file, never
through ``FaceAnalysis`` (which downloads packs at first use and fails with a bare AssertionError
when a pack lacks a detector). SCRFD gives boxes and the 5 ArcFace points directly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EngineError
from .align import Face

DETECT_SIZE = (640, 640)
DETECT_THRESHOLD = 0.5


class InsightfaceDetector:
    name = "insightface"

    def __init__(self, model_file: Path, providers: list[str]):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.scrfd import SCRFD

        try:
            model = get_model(str(model_file), providers=providers)
        except Exception as exc:  # onnxruntime raises its own classes for truncated/corrupt files
            raise EngineError(f"{model_file} could not be loaded as an ONNX model ({type(exc).__name__}: {exc})",
                              code="bad_model",
                              hint="delete it and run `python -m engine fetch-models` (or copy antelopev2's "
                                   "scrfd_10g_bnkps.onnx there again)") from exc
        if not isinstance(model, SCRFD):
            raise EngineError(f"{model_file} is not an SCRFD face detector (insightface routed it to "
                              f"{type(model).__name__})", code="bad_model",
                              hint="use antelopev2's scrfd_10g_bnkps.onnx")
        model.prepare(ctx_id=0 if providers[0].startswith("CUDA") else -1, input_size=DETECT_SIZE,
                      det_thresh=DETECT_THRESHOLD)
        self._model = model

    def detect(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # insightface works in OpenCV's BGR order
        boxes, points = self._model.detect(bgr, input_size=DETECT_SIZE)
        faces = []
        for i, row in enumerate(boxes):
            faces.append(Face(box=tuple(float(v) for v in row[:4]), score=float(row[4]),
                              points5=np.asarray(points[i], dtype=np.float64)))
        faces.sort(key=lambda f: f.area, reverse=True)
        return faces
