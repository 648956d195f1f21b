"""The canonical mesh is decimated after the geometry stage; expressions live on the decimated faces."""

from __future__ import annotations

import json

import numpy as np
import torch

from engine.geometry.mesh_utils import is_closed_manifold, signed_volume
from engine.pipeline import checkpoint
from engine.pipeline.run import run_job

EXPRESSIONS = ["neutral", "smiling"]


def _head(job):
    with np.load(job / "result" / "head.npz") as mesh:
        return {k: mesh[k] for k in mesh.files}


def test_target_faces_override_decimates_the_canonical_mesh_and_its_expressions(make_job):
    full_job = make_job("full", stop_after="geometry", overrides={"target_faces": 0})
    warnings = []
    run_job(full_job, emit=lambda m: warnings.append(m) if m["type"] == "warning" else None)
    full = _head(full_job)
    target = len(full["faces"]) // 3

    job = make_job("decimated", stop_after="geometry", overrides={"target_faces": target})
    run_job(job, emit=lambda m: warnings.append(m) if m["type"] == "warning" else None)
    assert not [w for w in warnings if "decimat" in w["code"]], warnings
    head = _head(job)
    v, f, offsets = head["vertices"], head["faces"], head["expression_offsets"]
    assert 0.9 * target <= len(f) <= target < len(full["faces"])
    tf = torch.from_numpy(f.astype(np.int64))
    assert is_closed_manifold(tf) and float(signed_volume(torch.from_numpy(v), tf)) > 0
    # every expression is an offset array on the decimated vertices, so all share the faces
    assert offsets.shape == (len(EXPRESSIONS), len(v), 3)
    assert not offsets[0].any() and np.abs(offsets[1]).max() > 0
    # the same seed gives the same fields: the offsets are the field evaluated at the decimated
    # vertices, so they match the full mesh's offsets at the nearest full vertex closely
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(full["vertices"]).query(v)
    close = np.abs(offsets[1] - full["expression_offsets"][1][nearest]).max()
    assert close < 0.25 * np.abs(offsets[1]).max(), close
    # the stage-end checkpoint (what --resume continues from) holds the decimated mesh
    state = checkpoint.load_latest(job)
    assert state["stage"] == "texture"
    assert np.array_equal(state["canonical"]["vertices"].numpy(), v)
    assert np.array_equal(state["canonical"]["faces"].numpy(), f)
    assert np.array_equal(state["canonical"]["offset:smiling"].numpy(), offsets[1])
    # and the texture stage resumed from it runs on that mesh, unchanged
    spec = json.loads((job / "job.json").read_text())
    del spec["stop_after"]
    (job / "job.json").write_text(json.dumps(spec))
    resumed = []
    run_job(job, resume=True, emit=lambda m: resumed.append(m["code"]) if m["type"] == "warning" else None)
    assert "geometry_resumed" in resumed
    textured = _head(job)
    assert np.array_equal(textured["vertices"], v) and np.array_equal(textured["faces"], f)
    assert textured["uvs"].shape == (len(f), 3, 2)


def test_stage_offsets_are_the_expression_field_on_the_decimated_vertices(make_job):
    from engine.pipeline.geometry_stage import GeometryStage
    from engine.pipeline.presets import resolve_preset

    settings = resolve_preset("test", {})
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32)
    stage = GeometryStage(settings, None, embedding, EXPRESSIONS, seed=0, device="cpu", normal_maps=True,
                          objective=lambda *a: torch.zeros(()))
    assert stage.initialise()
    _, full_faces, _ = stage.canonical()
    target = len(full_faces) // 2
    v, f, offsets = stage.canonical(target)
    assert len(f) <= target and stage.decimation["faces_before"] == len(full_faces)
    assert stage.decimation["faces_after"] == len(f) and stage.decimation["error"] is None
    with torch.no_grad():
        wanted = stage.expressions.offsets(torch.from_numpy(v), "smiling").numpy()
    assert offsets["smiling"].shape == v.shape and np.array_equal(offsets["smiling"], wanted)
