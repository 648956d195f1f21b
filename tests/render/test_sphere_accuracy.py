"""The torch rasteriser against an analytic sphere: coverage (mask sum vs the exact area of the
sphere's perspective silhouette, an ellipse) and normals (vs ray-sphere normals at pixel centres)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.render import Cameras, icosphere, look_at, orbit_cameras, render

RADIUS = 0.1


def ellipse_area_pixels(center_cam: torch.Tensor, radius: float, cams: Cameras, i: int) -> float:
    """Exact image area (pixels^2) of a sphere's silhouette seen by camera i.

    A ray (X, Y, -1) hits the sphere iff (p.c')^2 >= k |p|^2 with p = (X, Y, 1), c' = (cx, cy, -cz),
    k = |c|^2 - R^2: the complement is the quadric u^T A u + 2 b^T u + d <= 0 in u = (X, Y),
    an ellipse of area pi (b^T A^-1 b - d) / sqrt(det A); one unit of (X, Y) is f_pix^2 pixels^2.
    """
    c = center_cam.to(torch.float64)
    k = float(c @ c) - radius**2
    cp = torch.tensor([c[0], c[1], -c[2]], dtype=torch.float64)
    neg_q = k * torch.eye(3, dtype=torch.float64) - torch.outer(cp, cp)
    a, b, d = neg_q[:2, :2], neg_q[:2, 2], neg_q[2, 2]
    area_xy = math.pi * float(b @ torch.linalg.solve(a, b) - d) / math.sqrt(float(torch.det(a)))
    return area_xy * float(cams.focal_pixels()[i]) ** 2


def pixel_rays(cams: Cameras, i: int) -> torch.Tensor:
    """[H, W, 3] camera-space ray directions (X, Y, -1) through pixel centres."""
    h, w = cams.resolution
    p = cams.projection()[i].to(torch.float64)
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) * 2.0 / w - 1.0
    ys = 1.0 - (torch.arange(h, dtype=torch.float64) + 0.5) * 2.0 / h
    x = (xs / p[0, 0])[None, :].expand(h, w)
    y = (ys / p[1, 1])[:, None].expand(h, w)
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


@pytest.fixture(scope="module")
def scene():
    verts, faces = icosphere(5, RADIUS)  # 20480 faces
    center = torch.tensor([0.02, -0.01, 0.03])
    cams = orbit_cameras([0.0, 70.0, 180.0], [0.0, 25.0, -10.0], radius=0.5, fov_deg=30.0,
                         resolution=(160, 160), target=(0.0, 0.0, 0.0))
    # Off-centre sphere: the silhouette is a true ellipse, not a circle.
    out = render(verts + center, faces, cams, passes=("mask", "normal_camera", "depth"))
    return verts, faces, center, cams, out


def test_coverage_matches_analytic_area_within_half_a_percent(scene):
    verts, faces, center, cams, out = scene
    for i in range(len(cams)):
        c_cam = (cams.world_to_cam[i].double() @ torch.cat([center.double(), torch.ones(1).double()]))[:3]
        exact = ellipse_area_pixels(c_cam, RADIUS, cams, i)
        got = float(out["mask"][i].sum())
        assert abs(got / exact - 1.0) < 0.005, (i, got, exact)
        # The anti-aliased mask really is fractional along the silhouette.
        m = out["mask"][i]
        assert ((m > 0.05) & (m < 0.95)).sum() > 50


def test_coverage_of_centred_sphere_is_the_closed_form_circle():
    verts, faces = icosphere(5, RADIUS)
    cams = orbit_cameras([0.0], [0.0], radius=0.45, fov_deg=40.0, resolution=(96, 128))
    mask = render(verts, faces, cams, passes=("mask",))["mask"]
    r_pix = float(cams.focal_pixels()[0]) * math.tan(math.asin(RADIUS / 0.45))
    exact = math.pi * r_pix**2
    assert abs(float(mask.sum()) / exact - 1.0) < 0.005


def test_normals_match_ray_sphere_normals_within_two_degrees(scene):
    verts, faces, center, cams, out = scene
    for i in range(len(cams)):
        c_cam = (cams.world_to_cam[i].double() @ torch.cat([center.double(), torch.ones(1).double()]))[:3]
        rays = pixel_rays(cams, i)
        # Nearest ray-sphere hit: |t r - c|^2 = R^2.
        a = (rays * rays).sum(-1)
        bq = (rays * c_cam).sum(-1)
        disc = bq**2 - a * (float(c_cam @ c_cam) - RADIUS**2)
        t = (bq - disc.clamp_min(0).sqrt()) / a
        hit = rays * t[..., None]
        n_true = (hit - c_cam) / RADIUS
        m = out["mask"][i, ..., 0].double()
        # Fully covered pixels whose four neighbours are covered too (away from the silhouette).
        core = m == 1
        core[1:-1, 1:-1] &= core[:-2, 1:-1] & core[2:, 1:-1] & core[1:-1, :-2] & core[1:-1, 2:]
        core &= disc > 0
        n = out["normal_camera"][i].double()
        cos = (n[core] * n_true[core]).sum(-1).clamp(-1, 1)
        ang = torch.rad2deg(torch.acos(cos))
        assert core.sum() > 3000
        assert float(ang.mean()) < 0.5, float(ang.mean())
        assert float(torch.quantile(ang, 0.99)) < 2.0, float(torch.quantile(ang, 0.99))
        # Depth (camera z distance) agrees with the ray hit to within the tessellation's sag.
        depth = out["depth"][i, ..., 0].double()
        assert float((depth[core] - (-hit[core][:, 2])).abs().max()) < 1e-3


def test_cameras_from_look_at_and_orbit_agree():
    cams = orbit_cameras([30.0], [10.0], radius=0.6)
    again = Cameras(world_to_cam=look_at(cams.positions, torch.zeros(1, 3)), fov_y=cams.fov_y,
                    resolution=cams.resolution)
    assert torch.allclose(again.world_to_cam, cams.world_to_cam, atol=1e-6)
