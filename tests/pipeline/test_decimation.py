"""The canonical mesh is decimated after the geometry stage; expressions live on the decimated faces."""

from __future__ import annotations

import json
import math

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
    # (That the offsets are the expression on the decimated vertices is tested below with a shape
    # key that varies over the head: this job's 6-step offsets are too uniform to show it.)
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


def test_decimated_shape_key_keeps_the_expression_shape(make_job):
    """The decimated canonical mesh plus its shape key must be the expression's shape: close to the
    full mesh plus its own shape key, far closer than the decimated neutral is. (Offsets carried
    over from the full mesh by vertex index, or evaluated anywhere but at the decimated vertices,
    put the expression surface elsewhere.)"""
    from engine.geometry.mesh_utils import chamfer_distance
    from engine.pipeline.geometry_stage import GeometryStage
    from engine.pipeline.presets import resolve_preset

    settings = resolve_preset("test", {})
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32)
    stage = GeometryStage(settings, None, embedding, EXPRESSIONS, seed=0, device="cpu", normal_maps=True,
                          objective=lambda *a: torch.zeros(()))
    assert stage.initialise()
    full_v, full_f, _ = stage.canonical()
    # A fresh model's offsets are ~0.1 mm: teach "smiling" a jaw opening of centimetres, a field that
    # varies over the head (zero on the crown), so a shape key put on the wrong vertices shows.
    points = torch.from_numpy(full_v)
    hinge_z, angle = -0.02, math.radians(20) * torch.sigmoid((-0.03 - points[:, 2]) / 0.008)
    y, z = points[:, 1], points[:, 2] - hinge_z
    jaw = torch.stack([points[:, 0] * 0, y * torch.cos(angle) - z * torch.sin(angle) - y,
                       y * torch.sin(angle) + z * torch.cos(angle) - z], -1)
    optimiser = torch.optim.Adam(stage.expressions.parameters(), lr=1e-2)
    for _ in range(200):
        optimiser.zero_grad()
        (stage.expressions.offsets(points, "smiling") - jaw).pow(2).sum(-1).mean().backward()
        optimiser.step()
    full_v, full_f, full_offsets = stage.canonical()
    target = len(full_f) // 2
    v, f, offsets = stage.canonical(target)
    assert len(f) <= target and stage.decimation["faces_before"] == len(full_f) and stage.decimation["error"] is None
    assert offsets["smiling"].shape == v.shape and not offsets["neutral"].any()

    def chamfer(a, fa, b, fb):
        return chamfer_distance(torch.from_numpy(a), torch.from_numpy(fa.astype(np.int64)), torch.from_numpy(b),
                                torch.from_numpy(fb.astype(np.int64)), n_points=20000)["chamfer"]

    expression = full_v + full_offsets["smiling"]
    moved = float(np.linalg.norm(full_offsets["smiling"], axis=1).mean())
    kept = chamfer(v + offsets["smiling"], f, expression, full_f)
    neutral = chamfer(v, f, expression, full_f)
    print(f"\nshape key after decimation: mean offset {moved * 1000:.1f} mm; Chamfer to the full expression "
          f"{kept * 1000:.2f} mm (decimated neutral: {neutral * 1000:.2f} mm)")
    assert moved > 0.003  # metres: the expression is a real shape change
    assert kept < 0.3 * neutral, (kept, neutral)
