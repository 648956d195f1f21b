"""Geometry regularisers (all return scalar tensors; weights are the caller's choice).

* Laplacian smoothness and normal consistency keep SDS/fit meshes from getting noisy.
* The SDF sign regulariser (DMTet / Magic3D) penalises sign flips across grid edges, which
  removes floaters and internal bubbles that no view can see.
* The eikonal term keeps a neural SDF a distance field (|grad| = 1) away from the surface.
"""

from __future__ import annotations

import torch

from . import mesh_utils


def laplacian_smoothness(
    verts: torch.Tensor, faces: torch.Tensor, *, cotangent: bool = False, topology=None
) -> torch.Tensor:
    """Mean squared length of the Laplacian vectors (uniform by default). ``topology``:
    ``mesh_topology(faces)`` when the caller has it (the renderer needs it too)."""
    if faces.shape[0] == 0:
        return verts.sum() * 0.0
    lap = (
        mesh_utils.cotangent_laplacian(verts, faces)
        if cotangent
        else mesh_utils.uniform_laplacian(verts, faces, topology)
    )
    return (lap * lap).sum(-1).mean()


def normal_consistency(verts: torch.Tensor, faces: torch.Tensor, topology=None) -> torch.Tensor:
    """Mean (1 - cos) of the angle between the normals of faces sharing an edge."""
    pairs = mesh_utils.interior_edge_face_pairs(faces, topology)
    if pairs.shape[0] == 0:
        return verts.sum() * 0.0
    n = mesh_utils.face_normals(verts, faces)
    return (1.0 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()


def edge_length_variance(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Variance of edge lengths relative to their mean (keeps triangles even)."""
    lengths = mesh_utils.edge_lengths(verts, mesh_utils.unique_edges(faces))
    return lengths.var() / lengths.mean().clamp_min(1e-12) ** 2


def sdf_sign_regulariser(sdf: torch.Tensor, crossing_edges: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy pushing the two ends of each surface-crossing edge to agree in sign.

    With the marching-tets ``edges`` this is the DMTet regulariser: it only acts where the surface
    is, and removes the surface wherever the image losses do not hold it in place.
    """
    if crossing_edges.shape[0] == 0:
        return sdf.sum() * 0.0
    s_a, s_b = sdf[crossing_edges[:, 0]], sdf[crossing_edges[:, 1]]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    return 0.5 * (bce(s_a, (s_b > 0).float()) + bce(s_b, (s_a > 0).float()))


def sdf_grid_smoothness(sdf: torch.Tensor, resolution: int) -> torch.Tensor:
    """Mean squared 6-neighbour Laplacian of the SDF sampled on the regular grid (metres^2/cell^4).

    Acts on every grid vertex, not only near the surface: with per-vertex SDFs it is what
    dissolves bubbles and floaters that no camera sees (an isolated sign is far from the mean of
    its neighbours). Uses the layout of :func:`~engine.geometry.tetgrid.make_tet_grid`.
    """
    m = resolution + 1
    g = sdf.reshape(m, m, m)
    c = g[1:-1, 1:-1, 1:-1]
    lap = (
        g[2:, 1:-1, 1:-1]
        + g[:-2, 1:-1, 1:-1]
        + g[1:-1, 2:, 1:-1]
        + g[1:-1, :-2, 1:-1]
        + g[1:-1, 1:-1, 2:]
        + g[1:-1, 1:-1, :-2]
        - 6.0 * c
    )
    return (lap * lap).mean()


def eikonal(field, points: torch.Tensor) -> torch.Tensor:
    """Mean (|grad sdf| - 1)^2 at ``points`` for a field with ``sdf_and_deformation``."""
    points = points.detach().requires_grad_(True)
    sdf, _ = field.sdf_and_deformation(points)
    (grad,) = torch.autograd.grad(sdf.sum(), points, create_graph=True)
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()
