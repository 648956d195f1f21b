"""What the identity step returns and saves: per-photo results and the combined identity."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_file_atomic, write_text_atomic

# Status codes, also used by the Blender add-on (upper-cased there).
OK = "ok"
NO_FACE = "no_face"
SEVERAL_FACES = "several_faces"
OUTLIER = "outlier"
UNREADABLE = "unreadable"
TOO_SMALL = "too_small"
STATUSES = (OK, NO_FACE, SEVERAL_FACES, OUTLIER, UNREADABLE, TOO_SMALL)
USABLE = (OK, SEVERAL_FACES)  # statuses whose embedding goes into the identity

EMBEDDING_FILE = "embedding.npy"
SUMMARY_FILE = "identity.json"


def _round(value, digits=4):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, digits)


@dataclass
class PhotoResult:
    path: str
    status: str = OK
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    error_code: str | None = None  # for unreadable photos: missing, empty, not_image, truncated, corrupt...
    image_size: tuple[int, int] | None = None  # original (width, height), upright
    notes: list[str] = field(default_factory=list)  # conversions applied while loading
    faces_found: int = 0
    box: tuple[float, float, float, float] | None = None  # chosen face, original pixels (x0, y0, x1, y1)
    face_size: int | None = None  # shorter side of the box, in the pixels that were embedded
    other_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    points5: np.ndarray | None = None  # chosen face's 5 points, original pixels
    crop: np.ndarray | None = None  # 112×112 uint8 RGB ArcFace crop
    crop_path: str | None = None
    embedding: np.ndarray | None = None  # [512] unit ArcFace embedding
    judge_descriptor: np.ndarray | None = None  # [128] dlib descriptor
    similarity_to_rest: float | None = None  # mean ArcFace cosine to the other usable photos
    judge_distance_to_rest: float | None = None  # median dlib distance to the other usable photos

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def usable(self) -> bool:
        return self.status in USABLE and self.crop is not None

    def to_dict(self) -> dict:
        return {
            "path": self.path, "status": self.status, "message": self.message, "warnings": self.warnings,
            "error_code": self.error_code, "image_size": self.image_size, "notes": self.notes,
            "faces_found": self.faces_found,
            "box": None if self.box is None else [round(v, 1) for v in self.box],
            "face_size": self.face_size,
            "other_boxes": [[round(v, 1) for v in b] for b in self.other_boxes],
            "points5": None if self.points5 is None else np.round(self.points5, 2).tolist(),
            "crop_path": self.crop_path,
            "has_embedding": self.embedding is not None,
            "similarity_to_rest": _round(self.similarity_to_rest),
            "judge_distance_to_rest": _round(self.judge_distance_to_rest),
        }


@dataclass
class IdentityReport:
    photos: list[PhotoResult]
    backend: str  # "insightface" or "dlib" (the detector used)
    embedding: np.ndarray | None  # [512] mean identity, unit length; None when it cannot be made
    used: list[int]  # indices of the photos that went into the embedding
    similarity: np.ndarray  # ArcFace cosine between usable photos (indices in `compared`)
    judge_distances: np.ndarray  # dlib distances between usable photos (indices in `compared`)
    compared: list[int]
    detector_model: str | None = None
    recognition_model: str | None = None
    warnings: list[str] = field(default_factory=list)  # about the whole set
    out_dir: str | None = None

    @property
    def ok(self) -> bool:
        return self.embedding is not None

    def to_dict(self) -> dict:
        def matrix(m):
            return [[_round(v) for v in row] for row in np.asarray(m)]

        return {
            "backend": self.backend, "detector_model": self.detector_model,
            "recognition_model": self.recognition_model,
            "has_embedding": self.embedding is not None,
            "embedding_file": EMBEDDING_FILE if self.embedding is not None else None,
            "used": self.used, "compared": self.compared,
            "similarity": matrix(self.similarity), "judge_distances": matrix(self.judge_distances),
            "warnings": self.warnings,
            "photos": [p.to_dict() for p in self.photos],
        }

    def save(self, out_dir: Path | str) -> Path:
        """Write ``embedding.npy`` (when there is one) and ``identity.json`` atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.out_dir = str(out)
        # ASCII JSON: a photo name that is not valid UTF-8 (a surrogate-escaped str) is written as
        # \udcXX escapes, which read back to the very same name, instead of failing the write.
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=True)
        if self.embedding is not None:
            write_file_atomic(out / EMBEDDING_FILE, lambda f: np.save(f, self.embedding.astype(np.float32)))
        elif (out / EMBEDDING_FILE).is_file():
            from ..owned import ForeignFolderError, remove_owned

            try:  # never leave a stale identity behind, but never delete a file the engine did not write
                remove_owned(out / EMBEDDING_FILE)
            except ForeignFolderError:
                pass
        write_text_atomic(out / SUMMARY_FILE, text)
        return out


def write_png_atomic(target: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    write_file_atomic(target, lambda f: Image.fromarray(rgb).save(f, format="PNG"))
