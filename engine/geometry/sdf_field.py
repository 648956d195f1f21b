"""SDF fields for DMTet, behind one interface: ``sdf_and_deformation(points) -> (sdf [N], deform [N,3])``.

* :class:`HashGridSDF` - multi-resolution hash-grid encoding (plain torch: trilinear interpolation
  of learnt features at hashed cube corners, levels growing geometrically) + a small MLP that
  outputs the SDF and, optionally, a bounded grid deformation. Smooth and spatially coherent:
  the surface can travel many cells while fitting.
* :class:`VertexSDF` - one SDF value and one deformation per tet-grid vertex (the original DMTet
  parameterisation). Fastest on CPU, but only vertices next to the surface get gradients.

Deformations are bounded in *length* (:func:`bounded_deformation`: the raw 3-vector keeps its
direction, its length becomes ``max_deformation * tanh(|raw|)``), not per axis: a per-axis
``tanh`` lets a vertex move sqrt(3) times the bound along a diagonal. ``DMTet`` refuses a bound
above ``MAX_SAFE_DEFORMATION`` grid cells (:func:`check_max_deformation`), where tets could
invert and marching tets' outward winding (which needs positive tets) would break.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import EngineError

# Large primes for the spatial hash (the usual choice: 1 for x keeps the finest level coherent in x).
_PRIMES = (1, 2654435761, 805459861)
# Why 0.28 of a cell. Every vertex moving by less than half the minimal width of every tet
# keeps every tet positive: if moved vertices q_i = p_i + d_i with |d_i| < w/2 were coplanar, all
# four p_i would lie within w/2 of that plane, so the tet's width across it would be < w. Along
# the straight path t * d_i (t in [0, 1]) every intermediate tet obeys the same bound, so the
# signed volume (continuous in t, positive at t = 0) never reaches zero. The minimal width of a
# simplex is attained perpendicular to a face (an altitude) or to two opposite edges. For the
# grid's Kuhn tets (cube side h, path 000 -> 100 -> 110 -> 111 and its axis permutations) the
# altitudes are h and h/sqrt(2), the opposite-edge distances h, h/sqrt(2) and h/sqrt(3) (edges
# 000-110 and 100-111, direction (1, -1, 1)/sqrt(3)), so w = h/sqrt(3) and any displacement
# shorter than h/(2 sqrt(3)) = 0.2887 h is safe. The bound is tight: moving 000 and 110 by
# +w/2 along (1, -1, 1)/sqrt(3) and 100 and 111 by -w/2 flattens that tet. (The often quoted
# "half the smallest altitude", h/(2 sqrt(2)) = 0.354 h, misses the edge-edge case.) 0.28 keeps
# a margin for rounding, and for tanh saturating to exactly 1 in float32. Checked numerically
# in tests/geometry/test_deformation_bound.py.
MAX_SAFE_DEFORMATION = 0.28  # in grid cells
# Grid vertices per slab of HashGridSDF.sdf_on_grid: its int64 corner indices and weights take
# ~100 bytes a vertex per level, so ~25 MB at a time (whole-grid intermediates at grid 128 were
# ~1.6 GB, and cache-unfriendly).
GRID_CHUNK_POINTS = 1 << 18


def bounded_deformation(raw: torch.Tensor, max_length: float) -> torch.Tensor:
    """[N, 3] raw network/parameter output -> displacement of length max_length * tanh(|raw|).

    Keeps the direction; strictly shorter than ``max_length`` (up to float rounding), smooth,
    and the identity times ``max_length`` to first order at 0 (tanh(r)/r -> 1)."""
    r = (raw.square().sum(-1, keepdim=True) + 1e-24).sqrt()  # eps: no 0/0 and no NaN gradient at 0
    return raw * (max_length * torch.tanh(r) / r)


def check_max_deformation(max_deformation: float, cell_size: float) -> None:
    """Raise EngineError when a deformation bound (metres) exceeds MAX_SAFE_DEFORMATION cells."""
    cells = float(max_deformation) / float(cell_size)
    if not math.isfinite(cells) or cells < 0 or cells > MAX_SAFE_DEFORMATION * (1 + 1e-6):
        raise EngineError(
            f"DMTet deformation bound {max_deformation:.6g} m is {cells:.3f} grid cells "
            f"(cell {cell_size:.6g} m); at most {MAX_SAFE_DEFORMATION} cells is allowed: beyond "
            "0.289 cells (half the smallest width of the grid's tetrahedra) displaced vertices can "
            "turn tetrahedra inside out, and marching tetrahedra then makes inside-out triangles",
            code="deformation_unsafe",
            hint=f"use max_deformation <= {MAX_SAFE_DEFORMATION} * grid.cell_size "
            f"({MAX_SAFE_DEFORMATION * cell_size:.6g} m for this grid)",
        )


class HashGridEncoding(nn.Module):
    """Multi-resolution hash-grid encoding of points in an axis-aligned cube.

    Level ``l`` has resolution ``floor(base * growth**l)`` with ``growth`` chosen so the last level
    reaches ``finest_resolution``. A level whose dense grid fits in the table is indexed densely
    (no collisions); finer levels are hashed into ``2**log2_table_size`` entries.
    """

    def __init__(
        self,
        center=(0.0, 0.0, 0.0),
        size: float = 0.32,
        *,
        n_levels: int = 8,
        n_features: int = 2,
        log2_table_size: int = 15,
        base_resolution: int = 8,
        finest_resolution: int = 128,
    ):
        super().__init__()
        self.register_buffer("lo", torch.tensor(center, dtype=torch.float32) - 0.5 * size, persistent=False)
        self.size = float(size)
        self.n_levels, self.n_features = n_levels, n_features
        self.table_size = 2**log2_table_size
        growth = math.exp((math.log(finest_resolution) - math.log(base_resolution)) / max(n_levels - 1, 1))
        self.resolutions = [int(math.floor(base_resolution * growth**lvl + 1e-6)) for lvl in range(n_levels)]
        self.table = nn.Parameter(torch.empty(n_levels, self.table_size, n_features).uniform_(-1e-4, 1e-4))
        corners = torch.tensor(
            [[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.long
        )
        self.register_buffer("corners", corners, persistent=False)

    @property
    def out_dim(self) -> int:
        return self.n_levels * self.n_features

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        u = ((points - self.lo) / self.size).clamp(0.0, 1.0)  # [N,3] in the unit cube
        feats = []
        for lvl, res in enumerate(self.resolutions):
            pos = u * res
            i0 = pos.detach().floor().long().clamp(0, res - 1)
            frac = pos - i0  # gradient flows to the points through the weights
            c = i0[:, None, :] + self.corners[None]  # [N,8,3]
            if (res + 1) ** 3 <= self.table_size:
                idx = (c[..., 0] * (res + 1) + c[..., 1]) * (res + 1) + c[..., 2]
            else:
                idx = (c[..., 0] * _PRIMES[0]) ^ (c[..., 1] * _PRIMES[1]) ^ (c[..., 2] * _PRIMES[2])
                idx = idx & (self.table_size - 1)
            w = torch.where(self.corners[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(
                -1
            )  # [N,8]
            feats.append((self.table[lvl][idx] * w[..., None]).sum(1))
        return torch.cat(feats, dim=-1)

    def lattice_corners(self, axes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> list:
        """Per level, per axis: (corner index [n_a, 2] int64, corner weight [n_a, 2]) of the points
        on each axis (``axes``: x, y and z values of a regular grid of points; corner 0 is the lower
        lattice point, weight 1 - frac). The same arithmetic as :meth:`forward`, one axis at a time."""
        out = []
        for res in self.resolutions:
            per_axis = []
            for a, values in enumerate(axes):
                pos = ((values - self.lo[a]) / self.size).clamp(0.0, 1.0) * res
                i0 = pos.floor().long().clamp(0, res - 1)
                frac = pos - i0
                per_axis.append((torch.stack([i0, i0 + 1], dim=-1), torch.stack([1.0 - frac, frac], dim=-1)))
            out.append(per_axis)
        return out

    def forward_on_lattice(self, corners: list, slab: slice) -> torch.Tensor:
        """:meth:`forward` at the points of a regular grid, x-slab ``slab`` (x-major order: the rows
        ``slab.start * ny * nz`` onwards), from :meth:`lattice_corners`. Equal to ``forward`` at those
        points bit for bit: the corner indices are the same integers, each weight the same product
        (x·y)·z (what ``prod`` computes), the lookup and sum the same operations; only the [N, 8, 3]
        intermediates of ``forward`` are never built (the indices alone took a third of a full-grid
        evaluation)."""
        feats = []
        for lvl, (res, per_axis) in enumerate(zip(self.resolutions, corners)):
            (cx, wx), (cy, wy), (cz, wz) = per_axis
            cx, wx = cx[slab], wx[slab]
            bits = self.corners  # [8, 3] corner code bits, the order forward uses
            bx, by, bz = bits[:, 0], bits[:, 1], bits[:, 2]
            gx, gy, gz = cx[:, None, None, :].index_select(3, bx), cy[None, :, None, :].index_select(3, by), \
                cz[None, None, :, :].index_select(3, bz)  # [nx, 1, 1, 8], [1, ny, 1, 8], [1, 1, nz, 8]
            if (res + 1) ** 3 <= self.table_size:
                idx = (gx * (res + 1) + gy) * (res + 1) + gz
            else:
                idx = ((gx * _PRIMES[0]) ^ (gy * _PRIMES[1]) ^ (gz * _PRIMES[2])) & (self.table_size - 1)
            w = (wx[:, None, None, :].index_select(3, bx) * wy[None, :, None, :].index_select(3, by)) \
                * wz[None, None, :, :].index_select(3, bz)
            idx, w = idx.reshape(-1, 8), w.reshape(-1, 8)
            feats.append((self.table[lvl][idx] * w[..., None]).sum(1))
        return torch.cat(feats, dim=-1)


class HashGridSDF(nn.Module):
    """Hash-grid encoding + MLP -> SDF (metres) and an optional bounded deformation."""

    def __init__(
        self,
        center=(0.0, 0.0, 0.0),
        size: float = 0.32,
        *,
        hidden: int = 64,
        n_hidden_layers: int = 2,
        max_deformation: float = 0.0,
        **encoding_kwargs,
    ):
        super().__init__()
        self.encoding = HashGridEncoding(center, size, **encoding_kwargs)
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32), persistent=False)
        self.size = float(size)
        self.max_deformation = float(max_deformation)
        layers, width = [], 3 + self.encoding.out_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(width, hidden), nn.Softplus(beta=100)]
            width = hidden
        layers.append(nn.Linear(width, 4))
        self.mlp = nn.Sequential(*layers)

    def sdf_and_deformation(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (points - self.center) / (0.5 * self.size)  # raw position in [-1,1]: a smooth base
        out = self.mlp(torch.cat([x, self.encoding(points)], dim=-1))
        sdf = out[:, 0] * (0.5 * self.size)  # network works in box units, SDF in metres
        if self.max_deformation > 0:
            deform = bounded_deformation(out[:, 1:], self.max_deformation)
        else:
            deform = torch.zeros_like(points)
        return sdf, deform

    @torch.no_grad()
    def sdf_on_grid(self, grid, chunk_points: int = GRID_CHUNK_POINTS) -> torch.Tensor:
        """The SDF at every vertex of ``grid`` (a regular ``TetGrid``), without gradients: equal bit
        for bit to ``sdf_and_deformation(grid.vertices)[0]`` (tested), at a fraction of the time
        and memory. The grid is walked in x-slabs of about ``chunk_points`` vertices, each encoded by
        :meth:`HashGridEncoding.forward_on_lattice`; the deformation is not computed (a caller
        needs it only near the surface). Falls back to the generic evaluation for a grid whose
        vertices are not the product of one value list per axis."""
        points = grid.vertices
        axes = _grid_axes(grid)
        if axes is None:
            return self.sdf_and_deformation(points)[0]
        corners = self.encoding.lattice_corners(axes)
        nx, ny, nz = (len(a) for a in axes)
        per_x = ny * nz
        step = max(1, chunk_points // per_x)
        out = []
        for start in range(0, nx, step):
            stop = min(start + step, nx)
            rows = points[start * per_x:stop * per_x]
            x = (rows - self.center) / (0.5 * self.size)
            encoded = self.encoding.forward_on_lattice(corners, slice(start, stop))
            out.append(self.mlp(torch.cat([x, encoded], dim=-1))[:, 0] * (0.5 * self.size))
        return torch.cat(out)


def _grid_axes(grid):
    """(x values, y values, z values) of a grid's vertices when they are exactly their product in
    x-major order (``make_tet_grid``'s layout), else None. Checked once per grid and remembered."""
    cached = getattr(grid, "_axes", None)
    if cached is not None and cached[0] is grid.vertices:
        return cached[1]
    v = grid.vertices
    m = grid.resolution + 1
    axes = None
    if v.ndim == 2 and v.shape == (m**3, 3):
        g = v.reshape(m, m, m, 3)
        xs, ys, zs = g[:, 0, 0, 0].clone(), g[0, :, 0, 1].clone(), g[0, 0, :, 2].clone()
        product = (torch.equal(g[..., 0], xs[:, None, None].expand(m, m, m))
                   and torch.equal(g[..., 1], ys[None, :, None].expand(m, m, m))
                   and torch.equal(g[..., 2], zs[None, None, :].expand(m, m, m)))
        axes = (xs, ys, zs) if product else None
    try:
        grid._axes = (v, axes)
    except AttributeError:  # a frozen stand-in: check again next time
        pass
    return axes


class VertexSDF(nn.Module):
    """One SDF value and one deformation per tet-grid vertex (DMTet's own parameterisation)."""

    per_vertex = True  # evaluated only at the grid vertices, all at once

    def __init__(
        self, n_vertices: int, *, max_deformation: float = 0.0, init_sdf: torch.Tensor | None = None
    ):
        super().__init__()
        if init_sdf is not None and tuple(init_sdf.shape) != (n_vertices,):
            raise ValueError(f"init_sdf must hold one value per grid vertex ({n_vertices}), got {tuple(init_sdf.shape)}")
        self.sdf = nn.Parameter(init_sdf.clone().float() if init_sdf is not None else torch.zeros(n_vertices))
        self.raw_deformation = nn.Parameter(torch.zeros(n_vertices, 3))
        self.max_deformation = float(max_deformation)

    def sdf_and_deformation(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.shape[0] != self.sdf.shape[0]:
            raise ValueError(
                f"VertexSDF holds {self.sdf.shape[0]} grid vertices but was asked for {points.shape[0]} points: "
                "it can only be evaluated at the tet-grid vertices it was made for"
            )
        deform = bounded_deformation(self.raw_deformation, self.max_deformation)
        return self.sdf, deform
