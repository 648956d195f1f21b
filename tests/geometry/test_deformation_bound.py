"""DMTet's grid deformation cannot turn a tetrahedron inside out.

The bound (sdf_field.MAX_SAFE_DEFORMATION, derived there) is half the minimal width of the grid's
Kuhn tets, h / (2 sqrt 3) = 0.2887 cell, less a margin. Checked here: the width numerically, the
bound's tightness (just above it one tet flattens), and that no raw field output -- random,
saturated at huge values, or optimised to invert tets -- makes a tet with signed volume <= 0.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import EngineError
from engine.geometry.fit import DMTet
from engine.geometry.sdf_field import MAX_SAFE_DEFORMATION, HashGridSDF, VertexSDF, bounded_deformation
from engine.geometry.tetgrid import _kuhn_cube_tets, make_tet_grid

HALF_WIDTH = 1.0 / (2.0 * math.sqrt(3.0))  # cells


def signed_volumes(verts: torch.Tensor, tets: torch.Tensor) -> torch.Tensor:
    v = verts.double()[tets.long()]
    return torch.linalg.det(torch.stack([v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 3] - v[:, 0]], dim=1)) / 6


def kuhn_tets() -> list[torch.Tensor]:
    """The 6 tets of the unit cube as [4, 3] corner coordinates."""
    return [torch.tensor([[(c >> k) & 1 for k in range(3)] for c in tet], dtype=torch.float64)
            for tet in _kuhn_cube_tets()]


def test_minimal_width_of_every_kuhn_tet_is_one_over_root_three():
    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(200_000, 3, generator=gen, dtype=torch.float64), dim=1)
    for corners in kuhn_tets():
        # Candidates: face normals (altitudes) and cross products of opposite edges.
        cand = []
        for skip in range(4):
            a, b, c = corners[[k for k in range(4) if k != skip]]
            cand.append(torch.linalg.cross(b - a, c - a))
        for (i, j), (k, l) in (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))):
            cand.append(torch.linalg.cross(corners[j] - corners[i], corners[l] - corners[k]))
        cand = torch.nn.functional.normalize(torch.stack(cand), dim=1)
        width = lambda d: (corners @ d.T).amax(0) - (corners @ d.T).amin(0)  # noqa: E731
        exact = float(width(cand).min())
        sampled = float(width(dirs).min())
        assert exact == pytest.approx(1 / math.sqrt(3), abs=1e-12)
        assert exact <= sampled < exact + 2e-3  # no direction is narrower than the candidates
    assert MAX_SAFE_DEFORMATION < HALF_WIDTH


def test_the_bound_is_tight_a_move_just_above_it_flattens_a_tet():
    grid = make_tet_grid(3, size=0.3)
    h = grid.cell_size
    tet = grid.tets[0].long()  # first cube, first Kuhn tet: 000, 100, 110, 111 in some order
    p = grid.vertices.double()[tet]
    # Pair the opposite edges whose distance is the width, push them toward each other.
    pairs = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
    best = None
    for (i, j), (k, l) in pairs:
        n = torch.nn.functional.normalize(torch.linalg.cross(p[j] - p[i], p[l] - p[k]), dim=0)
        gap = float((p[k] - p[i]) @ n)
        if best is None or abs(gap) < abs(best[0]):
            best = (gap, n, (i, j), (k, l))
    gap, n, first, second = best
    assert abs(gap) == pytest.approx(h / math.sqrt(3), rel=1e-6)
    for factor, positive in ((1.01, False), (0.99, True)):
        d = torch.zeros(grid.vertices.shape[0], 3, dtype=torch.float64)
        step = factor * HALF_WIDTH * h * math.copysign(1.0, gap) * n
        d[tet[list(first)]] = step
        d[tet[list(second)]] = -step
        vol = float(signed_volumes(grid.vertices.double() + d, grid.tets[:1])[0])
        assert (vol > 0) == positive, (factor, vol)
    # The old per-axis tanh at 0.35 cell allowed this move (0.29 cell < 0.35 per axis).
    assert 1.01 * HALF_WIDTH * n.abs().max() < 0.35


def _attack(grid, bound_cells: float, steps: int = 150, seed: int = 0) -> int:
    """Optimise raw per-vertex outputs to make some tet's volume as negative as possible; return
    the number of tets with signed volume <= 0 at the end."""
    gen = torch.Generator().manual_seed(seed)
    raw = (torch.randn(grid.vertices.shape[0], 3, generator=gen) * 3).requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=0.3)
    vol_scale = grid.cell_size**3 / 6
    for _ in range(steps):
        verts = grid.vertices + bounded_deformation(raw, bound_cells * grid.cell_size)
        vol = signed_volumes(verts, grid.tets) / vol_scale
        loss = -torch.logsumexp(-vol / 0.05, 0) * 0.05  # a soft minimum over all tets
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        verts = grid.vertices + bounded_deformation(raw, bound_cells * grid.cell_size)
        return int((signed_volumes(verts, grid.tets) <= 0).sum())


def test_an_optimised_attack_inverts_tets_above_the_width_bound_and_none_below():
    grid = make_tet_grid(3)
    assert _attack(grid, 0.30) > 0  # the attack works: 0.30 cell > 0.2887
    assert _attack(grid, MAX_SAFE_DEFORMATION) == 0


@pytest.mark.parametrize("pattern", ["gaussian", "huge_corners", "flattening", "optimised"])
def test_extreme_raw_outputs_never_invert_a_tet(pattern):
    grid = make_tet_grid(8)
    n = grid.vertices.shape[0]
    gen = torch.Generator().manual_seed(1)
    field = VertexSDF(n, max_deformation=MAX_SAFE_DEFORMATION * grid.cell_size)
    DMTet(grid, field)  # accepted: at the safe bound
    if pattern == "optimised":
        assert _attack(grid, MAX_SAFE_DEFORMATION, steps=100, seed=2) == 0
        return
    with torch.no_grad():
        if pattern == "gaussian":
            raw = torch.randn(n, 3, generator=gen) * 1e3
        elif pattern == "huge_corners":  # per axis +-1e6: a per-axis tanh would move sqrt(3) x the bound
            raw = torch.where(torch.rand(n, 3, generator=gen) < 0.5, -1e6, 1e6)
        else:  # every vertex pushed along (1, -1, 1) by the parity of its projection: flattens Kuhn tets
            idx = torch.round((grid.vertices - grid.vertices.min(0).values) / grid.cell_size).long()
            parity = ((idx[:, 0] - idx[:, 1] + idx[:, 2]) % 2).float() * 2 - 1
            raw = parity[:, None] * torch.tensor([1.0, -1.0, 1.0]) * 1e4
        field.raw_deformation.copy_(raw)
    _, deform = field.sdf_and_deformation(grid.vertices)
    lengths = deform.norm(dim=-1)
    assert lengths.max() <= MAX_SAFE_DEFORMATION * grid.cell_size * (1 + 1e-6)
    assert lengths.min() > 0.99 * MAX_SAFE_DEFORMATION * grid.cell_size  # really saturated
    assert int((signed_volumes(grid.vertices + deform, grid.tets) <= 0).sum()) == 0


def test_hash_grid_field_deformation_is_bounded_in_length_at_saturation():
    grid = make_tet_grid(8)
    field = HashGridSDF(max_deformation=MAX_SAFE_DEFORMATION * grid.cell_size, n_levels=2,
                        log2_table_size=10, finest_resolution=16)
    with torch.no_grad():
        for p in field.mlp.parameters():
            p.normal_(0.0, 1e3)  # outputs of order 1e3..1e6: tanh fully saturated
    _, deform = field.sdf_and_deformation(grid.vertices)
    assert deform.norm(dim=-1).max() <= MAX_SAFE_DEFORMATION * grid.cell_size * (1 + 1e-6)
    assert deform.norm(dim=-1).median() > 0.99 * MAX_SAFE_DEFORMATION * grid.cell_size
    assert int((signed_volumes(grid.vertices + deform, grid.tets) <= 0).sum()) == 0


def test_bounded_deformation_keeps_direction_and_is_smooth_at_zero():
    raw = torch.tensor([[0.0, 0.0, 0.0], [3.0, -4.0, 0.0], [1e-3, 0.0, 0.0]], requires_grad=True)
    d = bounded_deformation(raw, 2.0)
    assert torch.equal(d[0], torch.zeros(3))
    assert torch.allclose(d[1], torch.tensor([0.6, -0.8, 0.0]) * 2.0 * math.tanh(5.0))
    assert torch.allclose(d[2], torch.tensor([2e-3, 0.0, 0.0]), rtol=1e-5)
    d.sum().backward()
    assert torch.isfinite(raw.grad).all()
    assert torch.allclose(raw.grad[0], torch.full((3,), 2.0))  # identity x bound at the origin


def test_dmtet_refuses_a_deformation_bound_that_can_invert_tets():
    grid = make_tet_grid(16)
    for kind in ("vertex", "hash"):
        bound = 0.3 * grid.cell_size
        field = (VertexSDF(grid.vertices.shape[0], max_deformation=bound) if kind == "vertex"
                 else HashGridSDF(max_deformation=bound, n_levels=2, log2_table_size=10))
        with pytest.raises(EngineError) as info:
            DMTet(grid, field)
        err = info.value
        assert err.code == "deformation_unsafe"
        assert "0.300 grid cells" in err.message and f"at most {MAX_SAFE_DEFORMATION} cells" in err.message
        assert "inside out" in err.message and str(MAX_SAFE_DEFORMATION) in err.hint
    DMTet(grid, VertexSDF(grid.vertices.shape[0], max_deformation=MAX_SAFE_DEFORMATION * grid.cell_size))
    DMTet(grid, VertexSDF(grid.vertices.shape[0]))  # no deformation at all
