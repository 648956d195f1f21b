"""The project's own tetrahedral grid: a regular cube grid, each cube split into 6 tetrahedra.

Every cube is split the same way (the Kuhn/Freudenthal split along its main diagonal), so the
split of each shared square face is the same from both sides: the grid is conforming, which is
what makes marching tetrahedra produce a closed surface. All tetrahedra are positively oriented
(det(v1 - v0, v2 - v0, v3 - v0) > 0); the marching-tets triangle table relies on that.

Memory (vertices float32, tets int32): resolution N has (N+1)^3 vertices and 6 N^3 tets, so
N=128: 2.1 M vertices (25 MB) + 12.6 M tets (201 MB); N=256: 16.9 M vertices (203 MB) +
100.7 M tets (1.61 GB). Tets are kept as int32 to halve that; consumers widen on use.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..result_format import HEAD_BOX_SIZE

# Head-sized box: a 0.32 m cube around the head centre (head ~0.23 m tall, neck below).
DEFAULT_CENTER = (0.0, 0.0, 0.0)
DEFAULT_SIZE = HEAD_BOX_SIZE


@dataclass
class TetGrid:
    """Vertices [V,3] float32 (metres), tets [T,4] int32, the box, and the resolution.

    ``boundary`` [V] bool marks the vertices on the faces of the box (computed when omitted).
    """

    vertices: torch.Tensor
    tets: torch.Tensor
    resolution: int
    center: tuple[float, float, float]
    size: float
    boundary: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.boundary is None:
            m = self.resolution + 1
            idx = torch.arange(m, device=self.vertices.device)
            edge = (idx == 0) | (idx == m - 1)
            self.boundary = (edge[:, None, None] | edge[None, :, None] | edge[None, None, :]).reshape(-1)

    @property
    def cell_size(self) -> float:
        return self.size / self.resolution

    def to(self, device) -> "TetGrid":
        return TetGrid(
            self.vertices.to(device),
            self.tets.to(device),
            self.resolution,
            self.center,
            self.size,
            self.boundary.to(device),
        )

    def crossing_tets(self, inside: torch.Tensor) -> torch.Tensor:
        """The tets [K,4] of the cubes whose 8 corners are not all on one side (``inside`` [V] bool).

        A tet can only cross the surface inside a crossing cube, and testing 8 corners per cube on
        the regular layout is far cheaper than gathering 4 values for every one of the 6 N^3 tets.
        Relies on the layout made by :func:`make_tet_grid` (6 consecutive tets per cube, x-major).
        """
        n, m = self.resolution, self.resolution + 1
        occ = inside.reshape(m, m, m).to(torch.uint8)
        lo = occ[:-1, :-1, :-1].clone()
        hi = lo.clone()
        for dx, dy, dz in itertools.product((0, 1), repeat=3):
            corner = occ[dx : dx + n, dy : dy + n, dz : dz + n]
            lo = torch.minimum(lo, corner)
            hi = torch.maximum(hi, corner)
        cubes = torch.nonzero((hi != lo).reshape(-1))[:, 0]
        ids = (cubes[:, None] * 6 + torch.arange(6, device=cubes.device)).reshape(-1)
        return self.tets[ids]

    def nbytes(self) -> int:
        return (
            self.vertices.numel() * self.vertices.element_size()
            + self.tets.numel() * self.tets.element_size()
        )


def _kuhn_cube_tets() -> list[tuple[int, int, int, int]]:
    """The 6 tets of a unit cube as corner codes (bit 0 = x, bit 1 = y, bit 2 = z), positively oriented.

    Each tet walks from corner 000 to 111 adding one axis at a time; the axis order is a permutation.
    """
    tets = []
    for perm in itertools.permutations(range(3)):
        code, path = 0, [0]
        for axis in perm:
            code |= 1 << axis
            path.append(code)
        corners = [
            torch.tensor([(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1], dtype=torch.float64) for c in path
        ]
        det = torch.linalg.det(
            torch.stack([corners[1] - corners[0], corners[2] - corners[0], corners[3] - corners[0]])
        )
        if det < 0:  # odd permutation: swap two vertices to make the orientation positive
            path[1], path[2] = path[2], path[1]
        tets.append(tuple(path))
    return tets


def make_tet_grid(
    resolution: int,
    *,
    center: tuple[float, float, float] = DEFAULT_CENTER,
    size: float = DEFAULT_SIZE,
    device=None,
) -> TetGrid:
    """A conforming tetrahedral grid of ``resolution`` cubes per side filling a cube of ``size`` metres."""
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"tet grid resolution must be a positive integer, got {resolution!r}")
    if size <= 0:
        raise ValueError(f"tet grid size must be positive (metres), got {size!r}")
    n = resolution
    m = n + 1
    lin = torch.linspace(-0.5 * size, 0.5 * size, m, dtype=torch.float32, device=device)
    gx, gy, gz = torch.meshgrid(lin, lin, lin, indexing="ij")
    verts = torch.stack([gx + center[0], gy + center[1], gz + center[2]], dim=-1).reshape(-1, 3)
    del gx, gy, gz

    # Index of the 000 corner of every cube; vertex index = (x * m + y) * m + z.
    c = torch.arange(n, dtype=torch.int32, device=device)
    base = ((c[:, None, None] * m + c[None, :, None]) * m + c[None, None, :]).reshape(-1)
    offsets = {code: ((code & 1) * m + ((code >> 1) & 1)) * m + ((code >> 2) & 1) for code in range(8)}
    cube_tets = _kuhn_cube_tets()
    tets = torch.empty((n**3, 6, 4), dtype=torch.int32, device=device)
    for t, corners in enumerate(cube_tets):
        for k, code in enumerate(corners):
            tets[:, t, k] = base + offsets[code]
    return TetGrid(verts, tets.reshape(-1, 4), resolution, tuple(float(x) for x in center), float(size))
