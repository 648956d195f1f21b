"""ArcFace embeddings (512-d, L2-normalised) through insightface's own ``ArcFaceONNX``.

The recognition ONNX (Arc2Face's ``arcface.onnx``) is loaded with
``insightface.model_zoo.get_model`` on its path, so insightface's preprocessing (mean/std, BGR
to RGB, NCHW) is exactly what Arc2Face was trained with, and nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EngineError
from .align import CROP_SIZE

EMBEDDING_SIZE = 512


class ArcFaceEmbedder:
    def __init__(self, model_file: Path, providers: list[str]):
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX

        try:
            model = get_model(str(model_file), providers=providers)
        except Exception as exc:
            raise EngineError(f"{model_file} cannot be loaded as an ONNX model ({exc})", code="bad_model",
                              hint="delete it and run `python -m engine fetch-models`") from None
        if not isinstance(model, ArcFaceONNX):
            raise EngineError(f"{model_file} is not an ArcFace recognition model (insightface routed it to "
                              f"{type(model).__name__})", code="bad_model",
                              hint="use Arc2Face's arcface.onnx (input 1×3×112×112, output 512)")
        if tuple(model.input_size) != (CROP_SIZE, CROP_SIZE):
            raise EngineError(f"{model_file} takes {model.input_size} crops, not {CROP_SIZE}×{CROP_SIZE}",
                              code="bad_model")
        self._model = model
        self.model_file = Path(model_file)

    def embed(self, crop_rgb: np.ndarray) -> np.ndarray:
        """Unit-length float32 [512] embedding of one aligned 112×112 RGB crop."""
        bgr = np.ascontiguousarray(crop_rgb[..., ::-1])  # insightface expects OpenCV's BGR order
        feature = self._model.get_feat(bgr).reshape(-1).astype(np.float32)
        if feature.shape[0] != EMBEDDING_SIZE:
            raise EngineError(f"{self.model_file} gives {feature.shape[0]}-d embeddings, "
                              f"expected {EMBEDDING_SIZE}",
                              code="bad_model")
        norm = float(np.linalg.norm(feature))
        if not np.isfinite(norm) or norm == 0:
            raise EngineError(f"{self.model_file} returned a zero or non-finite embedding", code="bad_model")
        return feature / norm
