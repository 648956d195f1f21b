"""Differentiable rendering for the head: cameras, lights and a triangle rasteriser.

This package imports torch at import time: import it only from code that already needs torch
(``import engine`` does not import it).

Public API
----------
- :class:`Cameras`, :func:`orbit_cameras`, :func:`sample_orbit_cameras`: head-centred perspective
  cameras in the engine world (Z up, metres, face toward -Y; azimuth 0 = front camera at -Y,
  positive azimuth counter-clockwise seen from above; labels front/side/back). See cameras.py.
- :func:`render`: mesh + cameras -> dict of [B, H, W, C] passes (mask, depth, normal_world,
  normal_camera, albedo, shaded, color, uv, position, triangle_id) on the built-in torch
  rasteriser or nvdiffrast (CUDA, when installed). See renderer.py.
- :class:`Lights`, :func:`sample_lights`: environment (SH irradiance) + point/directional key light.
- :func:`normals_to_image`: camera-space normals -> RGB normal map for the diffusion prior.
- :func:`vertex_normals`, :func:`mesh_topology`: mesh helpers (pass a topology to ``render``
  to skip rebuilding the edge table each call).
"""

from __future__ import annotations

import torch

from .cameras import Cameras, look_at, orbit_cameras, radius_for_fill, sample_orbit_cameras, view_label
from .lights import Lights, sample_lights, shade
from .mesh_ops import MeshTopology, icosphere, mesh_topology, vertex_normals
from .renderer import PASSES, available_backends, bilinear_texture, render


def normals_to_image(normal: torch.Tensor, mask: torch.Tensor, background=0.0) -> torch.Tensor:
    """Encode a normal pass as an RGB image in [0, 1] for the normal-map diffusion prior.

    normal: [B, H, W, 3] as returned by ``render`` (use ``normal_camera``: OpenGL camera space,
    x right, y up, z toward the viewer, so a face seen head-on is mostly blue (0.5, 0.5, 1)),
    rendered with background 0 (the default). mask: [B, H, W, 1] anti-aliased coverage.
    Returns (n + 1) / 2 inside the head and ``background`` (scalar or RGB) outside; at
    anti-aliased silhouette pixels the two are mixed by the mask, exactly, because the normal
    pass there already is mask * n.
    """
    bg = torch.as_tensor(background, dtype=normal.dtype, device=normal.device).reshape(-1)
    if bg.numel() == 1:
        bg = bg.expand(3)
    return (normal + mask) * 0.5 + (1.0 - mask) * bg


__all__ = [
    "Cameras", "orbit_cameras", "sample_orbit_cameras", "look_at", "radius_for_fill", "view_label",
    "Lights", "sample_lights", "shade", "MeshTopology", "mesh_topology", "vertex_normals", "icosphere",
    "PASSES", "available_backends", "bilinear_texture", "render", "normals_to_image",
]
