"""The identity step: photos in, per-photo results and one ArcFace identity vector out.

Backends (the detector; the embedding is always ArcFace):

* ``insightface``: SCRFD detection with 5 landmarks + ArcFace, both from the antelopev2 folder.
* ``dlib``: dlib HOG + 68 landmarks -> the same 5 points; works offline with no model download.
  The ArcFace embedding is made when an ``arcface.onnx`` is found (antelopev2 or arc2face folder).
  Without one, detection, alignment and the judge still run and the report says plainly that no
  identity embedding could be made and how to get the model.
* ``auto``: insightface when its detector is present, otherwise dlib.

The independent judge (dlib 128-d) describes every usable photo; it decides outliers.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import EngineError
from ..owned import check_replaceable, replace_owned_dir
from ..model_store import FIX_HINT, ModelsMissing, resolve_identity_models
from .aggregate import agreement, cosine_matrix, find_outliers, mean_embedding
from .align import Face, align_face
from .images import DEFAULT_MAX_SIDE, PhotoError, load_photo
from .report import (NO_FACE, OUTLIER, SEVERAL_FACES, TOO_SMALL, UNREADABLE, IdentityReport, PhotoResult,
                     write_png_atomic)

log = logging.getLogger(__name__)

MIN_FACE_PX = 40  # below this the 112-px crop is mostly interpolation: refused
WARN_FACE_PX = 72  # below this the embedding is noticeably less reliable: warned
BACKENDS = ("auto", "insightface", "dlib")
IDENTITY_KIND = "identity"  # the owned-folder kind of an identity output folder


def _importable(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def _describe_box(box, scale: float) -> str:
    x0, y0, x1, y1 = (v / scale for v in box)
    return f"{round(min(x1 - x0, y1 - y0))} px at ({round(x0)}, {round(y0)})"


class _Engines:
    """The loaded models for one run (loaded once, used for every photo)."""

    def __init__(self, backend: str, models_root, device: str, use_judge: bool):
        if backend not in BACKENDS:
            raise EngineError(f"unknown identity backend {backend!r}; use one of {', '.join(BACKENDS)}",
                              code="bad_backend")
        self.models = resolve_identity_models(models_root)
        self.warnings: list[str] = []
        if backend == "auto":
            backend = "insightface" if self.models.detector is not None and _importable(
                "insightface", "onnxruntime") else "dlib"
        self.backend = backend
        providers = None
        if backend == "insightface":
            if self.models.detector is None or self.models.recognition is None:
                raise ModelsMissing(self.models.missing_message(need_detector=True), hint=FIX_HINT)
            from .detect_insightface import InsightfaceDetector
            from .providers import onnx_providers

            providers = onnx_providers(device)
            self.detector = InsightfaceDetector(self.models.detector, providers)
        else:
            from .detect_dlib import DlibFaceDetector

            self.detector = DlibFaceDetector()
        self.embedder = None
        if self.models.recognition is not None:
            from .embed import ArcFaceEmbedder
            from .providers import onnx_providers

            self.embedder = ArcFaceEmbedder(self.models.recognition, providers or onnx_providers(device))
        else:
            self.warnings.append(
                "no ArcFace model (arcface.onnx) was found, so no identity embedding was made; faces were "
                "detected, aligned and checked by the judge. "
                + self.models.missing_message(need_detector=False)
                + " Fix: " + FIX_HINT)
        self.judge = None
        if use_judge:
            try:
                from .judge import DlibJudge

                shared = self.detector if backend == "dlib" else None
                self.judge = DlibJudge(shared)
            except EngineError as exc:
                self.warnings.append(f"the independent judge (dlib) is unavailable: {exc}; outliers are "
                                     "decided by ArcFace similarity instead")


def _analyse_one(index: int, path, engines: _Engines, max_side: int, crops_dir: Path | None,
                 crops_final: Path | None = None) -> PhotoResult:
    result = PhotoResult(path=str(path))
    try:
        photo = load_photo(path, max_side=max_side)
    except PhotoError as exc:
        result.status, result.error_code = UNREADABLE, exc.code
        result.message = exc.message + (f"; {exc.hint}" if exc.hint else "")
        return result
    result.image_size, result.notes = photo.original_size, photo.notes
    height, width = photo.rgb.shape[:2]
    if min(width, height) < MIN_FACE_PX:
        result.status = TOO_SMALL
        result.message = (f"image is only {width}×{height} px; a face needs at least {MIN_FACE_PX} px "
                          f"({WARN_FACE_PX}+ recommended)")
        return result
    faces: list[Face] = engines.detector.detect(photo.rgb)
    result.faces_found = len(faces)
    if not faces:
        result.status = NO_FACE
        result.message = (f"no face found (looked for a roughly frontal face of at least {MIN_FACE_PX} px); "
                          "use a photo where the face is clearly visible")
        return result
    face = faces[0]  # largest first
    result.box = tuple(v / photo.scale for v in face.box)
    result.face_size = face.size
    result.points5 = face.points5 / photo.scale
    result.other_boxes = [tuple(v / photo.scale for v in f.box) for f in faces[1:]]
    if face.size < MIN_FACE_PX:
        result.status = TOO_SMALL
        result.message = (f"the face is {face.size} px; at least {MIN_FACE_PX} px are needed "
                          f"({WARN_FACE_PX}+ recommended): use a closer or higher-resolution photo")
        return result
    if face.size < WARN_FACE_PX:
        result.warnings.append(f"the face is only {face.size} px; {WARN_FACE_PX}+ px give a more reliable "
                               "identity")
    if len(faces) > 1:
        result.status = SEVERAL_FACES
        others = ", ".join(_describe_box(f.box, photo.scale) for f in faces[1:])
        result.warnings.append(f"{len(faces)} faces found; used the largest "
                               f"({_describe_box(face.box, photo.scale)}); ignored: {others}")
    result.crop, _ = align_face(photo.rgb, face.points5, weights=face.fit_weights)
    if engines.embedder is not None:
        result.embedding = engines.embedder.embed(result.crop)
    if engines.judge is not None:
        result.judge_descriptor = engines.judge.describe(photo.rgb, face)
    if crops_dir is not None:
        stem = re.sub(r"[^\w.-]+", "_", Path(path).stem)[:60] or "photo"
        name = f"{index:02d}_{stem}.png"
        try:
            write_png_atomic(crops_dir / name, result.crop)
        except OSError as exc:  # the output folder's fault, not the photo's
            raise EngineError(f"cannot write the face crop {(crops_final or crops_dir) / name} ({exc.strerror or exc})",
                              code="out_not_writable",
                              hint="choose an output folder you can write to, with free space") from None
        result.crop_path = str((crops_final or crops_dir) / name)
    result.message = (f"{len(faces)} faces, used the largest" if len(faces) > 1 else "1 face") + \
        f" ({face.size} px)"
    return result


def analyse_photos(paths: Sequence[str | Path], *, backend: str = "auto", models_root=None, out_dir=None,
                   device: str = "cpu", judge: bool = True,
                   max_side: int = DEFAULT_MAX_SIDE) -> IdentityReport:
    """Run the identity step on ``paths``; see :mod:`engine.identity` for the result."""
    if not paths:
        raise EngineError("no photos given", code="no_photos", hint="add 1-10 photos of the person")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_replaceable(out, IDENTITY_KIND)  # refuse a foreign or unwritable folder before any work
    engines = _Engines(backend, models_root, device, judge)

    def analyse(crops_dir: Path | None) -> IdentityReport:
        results = []
        for index, path in enumerate(paths):
            try:
                results.append(_analyse_one(index, path, engines, max_side, crops_dir,
                                            out / "crops" if out is not None else None))
            except EngineError:
                raise  # a model or output problem concerns every photo: stop with its message
            except Exception as exc:  # an unexpected failure on one photo must not cost the others
                log.exception("identity step failed on %s", path)
                results.append(PhotoResult(path=str(path), status=UNREADABLE, error_code="failed",
                                           message=f"{Path(path).name}: processing failed "
                                                   f"({type(exc).__name__}: {exc})"))
        return _aggregate(results, engines)

    if out is None:
        return analyse(None)
    made: list[IdentityReport] = []

    def write(staging: Path) -> None:
        # crops, embedding.npy and identity.json are built in a staging folder and swapped in
        # together: a reader sees the old identity or the new one, never a mix (or a stale crop).
        (staging / "crops").mkdir()
        report = analyse(staging / "crops")
        report.save(staging)
        made.append(report)

    replace_owned_dir(out, IDENTITY_KIND, write)
    made[0].out_dir = str(out)
    return made[0]


def _aggregate(results: list[PhotoResult], engines: _Engines) -> IdentityReport:
    compared = [i for i, r in enumerate(results) if r.usable]
    embeddings = [results[i].embedding for i in compared if results[i].embedding is not None]
    cosines = cosine_matrix(embeddings) if len(embeddings) == len(compared) and compared else None
    descriptors = [results[i].judge_descriptor for i in compared]
    distances = None
    if compared and all(d is not None for d in descriptors):
        from .judge import SAME_PERSON_DISTANCE, distance_matrix

        distances = distance_matrix(descriptors, descriptors)
    threshold = 0.6 if distances is None else SAME_PERSON_DISTANCE
    warnings = list(engines.warnings)
    outliers, mixed = find_outliers(agreement(distances, cosines, threshold))
    for k, i in enumerate(compared):
        rest = [m for m in range(len(compared)) if m != k]
        if cosines is not None and rest:
            results[i].similarity_to_rest = float(np.mean(cosines[k, rest]))
        if distances is not None and rest:
            results[i].judge_distance_to_rest = float(np.median(distances[k, rest]))
    for k in outliers:
        r = results[compared[k]]
        r.status = OUTLIER
        detail = (f"judge distance {r.judge_distance_to_rest:.2f} to the others, same person < {threshold}"
                  if r.judge_distance_to_rest is not None else
                  f"ArcFace similarity {r.similarity_to_rest:.2f} to the others")
        r.message = (f"looks like a different person from the other photos ({detail}); "
                     "left out of the identity")
    used = [i for i in compared if results[i].status != OUTLIER]
    if mixed:
        # Averaging two people gives a face that is neither: refuse rather than guess.
        warnings.append("the photos do not agree on one person and no majority stands out, so no identity "
                        "embedding was made; keep only photos of one person (disable the others) and check again "
                        "(see the judge distances)")
        used = []
    embedding = mean_embedding([results[i].embedding for i in used if results[i].embedding is not None])
    if not used:
        warnings.append("no photo gave a usable face, so there is no identity; see each photo's message")
    empty = np.zeros((0, 0))
    return IdentityReport(
        photos=results, backend=engines.backend, embedding=embedding, used=used,
        similarity=cosines if cosines is not None else empty,
        judge_distances=distances if distances is not None else empty, compared=compared,
        detector_model=(str(engines.models.detector) if engines.backend == "insightface"
                        else "dlib HOG + 68 landmarks"),
        recognition_model=str(engines.models.recognition) if engines.embedder else None,
        warnings=warnings)
