"""UV unwrapping of the canonical head with xatlas, once per head.

Marching-tets surfaces are staircased at the scale of a grid cell: neighbouring triangles tilt by
tens of degrees even on a smooth head, and xatlas, which grows charts while normals agree, makes
well over a thousand charts on them (1781 on a clean grid-64 head; see docs/texture.md). The
charts are therefore computed on a Taubin-smoothed copy of the positions: same vertices, same
faces, so the UVs apply unchanged to the real mesh, while the chart boundaries follow the head's
shape instead of the grid. Smoothing does not shrink the copy much (Taubin's lambda/mu pair) and
the copy is never returned.

numpy, scipy and xatlas only (no torch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import EngineError

# Smoothing the charting copy: 10 Taubin iterations suffice at ~48k faces (grid 64: 1781 -> 21
# charts); finer extractions need more (grid 96, 109k faces: 10 -> 228 charts, 40 -> 20), so the
# default grows with the face count as measured, capped.
BASE_SMOOTH_ITERATIONS, BASE_SMOOTH_FACES, SMOOTH_GROWTH, MAX_SMOOTH_ITERATIONS = 10, 48_000, 1.7, 150
DEFAULT_PACK_RESOLUTION = 1024
DEFAULT_PADDING = 2
# More charts than this (and than NOISY_CHARTS_PER_1K_FACES per thousand faces) means a noisy or
# too finely staircased surface: clean heads up to ~100k faces gave 0.2-2 charts per thousand
# faces, noisy ones 26-30, a clean grid-128 head (193k faces) 8.9 even with 107 iterations.
# Smoothing the mesh does not fix a noisy one, smoothing the SDF before the final extraction does
# (docs/texture.md); for a very fine one, a coarser or decimated canonical mesh.
NOISY_CHARTS = 200
NOISY_CHARTS_PER_1K_FACES = 5


class UnwrapError(EngineError):
    code = "unwrap_failed"


@dataclass
class UVLayout:
    """A UV atlas of one mesh.

    uv: float32 [Vt, 2] in [0, 1] (u right, v up); uv_faces: int32 [F, 3] into ``uv``, one row
    per mesh face, same order; vmapping: int32 [Vt], the mesh vertex each UV vertex belongs to
    (a mesh vertex on a seam has several UV vertices). stats: charts, seconds, utilisation.
    """

    uv: np.ndarray
    uv_faces: np.ndarray
    vmapping: np.ndarray
    stats: dict = field(default_factory=dict)

    def corner_uvs(self) -> np.ndarray:
        """float32 [F, 3, 2]: the UV of each face corner (head.npz's ``uvs``)."""
        return self.uv[self.uv_faces].astype(np.float32)

    def torch_uv(self, device=None):
        """(uv float32 [Vt, 2], uv_faces int64 [F, 3]) as torch tensors, for ``engine.render.render``."""
        import torch

        return (torch.as_tensor(self.uv, dtype=torch.float32, device=device),
                torch.as_tensor(self.uv_faces.astype(np.int64), device=device))

    @staticmethod
    def from_corner_uvs(faces: np.ndarray, corner_uvs: np.ndarray) -> "UVLayout":
        """Rebuild a layout from per-corner UVs (head.npz): one UV vertex per distinct (vertex, uv)."""
        faces = np.asarray(faces, dtype=np.int64)
        corners = np.asarray(corner_uvs, dtype=np.float32).reshape(-1, 2)
        keys = np.concatenate([faces.reshape(-1, 1).astype(np.float64), corners.astype(np.float64)], axis=1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        return UVLayout(uv=unique[:, 1:].astype(np.float32), uv_faces=inverse.reshape(-1, 3).astype(np.int32),
                        vmapping=unique[:, 0].astype(np.int32))


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int,
                  lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin smoothing (umbrella operator, a shrinking then an inflating step per iteration)."""
    import scipy.sparse as sp

    v = np.asarray(vertices, dtype=np.float64)
    if iterations <= 0:
        return v
    f = np.asarray(faces, dtype=np.int64)
    n = len(v)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2], f[:, 1], f[:, 2], f[:, 0]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0], f[:, 0], f[:, 1], f[:, 2]])
    adjacency = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0  # an edge shared by two faces counts once
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    mean = sp.diags(1.0 / np.maximum(degree, 1.0)) @ adjacency
    for _ in range(iterations):
        v = v + lam * (mean @ v - v)
        v = v + mu * (mean @ v - v)
    return v


def default_smooth_iterations(face_count: int) -> int:
    """Taubin iterations for charting a marching-tets mesh of ``face_count`` faces (see above)."""
    grown = BASE_SMOOTH_ITERATIONS * (max(face_count, 1) / BASE_SMOOTH_FACES) ** SMOOTH_GROWTH
    return int(min(max(round(grown), BASE_SMOOTH_ITERATIONS), MAX_SMOOTH_ITERATIONS))


def unwrap_mesh(vertices, faces, *, smooth_iterations: int | None = None,
                pack_resolution: int = DEFAULT_PACK_RESOLUTION, padding: int = DEFAULT_PADDING) -> UVLayout:
    """Unwrap a closed triangle mesh into one UV atlas (see the module docstring).

    vertices [V, 3], faces [F, 3] (numpy or torch; copied to numpy). ``pack_resolution`` and
    ``padding`` (texels) set how far apart xatlas packs the charts: padding at the final texture
    size keeps bilinear lookups of one chart from reading its neighbour. ``smooth_iterations``:
    Taubin iterations on the charting copy (None: :func:`default_smooth_iterations`; 0: chart the
    mesh as it is).
    """
    import xatlas

    v = _as_numpy(vertices, np.float64, "vertices")
    f = _as_numpy(faces, np.int64, "faces")
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise UnwrapError(f"unwrap needs vertices [V, 3] and faces [F>0, 3], got {list(v.shape)} and {list(f.shape)}",
                          hint="pass the canonical mesh after extraction (a non-empty surface)")
    if f.min() < 0 or f.max() >= len(v):
        raise UnwrapError(f"face indices outside 0..{len(v) - 1}", hint="faces must index the vertices given")
    if not np.isfinite(v).all():
        raise UnwrapError("vertices contain NaN or inf", hint="the geometry stage diverged; check its loss")
    if smooth_iterations is None:
        smooth_iterations = default_smooth_iterations(len(f))
    start = time.perf_counter()
    charting = taubin_smooth(v, f, smooth_iterations).astype(np.float32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(charting, f.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(pack_resolution)
    pack.padding = int(padding)
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, indices, uvs = atlas[0]
    seconds = time.perf_counter() - start
    if indices.shape != f.shape:
        raise UnwrapError(f"xatlas returned {indices.shape[0]} faces for {f.shape[0]}",
                          hint="the mesh may have degenerate faces; clean it (largest component) first")
    uvs = np.clip(uvs.astype(np.float32), 0.0, 1.0)
    stats = {"charts": int(atlas.chart_count), "seconds": round(seconds, 3), "utilization": float(atlas.utilization),
             "atlas_size": [int(atlas.width), int(atlas.height)], "smooth_iterations": int(smooth_iterations),
             "faces": int(len(f)), "uv_vertices": int(len(uvs)), "warnings": []}
    if stats["charts"] > max(NOISY_CHARTS, NOISY_CHARTS_PER_1K_FACES * len(f) / 1000):
        stats["warnings"].append(
            f"the UV atlas has {stats['charts']} charts for {len(f)} faces (a clean head gives tens), so the "
            "texture will have many seams: the surface is noisy or very finely staircased at the grid scale. "
            "Smooth the SDF before the final extraction (a Gaussian of one grid cell took a noisy grid-64 head "
            "from 1793 charts to 12), or unwrap a coarser or decimated canonical mesh (up to ~100k faces)")
    return UVLayout(uv=uvs, uv_faces=indices.astype(np.int32), vmapping=vmapping.astype(np.int32), stats=stats)


def _as_numpy(array, dtype, name: str) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise UnwrapError(f"{name} is not a numeric array ({exc})") from None
