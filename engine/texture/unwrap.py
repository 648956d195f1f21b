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

DEFAULT_SMOOTH_ITERATIONS = 10
DEFAULT_PACK_RESOLUTION = 1024
DEFAULT_PADDING = 2


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


def unwrap_mesh(vertices, faces, *, smooth_iterations: int = DEFAULT_SMOOTH_ITERATIONS,
                pack_resolution: int = DEFAULT_PACK_RESOLUTION, padding: int = DEFAULT_PADDING) -> UVLayout:
    """Unwrap a closed triangle mesh into one UV atlas (see the module docstring).

    vertices [V, 3], faces [F, 3] (numpy or torch; copied to numpy). ``pack_resolution`` and
    ``padding`` (texels) set how far apart xatlas packs the charts: padding at the final texture
    size keeps bilinear lookups of one chart from reading its neighbour.
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
             "faces": int(len(f)), "uv_vertices": int(len(uvs))}
    return UVLayout(uv=uvs, uv_faces=indices.astype(np.int32), vmapping=vmapping.astype(np.int32), stats=stats)


def _as_numpy(array, dtype, name: str) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise UnwrapError(f"{name} is not a numeric array ({exc})") from None
