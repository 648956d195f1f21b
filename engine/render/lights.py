"""Simple relightable shading: an environment term plus one key light, per view.

Environment: first-order spherical-harmonic *irradiance*, E(n) = c0 + c1 n_x + c2 n_y + c3 n_z
(world space, per colour channel), clamped at 0 -- a sky/ground gradient or a plain ambient when
c1..c3 are 0. Key light: directional (unit vector toward the light) or point (world position; no
distance fall-off, so a head-sized scene is lit evenly), Lambert diffuse plus a Blinn-Phong
specular lobe. Texture albedo is the diffuse colour; the specular term is white (dielectric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

KEY_NONE, KEY_DIRECTIONAL, KEY_POINT = 0, 1, 2
LIGHT_KINDS = ("point", "directional", "environment")


@dataclass
class Lights:
    """Lighting for B views. sh: [B, 4, 3]; key_kind: [B] int (0 none, 1 directional, 2 point);
    key_vector: [B, 3] direction toward the light (directional) or position (point);
    key_color: [B, 3]; specular: [B] strength; shininess: [B] Blinn-Phong exponent."""

    sh: torch.Tensor
    key_kind: torch.Tensor
    key_vector: torch.Tensor
    key_color: torch.Tensor
    specular: torch.Tensor
    shininess: torch.Tensor

    def __len__(self) -> int:
        return self.sh.shape[0]

    def to(self, device=None, dtype=None) -> "Lights":
        def cv(t, floating=True):
            return t.to(device=device, dtype=dtype if floating and dtype is not None else t.dtype)

        return Lights(
            cv(self.sh), cv(self.key_kind, False), cv(self.key_vector), cv(self.key_color),
            cv(self.specular), cv(self.shininess),
        )

    @staticmethod
    def ambient(n: int, level: float = 1.0, device=None) -> "Lights":
        """Uniform white light: shading reproduces the albedo times ``level``."""
        sh = torch.zeros(n, 4, 3, device=device)
        sh[:, 0] = level
        z = torch.zeros(n, 3, device=device)
        return Lights(sh, torch.zeros(n, dtype=torch.long, device=device), z, z.clone(),
                      torch.zeros(n, device=device), torch.ones(n, device=device))


def sample_lights(n: int, seed: int, *, kinds=LIGHT_KINDS, device=None) -> Lights:
    """``n`` random lights (the same for the same seed), kind drawn uniformly from ``kinds``.

    point / directional: a dim ambient (0.15-0.4) plus a key light from the upper half of the
    sphere around the head (elevation -15..75 deg, any azimuth) of intensity 0.6-1.1.
    environment: no key light; a bright SH sky (constant 0.5-0.9, linear terms up to 0.4).
    Every kind gets a slight colour tint and a specular lobe (strength 0-0.3, exponent 8-64).
    """
    for k in kinds:
        if k not in LIGHT_KINDS:
            raise ValueError(f"unknown light kind {k!r}; expected some of {LIGHT_KINDS}")
    rng = np.random.default_rng(seed)
    kind_idx = rng.integers(0, len(kinds), size=n)
    names = [kinds[i] for i in kind_idx]
    tint = 1.0 + rng.uniform(-0.08, 0.08, size=(n, 3))
    sh = np.zeros((n, 4, 3))
    key_kind = np.zeros(n, dtype=np.int64)
    key_vec = np.zeros((n, 3))
    key_col = np.zeros((n, 3))
    az = rng.uniform(-math.pi, math.pi, size=n)
    el = rng.uniform(math.radians(-15), math.radians(75), size=n)
    direction = np.stack([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)], axis=-1)
    dist = rng.uniform(0.8, 2.0, size=n)
    ambient = rng.uniform(0.15, 0.4, size=n)
    key_int = rng.uniform(0.6, 1.1, size=n)
    env_c0 = rng.uniform(0.5, 0.9, size=n)
    env_lin = rng.normal(size=(n, 3))
    env_lin *= rng.uniform(0.0, 0.4, size=(n, 1)) / np.linalg.norm(env_lin, axis=1, keepdims=True)
    for i, name in enumerate(names):
        if name == "environment":
            sh[i, 0] = env_c0[i] * tint[i]
            sh[i, 1:] = env_lin[i][:, None] * tint[i][None]
        else:
            sh[i, 0] = ambient[i] * tint[i]
            key_col[i] = key_int[i] * tint[i]
            if name == "directional":
                key_kind[i] = KEY_DIRECTIONAL
                key_vec[i] = direction[i]
            else:
                key_kind[i] = KEY_POINT
                key_vec[i] = direction[i] * dist[i]
    spec = rng.uniform(0.0, 0.3, size=n)
    shin = np.exp(rng.uniform(math.log(8), math.log(64), size=n))

    def t(a, dtype=torch.float32):
        return torch.as_tensor(a, dtype=dtype, device=device)

    return Lights(t(sh), t(key_kind, torch.long), t(key_vec), t(key_col), t(spec), t(shin))


def shade(albedo, normal, position, camera_pos, lights: Lights) -> torch.Tensor:
    """Shaded colour [B, H, W, 3] in [0, 1] from per-pixel albedo, unit world normal and world
    position (all [B, H, W, 3]); camera_pos [B, 3]."""
    dt = albedo.dtype
    li = lights.to(albedo.device, dt)
    b = albedo.shape[0]
    if len(li) == 1 and b > 1:
        li = Lights(*(getattr(li, k).expand(b, *getattr(li, k).shape[1:]) for k in
                      ("sh", "key_kind", "key_vector", "key_color", "specular", "shininess")))
    if len(li) != b:
        raise ValueError(f"{len(li)} lights for {b} views: pass one light or one per view")
    view = lambda t: t[:, None, None]  # noqa: E731 - broadcast a per-view value over pixels
    sh = li.sh
    env = view(sh[:, 0]) + sum(normal[..., k : k + 1] * view(sh[:, k + 1]) for k in range(3))
    env = env.clamp_min(0.0)
    kind = view(li.key_kind)[..., None]
    to_light = torch.where(kind == KEY_POINT, view(li.key_vector) - position, view(li.key_vector))
    to_light = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    has_key = (kind != KEY_NONE).to(dt)
    ndl = (normal * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    to_eye = view(camera_pos.to(dt)) - position
    to_eye = to_eye / to_eye.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    half = to_light + to_eye
    half = half / half.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    ndh = (normal * half).sum(-1, keepdim=True).clamp_min(1e-12)
    spec = view(li.specular)[..., None] * ndh ** view(li.shininess)[..., None] * (ndl > 0).to(dt)
    key = view(li.key_color) * has_key
    rgb = albedo * (env + key * ndl) + key * spec
    return rgb.clamp(0.0, 1.0)
