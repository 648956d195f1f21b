"""The insightface path: insightface's own ArcFaceONNX code on a generated recognition ONNX with
ArcFace's signature (random weights: the numbers are meaningless, the plumbing is real), and the
clear error when the pack has no detector."""

from __future__ import annotations

import numpy as np
import pytest

from engine.identity.align import align_face


@pytest.fixture(scope="module")
def embedder(arcface_root):
    from engine.identity.embed import ArcFaceEmbedder

    return ArcFaceEmbedder(arcface_root / "antelopev2" / "arcface.onnx", ["CPUExecutionProvider"])


def test_routed_to_insightface_arcface(embedder):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    assert isinstance(embedder._model, ArcFaceONNX)
    assert embedder._model.input_size == (112, 112)


def test_embedding_is_unit_512_and_deterministic(embedder, dlib_detector, portraits):
    rgb = portraits["grace_hopper.jpg"]
    face = dlib_detector.detect(rgb)[0]
    crop, _ = align_face(rgb, face.points5, weights=face.fit_weights)
    first = embedder.embed(crop)
    assert first.shape == (512,) and first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(first, embedder.embed(crop.copy()))
    # It depends on the pixels (not a constant): another face gives another vector.
    other = portraits["tom_hanks_aligned.png"]
    assert not np.allclose(first, embedder.embed(other))


def test_matches_insightface_preprocessing_by_hand(embedder, portraits):
    # insightface's ArcFace input: BGR->RGB, (x - 127.5) / 127.5, NCHW. Our RGB crop must reach the
    # network the same way: compare with onnxruntime fed by hand.
    import onnxruntime

    crop = portraits["tom_hanks_aligned.png"]
    session = onnxruntime.InferenceSession(str(embedder.model_file), providers=["CPUExecutionProvider"])
    blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    expected = session.run(None, {"input.1": blob})[0][0]
    assert np.allclose(embedder.embed(crop), expected / np.linalg.norm(expected), atol=1e-5)


def test_pack_without_detector_gives_clear_missing_model_error(arcface_root, photos_dir):
    from engine.identity import analyse_photos
    from engine.model_store import ModelsMissing

    with pytest.raises(ModelsMissing) as err:
        analyse_photos([photos_dir / "astronaut.png"], backend="insightface", models_root=arcface_root)
    text = str(err.value)
    assert "scrfd_10g_bnkps.onnx" in text and str(arcface_root / "antelopev2") in text
    assert "fetch-models" in text
    assert "arcface.onnx" not in text.split("Looked in")[0]  # the recogniser is there: not listed missing


def test_auto_backend_falls_back_to_dlib_and_embeds_with_arcface(arcface_root, photos_dir, tmp_path):
    from PIL import Image, ImageOps

    from engine.identity import analyse_photos

    mirrored = tmp_path / "grace mirrored.png"
    ImageOps.mirror(Image.open(photos_dir / "grace_hopper.jpg")).save(mirrored)
    report = analyse_photos([photos_dir / "grace_hopper.jpg", mirrored], models_root=arcface_root,
                            out_dir=tmp_path / "out")
    assert report.backend == "dlib"
    assert report.recognition_model == str(arcface_root / "antelopev2" / "arcface.onnx")
    assert report.embedding.shape == (512,) and np.linalg.norm(report.embedding) == pytest.approx(1, abs=1e-5)
    mean = report.photos[0].embedding + report.photos[1].embedding
    assert np.allclose(report.embedding, mean / np.linalg.norm(mean), atol=1e-6)
    assert np.array_equal(np.load(tmp_path / "out" / "embedding.npy"), report.embedding)


def test_two_different_people_give_no_identity(arcface_root, photos_dir, tmp_path):
    from engine.identity import analyse_photos

    report = analyse_photos([photos_dir / "astronaut.png", photos_dir / "grace_hopper.jpg"],
                            models_root=arcface_root, out_dir=tmp_path)
    # The judge sees two people; with two photos nobody can say which is right, so nothing is averaged.
    assert report.judge_distances[0, 1] > 0.6
    assert report.embedding is None and report.used == []
    assert any("do not agree on one person" in w and "no identity embedding" in w for w in report.warnings)
    assert not (tmp_path / "embedding.npy").exists()


def test_offline_without_arcface_runs_detection_and_says_so(photos_dir, tmp_path):
    from engine.identity import analyse_photos

    report = analyse_photos([photos_dir / "astronaut.png"], backend="auto", models_root=tmp_path / "empty",
                            out_dir=tmp_path / "out")
    assert report.backend == "dlib" and report.embedding is None
    assert report.photos[0].status == "ok" and report.photos[0].crop.shape == (112, 112, 3)
    assert report.photos[0].judge_descriptor.shape == (128,)
    assert "no identity embedding was made" in report.warnings[0] and "fetch-models" in report.warnings[0]
    assert not (tmp_path / "out" / "embedding.npy").exists() and (tmp_path / "out" / "identity.json").exists()


@pytest.fixture(scope="module")
def insightface_root(tmp_path_factory, dlib_detector, portraits, scrfd_stand_in):
    """antelopev2 with the generated ArcFace and the SCRFD test double reporting the astronaut's
    face where dlib finds it (the astronaut photo is 512² -> scale 1.25 to the 640² input)."""
    from engine.tiny_models import write_arcface_onnx

    root = tmp_path_factory.mktemp("antelope")
    face = dlib_detector.detect(portraits["astronaut.png"])[0]
    scrfd_stand_in(root / "antelopev2" / "scrfd_10g_bnkps.onnx", tuple(np.array(face.box) * 1.25),
                         face.points5 * 1.25)
    write_arcface_onnx(root / "antelopev2" / "arcface.onnx", seed=7)
    return root, face


def test_scrfd_decoding_maps_back_to_photo_pixels(insightface_root, portraits):
    from engine.identity.detect_insightface import InsightfaceDetector

    root, expected = insightface_root
    detector = InsightfaceDetector(root / "antelopev2" / "scrfd_10g_bnkps.onnx", ["CPUExecutionProvider"])
    faces = detector.detect(portraits["astronaut.png"])
    assert len(faces) == 1 and faces[0].score == pytest.approx(0.9)
    assert np.allclose(faces[0].box, expected.box, atol=0.01)
    assert np.allclose(faces[0].points5, expected.points5, atol=0.01)


def test_insightface_backend_end_to_end(insightface_root, photos_dir, tmp_path):
    import warnings

    from insightface.utils.face_align import norm_crop

    from engine.identity import analyse_photos

    root, expected = insightface_root
    report = analyse_photos([photos_dir / "astronaut.png"], backend="insightface", models_root=root,
                            out_dir=tmp_path)
    photo = report.photos[0]
    assert report.backend == "insightface" and photo.status == "ok"
    assert report.detector_model == str(root / "antelopev2" / "scrfd_10g_bnkps.onnx")
    assert np.linalg.norm(report.embedding) == pytest.approx(1.0, abs=1e-5)
    # The crop is insightface's norm_crop of the same 5 points (OpenCV vs Pillow bilinear: tiny differences).
    rgb = np.asarray(__import__("PIL.Image").Image.open(photos_dir / "astronaut.png").convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = norm_crop(rgb, expected.points5.astype(np.float32), 112)
    assert np.abs(photo.crop.astype(int) - theirs.astype(int)).mean() < 2.0


def test_tiny_face_found_by_scrfd_is_too_small(tmp_path, scrfd_stand_in, photos_dir):
    from engine.identity import analyse_photos
    from engine.tiny_models import write_arcface_onnx

    # SCRFD finds faces far smaller than dlib can: a 25-px face (in the 512² photo) is refused.
    box = np.array([200.0, 100.0, 225.0, 125.0])
    points = np.array([[206, 110], [219, 110], [212.5, 115], [207, 120], [218, 120]], dtype=float)
    scrfd_stand_in(tmp_path / "antelopev2" / "scrfd_10g_bnkps.onnx", tuple(box * 1.25), points * 1.25)
    write_arcface_onnx(tmp_path / "antelopev2" / "arcface.onnx", seed=7)
    report = analyse_photos([photos_dir / "astronaut.png"], backend="insightface", models_root=tmp_path,
                            judge=False)
    photo = report.photos[0]
    assert photo.status == "too_small" and photo.face_size == 25
    assert "the face is 25 px; at least 40 px are needed" in photo.message
    assert report.embedding is None
