"""SDF fields for DMTet, behind one interface: ``sdf_and_deformation(points) -> (sdf [N], deform [N,3])``.

* :class:`HashGridSDF` - multi-resolution hash-grid encoding (plain torch: trilinear interpolation
  of learnt features at hashed cube corners, levels growing geometrically) + a small MLP that
  outputs the SDF and, optionally, a bounded grid deformation. Smooth and spatially coherent:
  the surface can travel many cells while fitting.
* :class:`VertexSDF` - one SDF value and one deformation per tet-grid vertex (the original DMTet
  parameterisation). Fastest on CPU, but only vertices next to the surface get gradients.

Deformations are bounded with ``tanh`` to ``max_deformation`` metres. Keep it at most
``MAX_SAFE_DEFORMATION`` grid cells: the smallest altitude of the grid's tets is cell/sqrt(2), so
if no vertex moves more than 0.35 cell no tet can invert, and marching tets' outward winding
(which needs positive tets) is guaranteed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Large primes for the spatial hash (the usual choice: 1 for x keeps the finest level coherent in x).
_PRIMES = (1, 2654435761, 805459861)
MAX_SAFE_DEFORMATION = 0.35  # in grid cells, see the module docstring


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
            deform = torch.tanh(out[:, 1:]) * self.max_deformation
        else:
            deform = torch.zeros_like(points)
        return sdf, deform


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
        deform = torch.tanh(self.raw_deformation) * self.max_deformation
        return self.sdf, deform
