"""Triangle-mesh utilities in torch: normals, edges, Laplacians, Chamfer distance and sanity checks.

Meshes are ``verts`` [V,3] float and ``faces`` [F,3] int64, counter-clockwise seen from outside.
"""

from __future__ import annotations

import torch

from ..render.mesh_ops import mesh_topology, vertex_normals  # noqa: F401  (vertex_normals: re-exported)


def face_normals(verts: torch.Tensor, faces: torch.Tensor, *, unit: bool = True) -> torch.Tensor:
    """Per-face normals [F,3]; ``unit=False`` gives twice the area times the unit normal."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = torch.linalg.cross(v1 - v0, v2 - v0)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-20) if unit else n


# One edge table for the whole engine: the renderer's (it also serves its silhouette edges).
def unique_edges(faces: torch.Tensor, topology=None) -> torch.Tensor:
    """Undirected edges [E,2] (lower index first, sorted) of a triangle mesh (``topology``:
    ``mesh_topology(faces)`` when the caller has it already)."""
    return (topology if topology is not None else mesh_topology(faces)).edge_vertices


def edge_face_adjacency(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(edges [E,2], counts [E]) where counts is how many faces use each undirected edge."""
    topology = mesh_topology(faces)
    return topology.edge_vertices, topology.edge_face_count


def interior_edge_face_pairs(faces: torch.Tensor, topology=None) -> torch.Tensor:
    """Pairs [P,2] of face indices that share an edge (edges used by exactly two faces)."""
    topology = topology if topology is not None else mesh_topology(faces)
    return topology.edge_faces[topology.edge_face_count == 2]


def edge_lengths(verts: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    return (verts[edges[:, 0]] - verts[edges[:, 1]]).norm(dim=-1)


def uniform_laplacian(verts: torch.Tensor, faces: torch.Tensor, topology=None) -> torch.Tensor:
    """Uniform (umbrella) Laplacian vectors [V,3]: mean of the neighbours minus the vertex."""
    edges = unique_edges(faces, topology)
    n = verts.shape[0]
    acc = torch.zeros_like(verts)
    acc = acc.index_add(0, edges[:, 0], verts[edges[:, 1]]).index_add(0, edges[:, 1], verts[edges[:, 0]])
    deg = torch.zeros(n, dtype=verts.dtype, device=verts.device)
    ones = torch.ones(edges.shape[0], dtype=verts.dtype, device=verts.device)
    deg = deg.index_add(0, edges[:, 0], ones).index_add(0, edges[:, 1], ones)
    return acc / deg.clamp_min(1)[:, None] - verts * (deg > 0)[:, None]


def cotangent_laplacian(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Cotangent-weighted Laplacian vectors [V,3], normalised by the weight sum per vertex.

    Weights are clamped at zero (obtuse angles give negative cotangents that make the loss
    non-convex and unstable on the irregular meshes marching tets produces).
    """
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = verts.shape[0]

    def cot(a, b, c):  # cotangent of the angle at a in triangle abc
        u, w = b - a, c - a
        return (u * w).sum(-1) / torch.linalg.cross(u, w).norm(dim=-1).clamp_min(1e-20)

    acc = torch.zeros_like(verts)
    wsum = torch.zeros(n, dtype=verts.dtype, device=verts.device)
    # The angle at one corner weighs the opposite edge.
    for (ia, ib, ic), (a, b, c) in (
        ((0, 1, 2), (v0, v1, v2)),
        ((1, 2, 0), (v1, v2, v0)),
        ((2, 0, 1), (v2, v0, v1)),
    ):
        w = cot(a, b, c).clamp_min(0.0) * 0.5
        fb, fc = faces[:, ib], faces[:, ic]
        acc = acc.index_add(0, fb, w[:, None] * c).index_add(0, fc, w[:, None] * b)
        wsum = wsum.index_add(0, fb, w).index_add(0, fc, w)
    return acc / wsum.clamp_min(1e-12)[:, None] - verts * (wsum > 0)[:, None]


def signed_volume(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Enclosed volume (positive for a closed, outward-oriented mesh)."""
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return (v0 * torch.linalg.cross(v1, v2)).sum() / 6.0


def surface_area(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    return face_normals(verts, faces, unit=False).norm(dim=-1).sum() * 0.5


def is_closed_manifold(faces: torch.Tensor) -> bool:
    """Every edge shared by exactly two faces, and each directed edge used once (consistent winding)."""
    if faces.shape[0] == 0:
        return False
    _, counts = edge_face_adjacency(faces)
    if not bool((counts == 2).all()):
        return False
    directed = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], dim=0)
    return torch.unique(directed, dim=0).shape[0] == directed.shape[0]


def euler_characteristic(verts: torch.Tensor, faces: torch.Tensor) -> int:
    used = torch.unique(faces).numel()
    return int(used - unique_edges(faces).shape[0] + faces.shape[0])


def sample_surface(verts: torch.Tensor, faces: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` points [n,3] sampled uniformly by area on the surface (fixed seed: reproducible)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    area = face_normals(verts, faces, unit=False).norm(dim=-1).detach().cpu().double()
    idx = torch.multinomial(area / area.sum(), n, replacement=True, generator=gen).to(verts.device)
    u = torch.rand(n, 2, generator=gen, dtype=verts.dtype).to(verts.device)
    flip = u.sum(-1) > 1
    u[flip] = 1 - u[flip]
    f = faces[idx]
    v0, v1, v2 = verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]]
    return v0 + u[:, :1] * (v1 - v0) + u[:, 1:] * (v2 - v0)


def nearest_distances(a: torch.Tensor, b: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
    """For every point of ``a`` [N,3], the distance to the nearest point of ``b`` [M,3]."""
    out = []
    for i in range(0, a.shape[0], chunk):
        out.append(torch.cdist(a[i : i + chunk], b).min(dim=1)[0])
    return torch.cat(out) if out else a.new_zeros(0)


def chamfer_distance(
    verts_a: torch.Tensor,
    faces_a: torch.Tensor,
    verts_b: torch.Tensor,
    faces_b: torch.Tensor,
    *,
    n_points: int = 20000,
    seed: int = 0,
) -> dict[str, float]:
    """Symmetric Chamfer distance between two surfaces, from area-uniform samples (not squared).

    Returns ``a_to_b`` and ``b_to_a`` (mean nearest-point distances, metres) and ``chamfer``
    = their average.
    """
    with torch.no_grad():
        pa = sample_surface(verts_a, faces_a, n_points, seed=seed)
        pb = sample_surface(verts_b, faces_b, n_points, seed=seed + 1)
        ab = nearest_distances(pa, pb).mean().item()
        ba = nearest_distances(pb, pa).mean().item()
    return {"a_to_b": ab, "b_to_a": ba, "chamfer": 0.5 * (ab + ba)}


def bbox_diagonal(verts: torch.Tensor) -> float:
    return float((verts.max(0)[0] - verts.min(0)[0]).norm())


def keep_largest_component(verts: torch.Tensor, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The connected component with the most faces, vertices re-indexed (drops floaters, bubbles).

    For export and reports; the optimisation itself keeps the full extraction so gradients
    can remove small parts on their own.
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if faces.shape[0] == 0:
        return verts, faces
    f = faces.detach().cpu().numpy()
    n = verts.shape[0]
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    _, labels = connected_components(
        coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n)), directed=False
    )
    face_label = labels[f[:, 0]]
    keep_faces = face_label == np.bincount(face_label).argmax()
    used = np.unique(f[keep_faces])
    remap = np.full(n, -1, np.int64)
    remap[used] = np.arange(used.size)
    new_faces = torch.from_numpy(remap[f[keep_faces]]).to(faces.device)
    return verts[torch.from_numpy(used).to(verts.device)], new_faces
