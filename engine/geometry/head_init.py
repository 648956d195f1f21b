"""A procedural head: an analytic SDF of smoothly united ellipsoids and capsules, at real size.

World = Blender: Z up, metres, the face looks toward -Y. The head is ~0.23 m from chin to crown,
centred near the origin; the neck is cut flat by a plane inside the default tet-grid box so the
extracted surface stays closed. The field is initialised by a short pretraining to this SDF
(:func:`pretrain_field`), or set exactly for :class:`~engine.geometry.sdf_field.VertexSDF`.
"""

from __future__ import annotations

import torch

# Part sizes in metres (adult average proportions, rounded). Centres are (x, y, z).
CRANIUM = ((0.0, 0.012, 0.030), (0.074, 0.094, 0.085))
FACE = ((0.0, -0.030, -0.005), (0.064, 0.070, 0.085))
JAW = ((0.0, -0.045, -0.062), (0.048, 0.045, 0.034))
NOSE = ((0.0, -0.094, 0.012), (0.0, -0.106, -0.020), 0.011)  # capsule: a, b, radius
EARS = (((0.074, 0.008, 0.002), (0.012, 0.018, 0.030)), ((-0.074, 0.008, 0.002), (0.012, 0.018, 0.030)))
NECK = ((0.0, 0.012, -0.050), (0.0, 0.022, -0.170), 0.050)
NECK_CUT_Z = -0.145  # flat cut, inside a 0.32 m box centred at the origin
BLEND = 0.018  # smooth-union radius (m)


def ellipsoid_sdf(p: torch.Tensor, center, radii) -> torch.Tensor:
    """Approximate SDF of an ellipsoid (exact on the surface, good near it; Quilez' bound)."""
    q = p - torch.tensor(center, dtype=p.dtype, device=p.device)
    r = torch.tensor(radii, dtype=p.dtype, device=p.device)
    k0 = (q / r).norm(dim=-1)
    k1 = (q / (r * r)).norm(dim=-1).clamp_min(1e-12)
    return k0 * (k0 - 1.0) / k1


def capsule_sdf(p: torch.Tensor, a, b, radius: float) -> torch.Tensor:
    a = torch.tensor(a, dtype=p.dtype, device=p.device)
    b = torch.tensor(b, dtype=p.dtype, device=p.device)
    pa, ba = p - a, b - a
    h = ((pa * ba).sum(-1) / (ba * ba).sum()).clamp(0.0, 1.0)
    return (pa - h[:, None] * ba).norm(dim=-1) - radius


def smooth_union(a: torch.Tensor, b: torch.Tensor, k: float) -> torch.Tensor:
    """Polynomial smooth minimum: blends two SDFs over a band of width ``k``."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def head_sdf(points: torch.Tensor) -> torch.Tensor:
    """Signed distance (metres, negative inside) of the procedural head at ``points`` [N,3]."""
    d = ellipsoid_sdf(points, *CRANIUM)
    d = smooth_union(d, ellipsoid_sdf(points, *FACE), BLEND)
    d = smooth_union(d, ellipsoid_sdf(points, *JAW), BLEND)
    d = smooth_union(d, capsule_sdf(points, *NOSE), 0.6 * BLEND)
    for ear in EARS:
        d = smooth_union(d, ellipsoid_sdf(points, *ear), 0.5 * BLEND)
    d = smooth_union(d, capsule_sdf(points, *NECK), BLEND)
    return torch.maximum(d, NECK_CUT_Z - points[:, 2])  # intersect with z >= cut: closed at the bottom


def pretrain_field(
    field,
    target_sdf,
    grid_points: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 3e-3,
    batch: int = 16384,
    seed: int = 0,
    truncation: float = 0.03,
) -> float:
    """Fit ``field.sdf_and_deformation`` to ``target_sdf`` (a callable) at the grid points.

    Sampling mixes random grid vertices with points jittered near the target surface, and the
    loss is on SDF values clamped to ``±truncation`` (what marching tets needs is the sign and the
    zero crossing, not distances far away). Returns the final mean absolute error (metres) on the
    near-surface band. A :class:`VertexSDF` is simply set to the target.
    """
    with torch.no_grad():
        target_all = target_sdf(grid_points)
    if getattr(field, "per_vertex", False):  # the same test DMTet uses
        with torch.no_grad():
            field.sdf.copy_(target_all)
        return 0.0
    gen = torch.Generator(device="cpu").manual_seed(seed)
    near = grid_points[target_all.abs() < truncation]
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    err = float("nan")
    for step in range(steps):
        dev = grid_points.device  # draws on the CPU generator (reproducible anywhere), then moved
        i = torch.randint(0, grid_points.shape[0], (batch // 2,), generator=gen).to(dev)
        j = torch.randint(0, max(near.shape[0], 1), (batch // 2,), generator=gen).to(dev)
        jitter = ((torch.rand(batch // 2, 3, generator=gen) - 0.5) * 0.01).to(dev)
        pts = torch.cat([grid_points[i], near[j] + jitter]) if near.shape[0] else grid_points[i]
        with torch.no_grad():
            tgt = target_sdf(pts).clamp(-truncation, truncation)
        sdf, _ = field.sdf_and_deformation(pts)
        loss = (sdf.clamp(-truncation, truncation) - tgt).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        err = float(loss.detach())
    return err
