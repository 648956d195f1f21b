"""The quality report, on real photos standing in for renders (so the judge gives real numbers)
and on tiny random models (flagged: the numbers mean nothing); the contact sheet's layout."""

import numpy as np
import pytest
from PIL import Image

from engine.export.quality import VIEWS_DEG, contact_sheet, quality_report, render_views


def photo(path, side=320) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = side / max(im.size)
        return np.asarray(im.resize((round(im.size[0] * scale), round(im.size[1] * scale))))


@pytest.fixture(scope="module")
def real_report(photos_dir):
    grace = photo(photos_dir / "grace_hopper.jpg")
    astronaut = photo(photos_dir / "astronaut.png")
    blank = np.full((160, 160, 3), 255, np.uint8)
    # The person herself in three "views", another person, and a view with no face at all.
    renders = {"neutral": [grace, grace, grace, astronaut, blank], "smiling": [astronaut] * 4 + [blank]}
    return quality_report(renders=renders, photos=[photos_dir / "grace_hopper.jpg"])


def test_judge_tells_the_person_from_someone_else(real_report):
    report, _ = real_report
    assert report["tiny_test_models"] is False and "mean nothing" not in report["note"]
    assert report["views_deg"] == list(VIEWS_DEG)
    neutral = report["expressions"]["neutral"]["views"]
    assert [v["face_found"] for v in neutral] == [True, True, True, True, False]
    assert all(v["dlib_distance"] < 0.6 for v in neutral[:3])  # the same person: dlib's "same"
    assert neutral[3]["dlib_distance"] > 0.6  # the astronaut is not Grace Hopper
    assert neutral[4]["dlib_distance"] is None and neutral[4]["arcface_cosine"] is None
    smiling = report["expressions"]["smiling"]
    assert smiling["mean_dlib_distance"] > 0.6 and smiling["faces_found"] == 4
    assert report["expressions"]["neutral"]["mean_dlib_distance"] < smiling["mean_dlib_distance"]


def test_report_is_plain_json(real_report):
    import json

    report, renders = real_report
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert list(renders) == ["neutral", "smiling"] and len(renders["neutral"]) == len(VIEWS_DEG)


def test_tiny_models_are_flagged_as_meaningless(textured_head, tiny_models_root, photos_dir):
    head, _, albedo, roughness = textured_head
    renders = render_views(head, albedo, roughness, resolution=96)
    assert list(renders) == head.expression_names and all(len(r) == len(VIEWS_DEG) for r in renders.values())
    assert renders["neutral"][0].shape == (96, 96, 3)
    assert not np.allclose(renders["neutral"][0], renders["smiling"][0])  # the expression moved the jaw
    identity = np.random.default_rng(0).normal(size=512)
    report, _ = quality_report(renders=renders, identity_embedding=identity, models_root=tiny_models_root,
                               photos=[photos_dir / "grace_hopper.jpg"])
    assert report["tiny_test_models"] is True and "mean nothing" in report["note"]
    assert set(report["expressions"]) == set(head.expression_names)


def test_arcface_cosine_is_each_render_against_the_photos_identity(tiny_models_root, photos_dir):
    """With an arcface.onnx (here the tiny random one) each view's cosine is between that render's
    own embedding and the photos' identity: a render with the photo's own pixels gets 1, a render
    of someone else gets the cosine between the two people's embeddings (each photo embedded on its
    own by the identity room, here), a render without a face gets none."""
    from engine.identity import analyse_photos

    grace_path, astronaut_path = photos_dir / "grace_hopper.jpg", photos_dir / "astronaut.png"
    grace = np.asarray(Image.open(grace_path).convert("RGB"))  # the photos' own pixels
    astronaut = np.asarray(Image.open(astronaut_path).convert("RGB"))
    blank = np.full((160, 160, 3), 255, np.uint8)
    report, _ = quality_report(renders={"neutral": [grace, astronaut, grace, astronaut, blank]},
                               models_root=tiny_models_root, photos=[grace_path])
    assert report["arcface_available"] is True
    embeddings = [analyse_photos([path], models_root=tiny_models_root).embedding for path in (grace_path, astronaut_path)]
    other = float(np.dot(embeddings[0], embeddings[1]))
    assert other < 0.9, other  # the tiny model's embeddings tell the two people apart (measured: 0.50)
    cosines = [v["arcface_cosine"] for v in report["expressions"]["neutral"]["views"]]
    assert None not in cosines[:4] and cosines[4] is None, cosines
    assert abs(cosines[0] - 1.0) < 1e-4 and abs(cosines[2] - 1.0) < 1e-4, cosines
    assert abs(cosines[1] - other) < 1e-4 and abs(cosines[3] - other) < 1e-4, (cosines, other)


def test_contact_sheet_has_a_row_per_expression_and_a_column_per_view():
    renders = {"neutral": [np.zeros((32, 32, 3))] * 5, "with curly red hair ✨": [np.ones((32, 32, 3))] * 5}
    sheet = contact_sheet(renders, VIEWS_DEG, tile=40, label_height=10)
    assert sheet.shape == (10 + 2 * 50, 5 * 40, 3) and sheet.dtype == np.uint8
    assert sheet[10 + 10 + 5, 5].max() == 0 and sheet[10 + 50 + 10 + 5, 5].min() == 255
    # Each tile starts below its row's label strip (white beyond the short label text).
    assert sheet[10 + 5, 150].min() == 255 and sheet[10 + 10, 150].max() == 0


def _sided_head(textured_head):
    """The test head with expressions named for one side, each moving a known region."""
    from engine.result_format import HeadMesh

    head = textured_head[0]
    v = head.vertices
    eye = np.exp(-(((np.abs(v[:, 0]) - 0.035) / 0.015) ** 2 + ((v[:, 2] - 0.03) / 0.015) ** 2))
    names = ["neutral", "eyeBlinkLeft", "eyeBlinkRight", "mouthSmile_R", "cleft chin", "browDownLeft"]
    offsets = np.zeros((len(names), len(v), 3), np.float32)
    offsets[1, :, 2] = -0.004 * eye * (v[:, 0] > 0)  # the person's left eye: +X (the face looks toward -Y)
    offsets[2, :, 2] = -0.004 * eye * (v[:, 0] > 0)  # named right, but moves the left eye: a wrong shape
    offsets[3, :, 2] = 0.003 * eye  # both eyes alike
    offsets[4, :, 1] = -0.002
    return HeadMesh(v, head.faces, names, offsets, head.uvs)


def test_side_share_says_how_much_a_left_or_right_shape_moves_its_own_side(textured_head):
    from engine.export.quality import side_shares

    shares = side_shares(_sided_head(textured_head))
    assert set(shares) == {"eyeBlinkLeft", "eyeBlinkRight", "mouthSmile_R"}  # not neutral, no side, or still
    assert shares["eyeBlinkLeft"] == pytest.approx(1.0)
    assert shares["eyeBlinkRight"] == pytest.approx(0.0)  # caught: it moves the other eye
    assert shares["mouthSmile_R"] == pytest.approx(0.5, abs=0.05)


def test_the_quality_report_carries_the_side_share(textured_head, tiny_models_root):
    head = _sided_head(textured_head)
    blank = [np.full((48, 48, 3), 255, np.uint8)] * len(VIEWS_DEG)
    report, _ = quality_report(renders={name: blank for name in head.expression_names}, head=head,
                               identity_embedding=np.ones(512), models_root=tiny_models_root)
    expressions = report["expressions"]
    assert expressions["eyeBlinkLeft"]["side_share"] == pytest.approx(1.0)
    assert expressions["eyeBlinkRight"]["side_share"] == pytest.approx(0.0)
    assert "side_share" not in expressions["neutral"] and "side_share" not in expressions["cleft chin"]
