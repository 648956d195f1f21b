"""The texture being optimised: albedo (linear RGB) and roughness UV maps, values in [0, 1].

SDS gradients reach a texture only through the texels that renders happen to sample, a few per
pixel, so a plain texel grid learns slowly and speckles. Each map is therefore the sigmoid of a sum
of grids at halving resolutions (a Laplacian-style pyramid, finest = ``size``): a gradient on one
texel also moves the coarse levels, which spread it over the surrounding area, while the finest
level still holds per-texel detail. ``levels=1`` gives the plain grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_ALBEDO = (0.55, 0.42, 0.36)  # a mid skin tone in linear RGB: a neutral start, not grey
DEFAULT_ROUGHNESS = 0.6
MIN_LEVEL_SIZE = 8


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1.0 - 1e-4)
    return math.log(p / (1.0 - p))


class TextureMaps(torch.nn.Module):
    """albedo() -> [S, S, 3], roughness() -> [S, S, 1], both in [0, 1], differentiable.

    size: texels per side of the finest level (the map's resolution). levels: pyramid levels
    (coarser ones halve down to at least MIN_LEVEL_SIZE texels). init_albedo / init_roughness:
    starting values (an RGB triple, a value, or an [S, S, C] array in [0, 1]).
    """

    def __init__(self, size: int, *, levels: int = 4, init_albedo=DEFAULT_ALBEDO,
                 init_roughness=DEFAULT_ROUGHNESS, device=None):
        super().__init__()
        if not isinstance(size, int) or size < 4:
            raise ValueError(f"texture size must be an integer >= 4, got {size!r}")
        self.size = size
        sizes = [size]
        while len(sizes) < levels and sizes[-1] // 2 >= MIN_LEVEL_SIZE:
            sizes.append(sizes[-1] // 2)
        self.level_sizes = tuple(sizes)
        self.albedo_levels = self._make_levels(3, init_albedo, device)
        self.roughness_levels = self._make_levels(1, init_roughness, device)

    def _make_levels(self, channels: int, init, device) -> torch.nn.ParameterList:
        params = []
        for k, s in enumerate(self.level_sizes):
            p = torch.zeros(1, channels, s, s, device=device)
            if k == len(self.level_sizes) - 1:  # the start value lives in the coarsest level
                p += self._init_logits(init, channels, s, device)
            params.append(torch.nn.Parameter(p))
        return torch.nn.ParameterList(params)

    def _init_logits(self, init, channels: int, s: int, device) -> torch.Tensor:
        arr = np.asarray(init, dtype=np.float32)
        if arr.ndim == 3:  # a full map: resample to the coarsest level's size, in logit space
            if arr.shape[2] != channels:
                raise ValueError(f"initial map has {arr.shape[2]} channels, expected {channels}")
            t = torch.as_tensor(np.clip(arr, 1e-4, 1 - 1e-4), device=device).permute(2, 0, 1)[None]
            return torch.logit(F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False,
                                             antialias=True).clamp(1e-4, 1 - 1e-4))
        values = np.broadcast_to(arr.reshape(-1), (channels,))
        return torch.tensor([_logit(x) for x in values], device=device).reshape(1, channels, 1, 1)

    def _compose(self, levels: torch.nn.ParameterList) -> torch.Tensor:
        total = levels[0]
        for p in list(levels)[1:]:
            total = total + F.interpolate(p, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(total)[0].permute(1, 2, 0)  # [S, S, C], row 0 = top (v = 1)

    def albedo(self) -> torch.Tensor:
        return self._compose(self.albedo_levels)

    def roughness(self) -> torch.Tensor:
        return self._compose(self.roughness_levels)

    def packed(self) -> torch.Tensor:
        """[S, S, 4]: albedo RGB + roughness, one texture for one render lookup."""
        return torch.cat([self.albedo(), self.roughness()], dim=-1)

    @torch.no_grad()
    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(albedo float32 [S, S, 3], roughness float32 [S, S, 1]) for export."""
        return (self.albedo().float().cpu().numpy(), self.roughness().float().cpu().numpy())
