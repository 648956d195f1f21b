"""The independent judge (dlib 128-d) tells the same person from different people on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from engine.identity.judge import SAME_PERSON_DISTANCE, judge_similarity

PEOPLE = ("astronaut.png", "grace_hopper.jpg", "tom_hanks_aligned.png")


def variants(rgb: np.ndarray, box) -> list[np.ndarray]:
    """Flipped, cropped and re-lit versions of one photo (same person, different pixels)."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    margin = int(0.6 * (x1 - x0))
    cropped = rgb[max(0, y0 - margin):min(h, y1 + margin), max(0, x0 - margin):min(w, x1 + margin)]
    ramp = np.linspace(0.55, 1.15, w)[None, :, None]  # light from one side, darker overall
    relit = np.clip(255.0 * (rgb / 255.0) ** 1.3 * ramp, 0, 255).astype(np.uint8)
    return [rgb[:, ::-1], cropped, relit, (rgb / 255.0).astype(np.float32)]  # last: float [0,1] input


@pytest.fixture(scope="module")
def judged(portraits, dlib_judge):
    originals = [portraits[name] for name in PEOPLE]
    edited = []
    owners = []
    for k, rgb in enumerate(originals):
        box = dlib_judge.detector.detect(rgb)[0].box
        for image in variants(rgb, box):
            edited.append(image)
            owners.append(k)
    return judge_similarity(edited, originals, judge=dlib_judge), owners


def test_same_person_variants_are_judged_same(judged):
    result, owners = judged
    assert all(result.found_a) and all(result.found_b)
    same = [result.distances[i, k] for i, k in enumerate(owners)]
    assert max(same) < SAME_PERSON_DISTANCE, same
    assert all(result.same_person[i, k] for i, k in enumerate(owners))


def test_different_people_are_judged_different(judged):
    result, owners = judged
    different = [result.distances[i, j] for i, k in enumerate(owners) for j in range(len(PEOPLE)) if j != k]
    assert min(different) > SAME_PERSON_DISTANCE, different
    same = [result.distances[i, k] for i, k in enumerate(owners)]
    assert max(same) < min(different)  # a margin, not just each side of the threshold


def test_image_without_face_is_reported(dlib_judge, portraits):
    blank = np.full((200, 200, 3), 128, dtype=np.uint8)
    result = judge_similarity([blank], [portraits["astronaut.png"]], judge=dlib_judge)
    assert result.found_a == [False] and np.isnan(result.distances[0, 0])
    assert "no face" in result.messages[0] and not result.same_person[0, 0]
