"""Mesh helpers shared by the renderers: vertex normals and edge topology for silhouettes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals, differentiable. verts [V,3] or [B,V,3] -> same shape.

    Faces are taken counter-clockwise seen from outside (the outward normal is (v1-v0)x(v2-v0)).
    """
    from .rasterize_torch import gather_rows

    squeeze = verts.ndim == 2
    v = verts.unsqueeze(0) if squeeze else verts
    b, nv = v.shape[:2]
    f = faces.long()
    # Vertex-major [V, B, 3] layout: row gathers and index_add along dim 0 are the fast paths.
    table = v.permute(1, 0, 2).reshape(nv, b * 3)
    v0, v1, v2 = (gather_rows(table, f[:, k]).reshape(-1, b, 3) for k in range(3))
    face_n = torch.cross(v1 - v0, v2 - v0, dim=-1).reshape(-1, b * 3)  # |n| = 2 area: area weights
    n = torch.zeros_like(table)
    for k in range(3):
        n = n.index_add(0, f[:, k], face_n)
    n = n.reshape(nv, b, 3).permute(1, 0, 2)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    return n[0] if squeeze else n


@dataclass
class MeshTopology:
    """Unique edges of a triangle mesh and which faces use them.

    face_edges: [F, 3] edge id of face edge k = (faces[:, k], faces[:, (k + 1) % 3]).
    edge_face_count: [E] number of faces using each edge (1 = open boundary).
    edge_vertices: [E, 2] its two vertices; edge_opposite: [E] the third vertex of one face
    using it (which side of the edge the surface lies on, in any view where it is a silhouette).
    edge_faces: [E, 2] two faces using it (the same face twice on an open boundary).
    Build it once per topology with :func:`mesh_topology` and pass it to ``render`` to save the
    sort on every call.
    """

    faces: torch.Tensor
    face_edges: torch.Tensor
    edge_face_count: torch.Tensor
    edge_vertices: torch.Tensor
    edge_opposite: torch.Tensor
    edge_faces: torch.Tensor

    @property
    def num_edges(self) -> int:
        return int(self.edge_face_count.shape[0])

    def to(self, device) -> "MeshTopology":
        parts = (self.faces, self.face_edges, self.edge_face_count, self.edge_vertices, self.edge_opposite,
                 self.edge_faces)
        return MeshTopology(*(t.to(device) for t in parts))


def mesh_topology(faces: torch.Tensor) -> MeshTopology:
    """The topology of ``faces`` [F, 3] (vertex ids below 2^31). No host read-back: edges are keyed
    by (low << 32) | high, which sorts like (low, high), so no vertex count is needed."""
    f = faces.long()
    pairs = torch.stack([f, f.roll(-1, dims=1)], dim=-1).reshape(-1, 2)  # [3F, 2]
    pairs = torch.sort(pairs, dim=-1).values
    keys = (pairs[:, 0] << 32) | pairs[:, 1]
    uniq, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    edge_vertices = torch.stack([uniq >> 32, uniq & 0xFFFFFFFF], dim=1)
    opposite = torch.zeros(uniq.shape[0], dtype=torch.long, device=f.device)
    opposite[inverse] = f.roll(-2, dims=1).reshape(-1)  # any face's third vertex will do
    # The first and last face using each edge (sorting face-edges by edge id groups them).
    face_of = torch.arange(f.shape[0], device=f.device).repeat_interleave(3)
    order = torch.argsort(inverse, stable=True)
    first = torch.cumsum(counts, 0) - counts
    last = first + counts - 1
    edge_faces = torch.stack([face_of[order[first]], face_of[order[last]]], dim=1)
    return MeshTopology(faces=f, face_edges=inverse.reshape(-1, 3), edge_face_count=counts,
                        edge_vertices=edge_vertices, edge_opposite=opposite, edge_faces=edge_faces)


def silhouette_edges(topology: MeshTopology, facing: torch.Tensor) -> torch.Tensor:
    """[B, E] bool: edge e lies on a silhouette in view b.

    facing: [B, F] bool, the face's orientation in that view (front or back, either convention).
    An edge is a silhouette when it bounds the mesh (one face) or when its faces disagree on
    facing; only such edges may carry anti-aliasing (and their vertices silhouette gradients).
    """
    count = topology.edge_face_count[None]
    f0 = facing.index_select(1, topology.edge_faces[:, 0])
    f1 = facing.index_select(1, topology.edge_faces[:, 1])
    # Edges shared by more than two faces (non-manifold) are always candidates; the visibility
    # test in the anti-aliasing pass then keeps only those actually seen as outlines.
    return (count == 1) | (count > 2) | (f0 != f1)


def icosphere(subdivisions: int, radius: float = 1.0, dtype=None, device=None):
    """Unit icosphere scaled to ``radius``: (verts [V, 3], faces [F, 3] int64, counter-clockwise
    seen from outside). Level n has 20 * 4^n faces, every vertex exactly on the sphere."""
    t = (1.0 + 5.0**0.5) / 2.0
    v = torch.tensor(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
         [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
        dtype=torch.float64,
    )
    f = torch.tensor(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
         [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
         [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    )
    v = v / v.norm(dim=1, keepdim=True)
    for _ in range(subdivisions):
        edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
        uniq, inv = torch.unique(edges, dim=0, return_inverse=True)
        mid = v[uniq[:, 0]] + v[uniq[:, 1]]
        mid = mid / mid.norm(dim=1, keepdim=True)
        m = inv.reshape(3, -1).T + v.shape[0]  # midpoint ids of edges 01, 12, 20 per face
        v = torch.cat([v, mid])
        a, b, c = f.T
        ab, bc, ca = m.T
        f = torch.cat([torch.stack(x, 1) for x in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    return (v * radius).to(dtype=dtype or torch.float32, device=device), f.to(device)
