"""Texture-space coverage and seam dilation.

A render looks a texel up bilinearly, so at a chart's border it also reads the texels just
outside the chart. Those texels belong to no triangle: if they hold black (or anything that was
never optimised) the seam shows as a dark crack in renders and in Blender, and more so once a
viewer's mipmaps or a resize average across the border. :func:`dilate` gives each empty texel the
colour of its nearest chart texel, so every lookup near a seam reads the chart's own colour.
"""

from __future__ import annotations

import numpy as np


def coverage_mask(layout, size: int, *, conservative: bool = True) -> np.ndarray:
    """bool [size, size]: texels a UV triangle touches (row 0 = top, v = 1).

    Texel centres inside a triangle are found with the render room's own rasteriser (UVs taken as
    screen positions). ``conservative`` also marks the texels under every triangle's edges: a
    sliver or a tiny chart may hold no texel centre at all, yet renders read the texels it lies in.
    """
    mask = face_index_map(layout, size) >= 0
    if conservative:
        mask |= _edge_texels(np.asarray(layout.uv, np.float64), np.asarray(layout.uv_faces, np.int64), int(size))
    return mask


def _edge_texels(uv: np.ndarray, uv_faces: np.ndarray, size: int) -> np.ndarray:
    """Texels under the UV edges, sampled at most half a texel apart (vertices included)."""
    edges = np.unique(np.sort(np.concatenate([uv_faces[:, [0, 1]], uv_faces[:, [1, 2]], uv_faces[:, [2, 0]]]), 1),
                      axis=0)
    a, b = uv[edges[:, 0]] * size, uv[edges[:, 1]] * size
    steps = np.ceil(np.linalg.norm(b - a, axis=1) * 2.0).astype(np.int64) + 1
    owner = np.repeat(np.arange(len(edges)), steps)
    t = (np.arange(owner.size) - np.repeat(np.cumsum(steps) - steps, steps)) / np.maximum(steps[owner] - 1, 1)
    points = a[owner] + (b[owner] - a[owner]) * t[:, None]
    cols = np.clip(np.floor(points[:, 0]).astype(np.int64), 0, size - 1)
    rows = np.clip(np.floor(size - points[:, 1]).astype(np.int64), 0, size - 1)  # v = 1 is row 0
    mask = np.zeros((size, size), bool)
    mask[rows, cols] = True
    return mask


def face_index_map(layout, size: int) -> np.ndarray:
    """int64 [size, size]: the face whose UV triangle covers each texel centre, -1 for none
    (where charts overlap, one of them)."""
    import torch

    from ..render.rasterize_torch import rasterize

    uv = torch.as_tensor(np.asarray(layout.uv, dtype=np.float32))
    uv_faces = torch.as_tensor(np.asarray(layout.uv_faces, dtype=np.int64))
    # Clip space: x = 2u - 1, y = 2v - 1 (v up, so v = 1 lands on row 0), z = 0, w = 1.
    clip = torch.cat([uv * 2.0 - 1.0, torch.zeros_like(uv[:, :1]), torch.ones_like(uv[:, :1])], dim=1)[None]
    with torch.no_grad():
        raster = rasterize(clip, uv_faces, (int(size), int(size)))
    return raster.face_id[0].numpy()


def dilate(image, mask, pixels: int = 8):
    """Grow the covered colours of ``image`` [H, W(, C)] into uncovered texels up to ``pixels`` away.

    mask [H, W] (bool): covered texels; they are never changed. Every uncovered texel within
    ``pixels`` rings (chessboard distance) of a covered one takes the colour of the nearest covered
    texel; farther ones keep their value. One distance transform, so a 4K map takes about a second
    whatever ``pixels`` is. numpy or torch in, same type out (torch: no gradient, for export).
    """
    from scipy.ndimage import distance_transform_cdt

    is_torch = hasattr(image, "detach")
    if is_torch:
        import torch

        device, dtype = image.device, image.dtype
        img = image.detach().cpu().numpy()
        m = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    else:
        img, m = np.asarray(image), np.asarray(mask)
    covered = m.astype(bool)
    if covered.shape != img.shape[:2]:
        raise ValueError(f"mask {covered.shape} does not match image {img.shape[:2]}")
    out = np.array(img, dtype=img.dtype if np.issubdtype(img.dtype, np.floating) else np.float32, copy=True)
    if covered.any() and not covered.all():
        distance, (rows, cols) = distance_transform_cdt(~covered, metric="chessboard", return_indices=True)
        fill = (~covered) & (distance <= int(pixels))
        out[fill] = out[rows[fill], cols[fill]]
    if is_torch:
        return torch.as_tensor(out, device=device, dtype=dtype)
    return out
