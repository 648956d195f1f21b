"""DMTet's fast path gives the surface of the plain, whole-grid, differentiable evaluation.

``DMTet.forward`` evaluates the hash-grid field at every grid vertex without gradients through
``HashGridSDF.sdf_on_grid`` (per-axis lattice tables instead of per-point corner arithmetic),
reuses the crossings it finds, and evaluates the field with gradients only on the crossing
edges' ends. Here, on the procedural head and after real SDS steps of the geometry stage, it is
compared with ``extract_surface(grid, *field.sdf_and_deformation(grid.vertices))``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.geometry.fit import DMTet, RegulariserWeights, geometry_regularisers
from engine.geometry.head_init import head_sdf, pretrain_field
from engine.geometry.marching_tets import extract_surface
from engine.geometry.sdf_field import HashGridSDF
from engine.geometry.tetgrid import make_tet_grid


def _head_field(resolution: int, seed: int = 0):
    torch.manual_seed(seed)
    grid = make_tet_grid(resolution)
    field = HashGridSDF(max_deformation=0.25 * grid.cell_size)
    pretrain_field(field, head_sdf, grid.vertices, steps=60, batch=4096, seed=seed)
    return grid, field


def _full_evaluation(grid, field):
    """The reference: the field with gradients at every grid vertex, one extraction."""
    sdf, deform = field.sdf_and_deformation(grid.vertices)
    return extract_surface(grid, sdf, deform), sdf


def _loss(result, sdf, resolution):
    """What the stage's gradient depends on: vertex positions (render, Laplacian, normals) and the
    SDF sign regulariser at the crossing edges."""
    weights = RegulariserWeights(laplacian=0.5, normal_consistency=0.05, sdf_sign=0.1)
    return (result.verts * torch.tensor([1.0, -2.0, 0.5])).sum() + geometry_regularisers(result, sdf, weights,
                                                                                        resolution)


def _compare(grid, field):
    field.zero_grad()
    fast, fast_sdf = DMTet(grid, field)()
    _loss(fast, fast_sdf, grid.resolution).backward()
    fast_grads = [p.grad.clone() for p in field.parameters()]
    field.zero_grad()
    full, full_sdf = _full_evaluation(grid, field)
    _loss(full, full_sdf, grid.resolution).backward()
    assert fast.faces.shape[0] > 1000
    assert torch.equal(fast.faces, full.faces) and torch.equal(fast.edges, full.edges)
    assert torch.equal(fast.verts, full.verts)  # bit for bit
    assert torch.equal(fast_sdf, full_sdf.detach())  # every grid value, for the regularisers
    for fast_grad, p in zip(fast_grads, field.parameters()):
        assert p.grad.abs().max() > 0
        # float32 summation order only: the band's backward adds fewer zero rows
        torch.testing.assert_close(fast_grad, p.grad, rtol=1e-4, atol=1e-6 * float(p.grad.abs().max()))


@pytest.mark.parametrize("resolution", [24, 31])
def test_whole_grid_pass_equals_the_generic_evaluation_bit_for_bit(resolution, monkeypatch):
    """The head field and the same field with every weight disturbed (hash collisions, steep
    features), in one slab and in slabs of a few hundred vertices; a grid that is not a product
    of axis values falls back to the generic evaluation."""
    grid, field = _head_field(resolution)
    for disturbed in (False, True):
        if disturbed:
            with torch.no_grad():
                for p in field.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        with torch.no_grad():
            expected = field.sdf_and_deformation(grid.vertices)[0]
        assert (expected < 0).any() and (expected > 0).any()
        for chunk in (1 << 18, 300):
            assert torch.equal(field.sdf_on_grid(grid, chunk_points=chunk), expected)
    bent = make_tet_grid(resolution)
    bent.vertices[5, 1] += 1e-3  # no longer a product: the per-axis tables would be wrong here
    with torch.no_grad():
        assert torch.equal(field.sdf_on_grid(bent), field.sdf_and_deformation(bent.vertices)[0])


def test_dmtet_on_the_head_initialisation_is_the_whole_grid_evaluation():
    grid, field = _head_field(32)
    _compare(grid, field)


def test_dmtet_after_real_sds_steps_is_the_whole_grid_evaluation(tiny_models_root):
    """Four steps of the geometry stage (tiny random prior: real SDS, regularisers, Adam), an
    expression step among them; after each, the fast path and the reference agree."""
    from engine.pipeline.geometry_stage import GeometryStage
    from engine.pipeline.presets import resolve_preset
    from engine.prior import load_prior

    prior = load_prior(tiny_models_root, device="cpu")
    settings = resolve_preset("test", {"grid": 28, "render_resolution": 48, "pretrain_steps": 60,
                                       "geometry_steps": 4, "sdf_sign": 0.1, "geometry_lr": 3e-3})
    stage = GeometryStage(settings, prior, np.random.default_rng(0).normal(size=512).astype(np.float32),
                          ["neutral", "smiling"], seed=2, device="cpu", normal_maps=False)
    stage.initialise()
    before = stage.dmtet.mesh()[0].clone()
    names = []
    for step in range(4):
        names.append(stage.step(step).expression)
        _compare(stage.grid, stage.field)
    assert "smiling" in names and not torch.equal(stage.dmtet.mesh()[0][:100], before[:100])


def test_reused_crossings_with_a_sign_flipped_by_rounding_stay_on_their_edges():
    # On a GPU the band's second evaluation may differ from the whole-grid pass in the last bit. An
    # end within rounding of zero then has the other sign: the vertex must stay on its edge, finite,
    # at the end nearer zero, with finite gradients; every other vertex is placed as before.
    grid, field = _head_field(24)
    sdf, deform = (t.detach() for t in field.sdf_and_deformation(grid.vertices))
    topology = extract_surface(grid, sdf, deform)
    edges = topology.edges
    flipped, equal = 0, 1
    a, b = edges[flipped]
    inside, outside = (a, b) if sdf[a] < 0 else (b, a)
    moved = sdf.clone()
    moved[inside] = 1e-7  # the inside end now reads just outside: both ends >= 0
    moved[edges[equal, 0]] = moved[edges[equal, 1]] = 0.0  # both ends exactly zero: the old division by 0
    moved.requires_grad_(True)
    result = extract_surface(grid, moved, deform, topology=topology)
    verts = result.verts
    assert torch.isfinite(verts).all()
    ends = grid.vertices[edges] + deform[edges]
    assert torch.equal(verts[flipped], ends[flipped, 0 if inside == a else 1])  # the end nearer zero
    assert torch.equal(verts[equal], ends[equal, 0])
    untouched = torch.ones(len(edges), dtype=torch.bool)
    untouched[[flipped, equal]] = False
    shared = (edges[:, None, :] == edges[[flipped, equal]].reshape(-1)[None, :, None]).any(-1).any(-1)
    keep = untouched & ~shared
    plain = extract_surface(grid, moved.detach(), deform, topology=None)  # its own crossings
    reference = {tuple(e): v for e, v in zip(plain.edges.tolist(), plain.verts.detach())}
    same = [torch.equal(verts[i].detach(), reference[tuple(edges[i].tolist())])
            for i in torch.nonzero(keep).squeeze(1).tolist() if tuple(edges[i].tolist()) in reference]
    assert len(same) > 0.9 * int(keep.sum()) and all(same)
    verts.sum().backward()
    assert torch.isfinite(moved.grad).all()
