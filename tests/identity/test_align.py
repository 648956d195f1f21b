"""The ArcFace similarity crop: same transform as insightface's, correct warping convention."""

from __future__ import annotations

import numpy as np

from engine.identity.align import (ARCFACE_POINTS, align_face, apply_transform, five_points_from_68,
                                   similarity_transform)


def test_transform_matches_insightface_estimate_norm():
    import warnings

    from insightface.utils.face_align import estimate_norm

    rng = np.random.default_rng(1)
    for _ in range(5):
        points = ARCFACE_POINTS * rng.uniform(1.5, 4) + rng.uniform(0, 300, 2) + rng.normal(0, 3, (5, 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            theirs = estimate_norm(points.astype(np.float32), 112)
        assert np.allclose(similarity_transform(points, ARCFACE_POINTS), theirs, atol=1e-4)


def test_exact_similarity_is_recovered_and_weights_pull_points_in():
    angle, scale, shift = 0.3, 2.5, np.array([40.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (ARCFACE_POINTS - shift) @ np.linalg.inv(rot).T  # src maps exactly onto the template
    assert np.allclose(apply_transform(similarity_transform(src, ARCFACE_POINTS), src), ARCFACE_POINTS, atol=1e-9)
    noisy = src.copy()
    noisy[2] += 6.0  # a nose point defined differently
    plain = np.abs(apply_transform(similarity_transform(noisy, ARCFACE_POINTS), noisy)[:2] - ARCFACE_POINTS[:2])
    weighted = np.abs(apply_transform(similarity_transform(noisy, ARCFACE_POINTS, [4, 4, 1, 1, 1]), noisy)[:2]
                      - ARCFACE_POINTS[:2])
    assert weighted.max() < plain.max()


def test_warp_puts_marked_points_on_the_template():
    # Dots drawn at known 5 points in a big image must land on the canonical positions in the crop.
    rng = np.random.default_rng(2)
    angle = 0.2
    rot = 3.0 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_POINTS @ rot.T + np.array([150.0, 120.0])
    image = np.zeros((600, 600, 3), dtype=np.uint8)
    for x, y in np.rint(points).astype(int):
        image[y - 4:y + 5, x - 4:x + 5] = 255
    crop, _ = align_face(image, np.rint(points))
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    ys, xs = np.mgrid[0:112, 0:112]
    for x, y in ARCFACE_POINTS:
        window = (np.abs(xs - x) < 5) & (np.abs(ys - y) < 5)
        weight = crop[..., 0] * window
        centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        assert np.linalg.norm(centroid - [x, y]) < 0.75, (x, y, centroid)
    assert crop[5, 5, 0] == 0  # far from every marker: still black


def test_five_points_from_68():
    p68 = np.zeros((68, 2))
    p68[36:42] = [10, 20]
    p68[42:48] = [30, 20]
    p68[30] = [20, 30]
    p68[48] = [12, 40]
    p68[54] = [28, 40]
    assert np.array_equal(five_points_from_68(p68), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
