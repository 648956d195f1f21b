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


def _write_scrfd_stand_in(path: Path, box: tuple[float, float, float, float], points5: np.ndarray) -> None:
    """TEST DOUBLE for SCRFD (real weights cannot be downloaded here): an ONNX with SCRFD's exact
    interface (input [1,3,640,640]; scores, box distances and keypoint offsets for strides 8/16/32,
    2 anchors each) whose outputs are constant: one stride-32 anchor reports a face at ``box``
    with ``points5`` (in 640×640 detector-input pixels), every other anchor scores 0. insightface's
    own SCRFD class decodes it, so routing, preprocessing, decoding and the scaling back to photo
    pixels are the real code."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    stride, cell = 32, (int(box[1] + box[3]) // 64, int(box[0] + box[2]) // 64)  # (row, col) near the centre
    centre = np.array([cell[1] * stride, cell[0] * stride], dtype=np.float32)
    outputs, initializers, nodes = [], [], []
    mean = helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0)
    zero = helper.make_node("Mul", ["mean", "zero"], ["zero_from_input"])  # outputs depend on the input
    nodes += [mean, zero]
    initializers.append(numpy_helper.from_array(np.zeros((), np.float32), "zero"))
    tensors = {}
    for s in (8, 16, 32):
        n = (640 // s) ** 2 * 2
        scores = np.zeros((n, 1), np.float32)
        boxes = np.ones((n, 4), np.float32)
        kps = np.zeros((n, 10), np.float32)
        if s == stride:
            index = (cell[0] * (640 // s) + cell[1]) * 2
            scores[index] = 0.9
            boxes[index] = np.array([centre[0] - box[0], centre[1] - box[1], box[2] - centre[0],
                                     box[3] - centre[1]]) / s
            kps[index] = ((np.asarray(points5, np.float32) - centre) / s).reshape(-1)
        tensors[f"score_{s}"], tensors[f"bbox_{s}"], tensors[f"kps_{s}"] = scores, boxes, kps
    order = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    for name in order:
        initializers.append(numpy_helper.from_array(tensors[name], name + "_const"))
        nodes.append(helper.make_node("Add", [name + "_const", "zero_from_input"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(tensors[name].shape)))
    graph = helper.make_graph(nodes, "scrfd_stand_in",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])],
                              outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def scrfd_stand_in():
    """The SCRFD test double writer (see :func:`_write_scrfd_stand_in`)."""
    return _write_scrfd_stand_in
