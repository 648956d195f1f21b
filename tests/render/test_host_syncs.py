"""The rasteriser and the edge table without needless host read-backs, and with the same results.

On a GPU every read-back of a value (``.item()``, ``int(t)``, ``tolist``) waits for the device.
The visibility pass reads back one total (plus one list of chunk boundaries when it needs more
than one chunk), the anti-aliasing pass one pair of sizes; the edge table none.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from engine.render import mesh_topology, orbit_cameras, render, sample_lights
from engine.render import rasterize_torch as rt

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from host_syncs import SyncCounter  # noqa: E402  (the benchmarks' counter of host syncs)


def _reference_topology(faces: torch.Tensor):
    """Edges, face counts and each face edge's id, from Python sets (sorted (low, high) pairs)."""
    rows = faces.tolist()
    corner_edges = [tuple(sorted((r[k], r[(k + 1) % 3]))) for r in rows for k in range(3)]
    edges = sorted(set(corner_edges))
    index = {e: i for i, e in enumerate(edges)}
    counts = [0] * len(edges)
    for e in corner_edges:
        counts[index[e]] += 1
    return (torch.tensor(edges), torch.tensor(counts),
            torch.tensor([index[e] for e in corner_edges]).reshape(-1, 3))


@pytest.mark.parametrize("top_id", [None, 2**31 - 1])
def test_edge_table_matches_a_reference_without_reading_anything_back(dmtet_heads, top_id):
    """On a marching-tets head with a hole cut in it (boundary edges, used once), and with its
    vertex ids shifted up to the documented limit (the largest id 2^31 - 1)."""
    _, faces = dmtet_heads("noisy")
    faces = faces[faces.shape[0] // 7:]  # an open mesh: edges used by one face
    if top_id is not None:
        faces = faces + (top_id - int(faces.max()))
    counter = SyncCounter().install()
    with counter.counting():
        topo = mesh_topology(faces)
    assert not counter.read_backs, counter.read_backs
    edges, counts, face_edges = _reference_topology(faces)
    assert (counts == 1).any() and (counts == 2).any()
    assert torch.equal(topo.edge_vertices, edges)
    assert torch.equal(topo.edge_face_count, counts)
    assert torch.equal(topo.face_edges, face_edges)
    # edge_faces: faces that really use the edge; the same face twice only on a boundary edge
    for column in (0, 1):
        users = topo.face_edges[topo.edge_faces[:, column]]
        assert (users == torch.arange(len(edges))[:, None]).any(dim=1).all()
    assert torch.equal(topo.edge_faces[:, 0] == topo.edge_faces[:, 1], counts == 1)


def _projected(verts, cams):
    clip = torch.cat([verts, torch.ones_like(verts[:, :1])], dim=-1) @ cams.world_to_clip().transpose(1, 2)
    return rt.to_screen(clip, cams.resolution), clip[..., 3]


def test_visibility_is_the_same_in_any_number_of_chunks(dmtet_heads, monkeypatch):
    """The z-buffer in one chunk, in chunks of ~1000 candidate pixels, and with chunks smaller than
    most triangles (each triangle its own chunk, some marks falling inside one triangle), on the
    head plus one large triangle behind it."""
    verts, faces = dmtet_heads("noisy")
    big = torch.tensor([[-0.3, 0.3, -0.3], [0.3, 0.3, -0.3], [0.0, 0.3, 0.3]])  # behind the head
    verts = torch.cat([verts, big])
    faces = torch.cat([faces, torch.tensor([[0, 1, 2]]) + verts.shape[0] - 3])
    cams = orbit_cameras([0.0, 120.0], [10.0, -5.0], resolution=(80, 64), radius=0.6)
    scr, w = _projected(verts, cams)
    for cull in (False, True):
        whole, facing = rt._visibility(scr, w, faces, (80, 64), cull)
        assert (whole == faces.shape[0] - 1).sum() > 100 and (whole >= 0).float().mean() > 0.3
        for chunk in (1000, 3):
            monkeypatch.setattr(rt, "CHUNK_CANDIDATES", chunk)
            counts = torch.tensor([9, 0, 2500, 4, 4, 0]) if chunk == 3 else None
            if counts is not None:  # the boundaries themselves: a mark inside the big triangle
                chunks = rt._candidate_chunks(counts, torch.cumsum(counts, 0))
                assert [c[:2] for c in chunks] == [(0, 2), (2, 3), (3, 4), (4, 6)]  # empty ones ride along
                assert sum(c[3] for c in chunks) == 2517 and [c[2] for c in chunks] == [0, 9, 2509, 2513]
            chunked, facing_chunked = rt._visibility(scr, w, faces, (80, 64), cull)
            assert torch.equal(chunked, whole) and torch.equal(facing_chunked, facing)
        monkeypatch.setattr(rt, "CHUNK_CANDIDATES", 1 << 21)


def test_a_render_and_its_backward_read_back_two_values(dmtet_heads):
    """The visibility total and the anti-aliasing sizes: nothing else is read back, whatever the
    mesh size (one chunk here); the edge table given or built inside makes no difference."""
    verts, faces = dmtet_heads("noisy")
    verts = verts.clone().requires_grad_(True)
    cams = orbit_cameras([0.0, 90.0], [10.0, 0.0], resolution=(96, 96), radius=0.6)
    counter = SyncCounter().install()
    for topology in (None, mesh_topology(faces)):
        counter.reset()
        with counter.counting():
            out = render(verts, faces, cams, passes=("mask", "shaded"), topology=topology,
                         lights=sample_lights(2, seed=0))
            out["shaded"].sum().backward()
        assert sum(counter.read_backs.values()) == 2, counter.read_backs
        assert verts.grad.abs().sum() > 0
