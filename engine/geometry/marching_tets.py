"""Differentiable marching tetrahedra.

Inside is ``sdf < 0``. Each grid edge whose ends have different signs gets exactly one surface
vertex (edges are deduplicated across tets by a 64-bit key), placed at the linear zero crossing

    p = (p_a * s_b - p_b * s_a) / (s_b - s_a)

which is differentiable w.r.t. the SDF values and the (deformed) grid vertex positions. Because
the grid is conforming and every crossing edge has a single vertex, the surface is closed and
manifold. The triangle table is derived here from first principles (see ``_triangle_table``)
and every triangle is wound counter-clockwise seen from outside, so normals point outward and
the signed volume is positive -- provided the tets are positively oriented (``tetgrid`` ensures
it) and the deformation does not invert them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The 6 edges of a tet as pairs of local vertex indices.
TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _triangle_table() -> tuple[torch.Tensor, torch.Tensor]:
    """For each of the 16 inside/outside cases: up to 2 triangles as local edge indices, and their count.

    Derived on a reference positive tet with crossings at edge midpoints: a triangle's winding
    relative to the inside vertex cannot change while the crossing moves along its edge (it would
    have to become degenerate), so the orientation found here holds for every positive tet.
    """
    ref = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    edge_id = {frozenset(e): i for i, e in enumerate(TET_EDGES)}
    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for case in range(16):
        inside = [v for v in range(4) if (case >> v) & 1]
        outside = [v for v in range(4) if not (case >> v) & 1]
        if len(inside) in (0, 4):
            continue
        if len(inside) == 1 or len(outside) == 1:
            lone, rest = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            polys = [[edge_id[frozenset((lone, r))] for r in rest]]
        else:
            (a, b), (c, d) = inside, outside
            quad = [edge_id[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c))]  # cyclic order
            polys = [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
        c_in = ref[inside].mean(0)
        c_out = ref[outside].mean(0)
        for k, tri in enumerate(polys):
            pts = torch.stack([ref[list(TET_EDGES[e])].mean(0) for e in tri])
            normal = torch.linalg.cross(pts[1] - pts[0], pts[2] - pts[0])
            if torch.dot(normal, c_out - c_in) < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[case, k] = torch.tensor(tri)
        count[case] = len(polys)
    return table, count


_TABLE, _COUNT = _triangle_table()
_DEVICE_TABLES: dict = {}


def _tables(device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(triangle table, triangle counts, tet edges, case bit values) on ``device``, copied there
    once (a copy from the host each call would wait for a GPU's queue)."""
    key = str(torch.device(device))
    if key not in _DEVICE_TABLES:
        _DEVICE_TABLES[key] = tuple(t.to(device) for t in (_TABLE, _COUNT, torch.tensor(TET_EDGES),
                                                           torch.tensor([1, 2, 4, 8])))
    return _DEVICE_TABLES[key]


@dataclass
class MarchingTetsResult:
    """The extracted mesh and what the SDF regularisers need.

    verts [M,3] (differentiable), faces [F,3] int64, edges [M,2] int64: the grid vertex pair
    (lower index first) whose sign change made each surface vertex -- the SDF sign regulariser
    works on exactly these edges.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    edges: torch.Tensor


def extract_surface(grid, sdf: torch.Tensor, deformation: torch.Tensor | None = None,
                    topology: MarchingTetsResult | None = None) -> MarchingTetsResult:
    """Marching tetrahedra on a :class:`~engine.geometry.tetgrid.TetGrid`, visiting only crossing cubes.

    ``deformation`` [V,3] (metres) is added to the grid vertices (DMTet); keep every vector shorter
    than ``sdf_field.MAX_SAFE_DEFORMATION`` cells so no tet can invert (``DMTet`` enforces it). Vertices on the box faces are always treated as
    outside (their SDF is clamped to >= 0), so the surface is closed even where the field
    reaches the edge of the grid. Otherwise the same as ``marching_tetrahedra(grid.vertices,
    grid.tets, sdf)``.

    ``topology``: an earlier extraction whose SDF had the same signs (e.g. a no-grad one); its faces
    and crossing edges are reused and only the vertices are placed, with gradients, from ``sdf``
    and ``deformation`` (the same result, without finding the crossings again).
    """
    if sdf.dim() == 2 and sdf.shape[1] == 1:
        sdf = sdf[:, 0]
    sdf = torch.where(grid.boundary, sdf.clamp_min(0.0), sdf)
    verts = grid.vertices if deformation is None else grid.vertices + deformation
    if topology is not None:
        return MarchingTetsResult(verts=_place_vertices(verts, sdf, topology.edges, guarded=True),
                                  faces=topology.faces, edges=topology.edges)
    with torch.no_grad():
        candidates = grid.crossing_tets(sdf < 0)
    return marching_tetrahedra(verts, candidates, sdf)


def marching_tetrahedra(
    grid_verts: torch.Tensor, tets: torch.Tensor, sdf: torch.Tensor
) -> MarchingTetsResult:
    """Extract the zero level set of ``sdf`` [V] on the tet mesh (``grid_verts`` [V,3], ``tets`` [T,4]).

    ``grid_verts`` may include a deformation; gradients flow to it and to ``sdf``.
    Returns an empty mesh (0 vertices, 0 faces) when no tet crosses the surface.
    """
    if sdf.dim() == 2 and sdf.shape[1] == 1:
        sdf = sdf[:, 0]
    if sdf.shape[0] != grid_verts.shape[0]:
        raise ValueError(f"sdf has {sdf.shape[0]} values but the grid has {grid_verts.shape[0]} vertices")
    device = grid_verts.device
    n_verts = grid_verts.shape[0]
    with torch.no_grad():
        table_all, count_all, edge_local, bit_values = _tables(device)
        occ = sdf < 0
        occ_t = occ[tets]  # [T,4]
        n_in = occ_t.sum(-1)
        valid = (n_in > 0) & (n_in < 4)
        # Each mask is turned into indices once (a data-dependent size: one host sync on a GPU),
        # then used for every selection, as boolean indexing would do once per selection.
        valid_idx = torch.nonzero(valid).squeeze(1)
        vt = tets.index_select(0, valid_idx).long()  # only tets that cross the surface
        occ_v = occ_t.index_select(0, valid_idx)
        case = (occ_v.long() * bit_values).sum(-1)

        ends = vt[:, edge_local]  # [Tv,6,2]
        lo = torch.minimum(ends[..., 0], ends[..., 1])
        hi = torch.maximum(ends[..., 0], ends[..., 1])
        crossing = torch.nonzero((occ[lo] != occ[hi]).reshape(-1)).squeeze(1)
        key = lo * n_verts + hi
        uniq, inverse = torch.unique(key.reshape(-1).index_select(0, crossing), return_inverse=True)
        surf_id = torch.full((key.numel(),), -1, dtype=torch.long, device=device)
        surf_id = surf_id.index_put_((crossing,), inverse).reshape(key.shape)
        edges = torch.stack([uniq // n_verts, uniq % n_verts], dim=-1)  # [M,2]

        table = table_all[case]  # [Tv,2,3]
        count = count_all[case]
        faces1 = torch.gather(surf_id, 1, table[:, 0])  # [Tv,3]
        two = torch.nonzero(count == 2).squeeze(1)
        faces2 = torch.gather(surf_id.index_select(0, two), 1, table.index_select(0, two)[:, 1])
        faces = torch.cat([faces1, faces2], dim=0)

    return MarchingTetsResult(verts=_place_vertices(grid_verts, sdf, edges), faces=faces, edges=edges)


def _place_vertices(grid_verts: torch.Tensor, sdf: torch.Tensor, edges: torch.Tensor, *,
                    guarded: bool = False) -> torch.Tensor:
    """The linear zero crossing on each edge [M, 2]: differentiable w.r.t. sdf and the positions.

    ``guarded``: the edges came from another evaluation of the field (``topology``). On a GPU that
    one may differ in the last bit (another batch size, another kernel), so an end within rounding
    of zero can have the other sign here: the formula would then place the vertex off its edge, or
    divide by zero. Such an edge gets the vertex at its end nearer zero, where the crossing is to
    within rounding; every consistent edge gets the very same value as unguarded (no read-back)."""
    s = sdf[edges]  # [M,2]
    p = grid_verts[edges]  # [M,2,3]
    s_a, s_b = s[:, 0:1], s[:, 1:2]
    if not guarded:
        return (p[:, 0] * s_b - p[:, 1] * s_a) / (s_b - s_a)
    crossing = (s_a < 0) != (s_b < 0)  # the extraction's own test (occupancy is sdf < 0)
    placed = (p[:, 0] * s_b - p[:, 1] * s_a) / torch.where(crossing, s_b - s_a, torch.ones_like(s_a))
    nearer_end = torch.where(s_a.abs() <= s_b.abs(), p[:, 0], p[:, 1])
    return torch.where(crossing, placed, nearer_end)
