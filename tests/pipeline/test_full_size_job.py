"""One whole job at the standard preset's sizes on the full-size random-weight models (slow).

identity (a real photo) -> geometry (grid 128, 512^2 renders, 2 views) -> decimation -> texture
(2048^2 maps) -> quality -> export, 2 SDS steps per stage, CPU fp32, through ``run_job``. Checks
every shape, dtype and file at real size. bench/bench_full_size_job.py runs the same job and
prints its time and peak RSS (docs/pipeline.md). About 15-30 minutes on 2 shared cores, ~12 GiB.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_full_size_job as full  # noqa: E402  (the job's helpers live beside its benchmark)

EXPRESSIONS = ["neutral", "smiling", "angry", "surprised"]


@pytest.mark.slow
def test_standard_preset_job_at_full_size(tmp_path):
    from PIL import Image

    models = full.full_size_models()
    photo = full.real_photo(tmp_path / "photos")
    job = full.write_full_size_job(tmp_path / "job", models, photo, EXPRESSIONS, steps=2)
    result = full.run(job)
    folder = result["folder"]
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nfull-size standard job: {result['total_s']:.0f} s, stages "
          + ", ".join(f"{k} {v:.0f} s" for k, v in result["stages_s"].items()) + f"; peak RSS {peak_gib:.2f} GiB")

    # identity from the real photo, at ArcFace's size
    embedding = np.load(job / "identity" / "embedding.npy")
    assert embedding.shape == (512,) and embedding.dtype == np.float32
    assert abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-4

    # SDS steps of both stages ran at the preset's sizes
    progress = [m for m in result["messages"] if m["type"] == "progress"]
    assert [(m["stage"], m["step"]) for m in progress] == [("geometry", 1), ("geometry", 2), ("texture", 1),
                                                         ("texture", 2)]
    assert all(np.isfinite(m["loss"]) for m in progress)
    previews = sorted((job / "live").glob("preview-*.png"))
    assert previews and Image.open(previews[-1]).size == (512, 512)  # the render the prior saw

    # the canonical mesh: grid 128 extracted, decimated to the standard target, closed
    with np.load(folder / "head.npz") as head:
        v, f, offsets, uvs = head["vertices"], head["faces"], head["expression_offsets"], head["uvs"]
        assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == 3
        assert f.dtype == np.int32 and 36_000 <= len(f) <= 44_000  # target_faces 40 000
        assert offsets.dtype == np.float32 and offsets.shape == (len(EXPRESSIONS), len(v), 3)
        assert not offsets[0].any() and np.isfinite(offsets).all()
        assert uvs.dtype == np.float32 and uvs.shape == (len(f), 3, 2)
        assert list(head["expression_names"]) == EXPRESSIONS
        height = v[:, 2].max() - v[:, 2].min()
        assert 0.15 < height < 0.32  # a head-sized surface, metres
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # closed manifold after decimation

    # 2K maps
    for name in ("albedo.png", "roughness.png"):
        assert Image.open(folder / name).size == (2048, 2048), name
    # glb with one morph target per expression beyond neutral, and the maps inside
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(folder / "head.glb"))
    prim = gltf.meshes[0].primitives[0]
    assert len(prim.targets) == len(EXPRESSIONS) - 1
    assert gltf.accessors[prim.attributes.POSITION].count >= len(v)  # split along UV seams
    assert len(gltf.images) >= 2

    info = json.loads((folder / "result.json").read_text())
    s = info["job"]["settings"]
    assert (s["grid"], s["render_resolution"], s["views_per_step"], s["texture_render_resolution"]) == (128, 512, 2, 512)
    assert info["job"]["texture_size"] == 2048
    assert info["memory"]["fallback"]["changes"] == [] and info["memory"]["before_launch"] is None  # CPU
    assert set(info["quality"]["expressions"]) == set(EXPRESSIONS)
    # (result.json is written by the export stage, before its own time is known)
    assert {"identity", "prior", "geometry", "texture", "quality"} <= set(info["timings_s"])
    assert (folder / "contact_sheet.png").is_file()
    ckpt = sorted((job / "checkpoints").glob("ckpt-*.pt"))
    assert ckpt and ckpt[-1].stat().st_size > 2048 * 2048 * 4  # the texture maps at full size are in it
