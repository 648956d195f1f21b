"""Identity from photos: detect, align and embed the face in each photo, then combine.

Public API (later stages call these names):

* :func:`analyse_photos` ``(paths, *, backend="auto"|"insightface"|"dlib", models_root=None,
  out_dir=None, device="cpu") -> IdentityReport``: per-photo results (status ``ok``,
  ``no_face``, ``several_faces``, ``outlier``, ``unreadable`` or ``too_small``, a message,
  warnings, the face box), the mean ArcFace embedding (512-d, unit length, or None), the
  ArcFace similarity matrix and the judge's distance matrix. With ``out_dir`` it writes
  ``embedding.npy``, ``identity.json`` and ``crops/*.png`` there (atomically).
* :func:`judge_similarity` ``(images_a, images_b) -> JudgeResult``: the independent judge (dlib's
  128-d recogniser, never used for optimisation) scores e.g. renders against photos; Euclidean
  distance, same person below 0.6.
* :func:`load_photo`: robust photo loading (formats, EXIF, colour modes, sizes) with
  :class:`PhotoError` naming the file and the problem.

Importing this package loads nothing beyond the standard library (``python -m engine --help`` and
Blender import it); numpy loads with the first name used from it, dlib, onnxruntime and
insightface when a photo is analysed.
"""

from __future__ import annotations

import importlib

# name -> submodule that defines it, loaded on first use (PEP 562 module __getattr__).
_LAZY = {
    "PhotoError": ".images", "load_photo": ".images",
    **{name: ".report" for name in ("NO_FACE", "OK", "OUTLIER", "SEVERAL_FACES", "STATUSES", "TOO_SMALL",
                                    "UNREADABLE", "IdentityReport", "PhotoResult")},
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def analyse_photos(paths, *, backend="auto", models_root=None, out_dir=None, device="cpu", judge=True):
    """Run the identity step on the photos at ``paths`` (see the module docstring)."""
    from .pipeline import analyse_photos as _run

    return _run(paths, backend=backend, models_root=models_root, out_dir=out_dir, device=device, judge=judge)


def judge_similarity(images_a, images_b):
    """dlib distances between the largest face of each image in ``images_a`` and ``images_b``."""
    from .judge import judge_similarity as _judge

    return _judge(images_a, images_b)


__all__ = [
    "analyse_photos", "judge_similarity", "load_photo", "PhotoError", "IdentityReport", "PhotoResult",
    "STATUSES", "OK", "NO_FACE", "SEVERAL_FACES", "OUTLIER", "UNREADABLE", "TOO_SMALL",
]
