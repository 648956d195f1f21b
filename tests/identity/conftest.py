"""Fixtures for the identity tests: a models root with a generated ArcFace-signature ONNX, loaded
dlib models shared across tests (loading the 68-point predictor takes ~1 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def arcface_root(tmp_path_factory) -> Path:
    """A models root whose antelopev2/ holds only a generated arcface.onnx (no detector): random
    weights, ArcFace's exact signature, so insightface's own ArcFaceONNX code runs on it."""
    from engine.tiny_models import write_arcface_onnx

    root = tmp_path_factory.mktemp("models")
    write_arcface_onnx(root / "antelopev2" / "arcface.onnx", seed=7)
    return root


@pytest.fixture(scope="session")
def dlib_detector():
    from engine.identity.detect_dlib import DlibFaceDetector

    return DlibFaceDetector()


@pytest.fixture(scope="session")
def dlib_judge(dlib_detector):
    from engine.identity.judge import DlibJudge

    return DlibJudge(dlib_detector)


@pytest.fixture(scope="session")
def portraits(photos_dir) -> dict[str, np.ndarray]:
    from engine.identity import load_photo

    return {name: load_photo(photos_dir / name).rgb
            for name in ("astronaut.png", "grace_hopper.jpg", "tom_hanks_aligned.png")}


@pytest.fixture(autouse=True)
def _no_user_models(monkeypatch, tmp_path):
    """Keep the machine's own model folders and caches out of every test (and any network)."""
    monkeypatch.setenv("IDTO3D_MODELS", str(tmp_path / "no-default-models"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "no-insightface"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
