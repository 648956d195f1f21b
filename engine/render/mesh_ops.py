"""Mesh helpers shared by the renderers: vertex normals and edge topology for silhouettes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals, differentiable. verts [V,3] or [B,V,3] -> same shape.

    Faces are taken counter-clockwise seen from outside (the outward normal is (v1-v0)x(v2-v0)).
    """
    squeeze = verts.ndim == 2
    v = verts.unsqueeze(0) if squeeze else verts
    f = faces.long()
    v0, v1, v2 = v[:, f[:, 0]], v[:, f[:, 1]], v[:, f[:, 2]]
    face_n = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 * area: area weighting for free
    n = torch.zeros_like(v)
    for k in range(3):
        n = n.index_add(1, f[:, k], face_n)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    return n[0] if squeeze else n


@dataclass
class MeshTopology:
    """Unique edges of a triangle mesh and which faces use them.

    face_edges: [F, 3] edge id of face edge k = (faces[:, k], faces[:, (k + 1) % 3]).
    edge_face_count: [E] number of faces using each edge (1 = open boundary).
    Build it once per topology with :func:`mesh_topology` and pass it to ``render`` to save the
    sort on every call.
    """

    faces: torch.Tensor
    face_edges: torch.Tensor
    edge_face_count: torch.Tensor

    @property
    def num_edges(self) -> int:
        return int(self.edge_face_count.shape[0])

    def to(self, device) -> "MeshTopology":
        return MeshTopology(self.faces.to(device), self.face_edges.to(device), self.edge_face_count.to(device))


def mesh_topology(faces: torch.Tensor) -> MeshTopology:
    f = faces.long()
    pairs = torch.stack([f, f.roll(-1, dims=1)], dim=-1).reshape(-1, 2)  # [3F, 2]
    pairs = torch.sort(pairs, dim=-1).values
    n = int(f.max().item()) + 1 if f.numel() else 1
    keys = pairs[:, 0] * n + pairs[:, 1]
    uniq, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    return MeshTopology(faces=f, face_edges=inverse.reshape(-1, 3), edge_face_count=counts)


def silhouette_face_edges(topology: MeshTopology, facing: torch.Tensor) -> torch.Tensor:
    """[B, F, 3] bool: face edge k lies on a silhouette in view b.

    facing: [B, F] bool, the face's orientation in that view (front or back, either convention).
    An edge is a silhouette when it bounds the mesh (one face) or when its faces disagree on
    facing; only such edges may carry anti-aliasing (and their vertices silhouette gradients).
    """
    b = facing.shape[0]
    e = topology.num_edges
    fe = topology.face_edges.reshape(-1)
    front = facing.to(torch.int32).repeat_interleave(3, dim=1)  # [B, 3F]
    n_front = torch.zeros(b, e, dtype=torch.int32, device=facing.device).index_add_(1, fe, front)
    total = topology.edge_face_count.to(torch.int32)[None]
    sil = (total == 1) | ((n_front != 0) & (n_front != total))
    return sil[:, topology.face_edges]
