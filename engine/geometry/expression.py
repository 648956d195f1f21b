"""Shared-topology expression model: one learnt code per expression, one shared deformation network.

``offset(v, name) = MLP(PE(v), code[name]) - MLP(PE(v), 0)``: subtracting the network at the
zero code makes the offset *exactly* zero for neutral (whose code is a fixed zero buffer, not a
parameter), whatever the weights are. Every expression is ``canonical + offset`` on the canonical
faces, which is what Blender shape keys and glTF morph targets need; :meth:`ExpressionModel.export`
gives the canonical-plus-offsets form of the result folder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

NEUTRAL = "neutral"


def positional_encoding(x: torch.Tensor, n_frequencies: int, scale: float) -> torch.Tensor:
    """[x, sin(2^k pi x / scale), cos(...)] for k < n_frequencies; ``scale`` ~ the object size (m)."""
    xs = x / scale
    freqs = (2.0 ** torch.arange(n_frequencies, dtype=x.dtype, device=x.device)) * math.pi
    ang = xs[..., None] * freqs  # [V,3,K]
    return torch.cat([xs, torch.sin(ang).flatten(-2), torch.cos(ang).flatten(-2)], dim=-1)


class ExpressionModel(nn.Module):
    """Codes for ``names`` (neutral is always present and fixed at zero) + a shared offset MLP.

    ``scale`` is the object size in metres (positions are divided by it before encoding) and
    ``max_offset`` bounds the offsets through ``tanh`` (metres).
    """

    def __init__(
        self,
        names,
        code_dim: int = 32,
        *,
        hidden: int = 128,
        n_layers: int = 3,
        n_frequencies: int = 4,
        scale: float = 0.25,
        max_offset: float = 0.05,
        seed: int = 0,
    ):
        super().__init__()
        names = list(dict.fromkeys(names))
        if NEUTRAL in names:
            names.remove(NEUTRAL)
        for n in names:
            if not n or not isinstance(n, str):
                raise ValueError(f"expression names must be non-empty strings, got {n!r}")
        self.names = [NEUTRAL, *names]
        self.code_dim, self.n_frequencies, self.scale, self.max_offset = (
            code_dim,
            n_frequencies,
            scale,
            max_offset,
        )
        gen = torch.Generator().manual_seed(seed)
        # Small random codes so expressions start distinct; neutral is a zero buffer (never trained).
        self.codes = nn.Parameter(torch.randn(len(names), code_dim, generator=gen) * 0.1)
        self.register_buffer("neutral_code", torch.zeros(code_dim))
        width = 3 + 6 * n_frequencies + code_dim
        layers = []
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 3))
        self.mlp = nn.Sequential(*layers)

    def code(self, name: str) -> torch.Tensor:
        if name == NEUTRAL:
            return self.neutral_code
        try:
            return self.codes[self.names.index(name) - 1]
        except ValueError:
            raise KeyError(f"unknown expression {name!r}; this model knows {self.names}") from None

    def _raw(self, pe: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([pe, code.expand(pe.shape[0], -1)], dim=-1))

    def offsets(self, canonical_verts: torch.Tensor, name: str) -> torch.Tensor:
        """Offsets [V,3] (metres) of expression ``name``; exactly zero for neutral."""
        if name == NEUTRAL:
            return torch.zeros_like(canonical_verts)
        pe = positional_encoding(canonical_verts, self.n_frequencies, self.scale)
        raw = self._raw(pe, self.code(name)) - self._raw(pe, self.neutral_code)
        return torch.tanh(raw) * self.max_offset

    def deformed(self, canonical_verts: torch.Tensor, name: str) -> torch.Tensor:
        return canonical_verts + self.offsets(canonical_verts, name)

    @torch.no_grad()
    def export(self, canonical_verts: torch.Tensor) -> dict[str, np.ndarray]:
        """{name: offsets float32 [V,3]} for every expression, neutral included (all zeros)."""
        return {
            n: self.offsets(canonical_verts, n).detach().cpu().numpy().astype(np.float32) for n in self.names
        }
