"""The dlib backend on real photos: faces found, the largest used in a group, crops in the
canonical ArcFace position (checked independently by re-fitting landmarks on the crop)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.identity.align import ARCFACE_POINTS, align_face, apply_transform, five_points_from_68

PORTRAITS = ("astronaut.png", "grace_hopper.jpg", "tom_hanks_aligned.png")


def eye_errors_in_crop(detector, rgb, face) -> np.ndarray:
    """Pixel distance of the eye centres in the aligned crop from the template, measured by fitting
    dlib's landmarks again on the (4× enlarged) crop: an independent check of the whole path."""
    crop, matrix = align_face(rgb, face.points5, weights=face.fit_weights)
    assert crop.shape == (112, 112, 3)
    corners = apply_transform(matrix, np.array([face.box[:2], face.box[2:]]))
    big = np.asarray(Image.fromarray(crop).resize((448, 448), Image.Resampling.BICUBIC))
    # Pixel centres: crop coordinate c <-> enlarged coordinate 4c + 1.5.
    points68 = (detector.landmarks68(big, tuple((corners * 4 + 1.5).ravel())) - 1.5) / 4
    eyes = five_points_from_68(points68)[:2]
    return np.linalg.norm(eyes - ARCFACE_POINTS[:2], axis=1)


@pytest.mark.parametrize("name", PORTRAITS)
def test_one_face_per_portrait_and_eyes_within_3px(dlib_detector, portraits, name):
    faces = dlib_detector.detect(portraits[name])
    assert len(faces) == 1
    face = faces[0]
    assert face.points5.shape == (5, 2) and face.size >= 80
    x0, y0, x1, y1 = face.box
    assert all(x0 <= x <= x1 and y0 <= y <= y1 + 5 for x, y in face.points5)
    errors = eye_errors_in_crop(dlib_detector, portraits[name], face)
    assert errors.max() < 3.0, errors


def test_group_photo_uses_largest_face_and_names_the_others(photos_dir, arcface_root):
    from engine.identity import analyse_photos

    report = analyse_photos([photos_dir / "group.jpg"], backend="dlib", models_root=arcface_root)
    photo = report.photos[0]
    assert photo.status == "several_faces" and photo.faces_found == 6
    chosen_area = (photo.box[2] - photo.box[0]) * (photo.box[3] - photo.box[1])
    assert all(chosen_area >= (b[2] - b[0]) * (b[3] - b[1]) for b in photo.other_boxes)
    warning = photo.warnings[0]
    assert "6 faces found; used the largest" in warning
    for box in photo.other_boxes:  # every ignored face is named by its position
        assert f"({round(box[0])}, {round(box[1])})" in warning
    assert photo.crop.shape == (112, 112, 3) and photo.embedding.shape == (512,)
    assert report.embedding is not None


def test_largest_group_face_is_aligned(dlib_detector, photos_dir):
    from engine.identity import load_photo

    rgb = load_photo(photos_dir / "group.jpg").rgb
    face = dlib_detector.detect(rgb)[0]
    _, matrix = align_face(rgb, face.points5, weights=face.fit_weights)
    # The detected eye centres land within 3 px of the template...
    assert np.linalg.norm(apply_transform(matrix, face.points5[:2]) - ARCFACE_POINTS[:2], axis=1).max() < 3.0
    # ...and re-fitting on the crop agrees to a few px (this face is small and turned: landmark noise).
    assert eye_errors_in_crop(dlib_detector, rgb, face).max() < 6.0


def test_no_face_in_noise(dlib_detector):
    rng = np.random.default_rng(0)
    noise = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    assert dlib_detector.detect(noise) == []
