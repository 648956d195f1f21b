"""Finite-difference checks (float64) of the rasteriser's gradients: vertex positions in the
interior (through depth, normals, colours) and on the silhouette (through the anti-aliased
mask), vertex attributes, texture texels and UV coordinates."""

from __future__ import annotations

import pytest
import torch

from engine.render import icosphere, mesh_topology, orbit_cameras, render, sample_lights
from engine.render.rasterize_torch import rasterize

H = 40


def directional_check(fn, x: torch.Tensor, direction: torch.Tensor, h: float):
    """(autograd directional derivative, central finite difference) of scalar fn at x."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x), x)
    with torch.no_grad():
        fd = (fn(x + h * direction) - fn(x - h * direction)) / (2 * h)
    return float((g * direction).sum()), float(fd)


@pytest.fixture(scope="module")
def scene():
    torch.manual_seed(0)
    verts, faces = icosphere(2, 0.1, dtype=torch.float64)  # 320 faces: several pixels each
    # A slightly irregular blob so no symmetry hides errors.
    verts = verts * (1.0 + 0.08 * torch.sin(7.0 * verts[:, :1] / 0.1) * torch.cos(5.0 * verts[:, 2:] / 0.1))
    cams = orbit_cameras([10.0, -60.0], [15.0, -5.0], radius=0.5, fov_deg=30.0, resolution=(H, H))
    weights = torch.rand(len(cams), H, H, 3, dtype=torch.float64)
    return verts, faces, cams, weights


def silhouette_vertices(verts, faces, cams):
    clip = torch.cat([verts, torch.ones_like(verts[:, :1])], 1) @ cams.world_to_clip().double()[0].T
    r = rasterize(clip[None], faces, cams.resolution, mesh_topology(faces))
    e = r.topology.edge_vertices[r.silhouette[0]]
    return torch.unique(e.flatten())


def test_silhouette_vertex_gradient_through_antialiased_mask(scene):
    verts, faces, cams, weights = scene
    cams0 = cams[0]
    sil = silhouette_vertices(verts, faces, cams0)
    gen = torch.Generator().manual_seed(1)
    checked = 0
    for v in sil[:12].tolist():
        direction = torch.zeros_like(verts)
        direction[v] = torch.randn(3, generator=gen, dtype=torch.float64)

        def loss(x):
            return (render(x, faces, cams0, passes=("mask",))["mask"][..., 0] * weights[:1, ..., 0]).sum()

        auto, fd = directional_check(loss, verts, direction, 1e-7)
        if abs(fd) < 1e-3:
            continue  # this vertex's edges happen to cross no pixel pair in this view
        assert auto == pytest.approx(fd, rel=1e-4, abs=1e-6), (v, auto, fd)
        checked += 1
    assert checked >= 4


def test_interior_vertex_gradient_through_depth_normals_and_colors(scene):
    verts, faces, cams, weights = scene
    colors = torch.rand(verts.shape[0], 3, dtype=torch.float64)
    # Vertices facing camera 0 head-on: far from any silhouette.
    front = -cams.positions[0].double() / cams.positions[0].double().norm()
    facing = (verts / verts.norm(dim=1, keepdim=True)) @ (-front)
    interior = torch.nonzero(facing > 0.8).flatten()[:4]
    assert interior.numel() == 4

    def loss(x):
        out = render(x, faces, cams, passes=("depth", "normal_camera", "color"), vertex_colors=colors)
        return ((out["depth"][..., 0] * weights[..., 0]).sum() + (out["normal_camera"] * weights).sum()
                + (out["color"] * weights.flip(-1)).sum())

    gen = torch.Generator().manual_seed(2)
    for v in interior.tolist():
        direction = torch.zeros_like(verts)
        direction[v] = torch.randn(3, generator=gen, dtype=torch.float64)
        auto, fd = directional_check(loss, verts, direction, 1e-7)
        assert abs(fd) > 1e-3
        assert auto == pytest.approx(fd, rel=1e-5, abs=1e-8), (v, auto, fd)


def test_attribute_texture_and_uv_gradients(scene):
    verts, faces, cams, weights = scene
    gen = torch.Generator().manual_seed(3)
    colors = torch.rand(verts.shape[0], 3, dtype=torch.float64, generator=gen)
    uv = torch.rand(verts.shape[0], 2, dtype=torch.float64, generator=gen) * 0.8 + 0.1
    tex = torch.rand(16, 16, 3, dtype=torch.float64, generator=gen)
    lights = sample_lights(len(cams), seed=4)

    def by_colors(c):
        return (render(verts, faces, cams, passes=("color",), vertex_colors=c)["color"] * weights).sum()

    def by_texture(t):
        out = render(verts, faces, cams, passes=("albedo", "shaded"), uv=uv, texture=t, lights=lights)
        return (out["albedo"] * weights).sum() + (out["shaded"] * weights.flip(-1)).sum()

    def by_uv(u):
        return (render(verts, faces, cams, passes=("albedo",), uv=u, texture=tex)["albedo"] * weights).sum()

    for fn, x in ((by_colors, colors), (by_texture, tex), (by_uv, uv)):
        direction = torch.randn(x.shape, dtype=torch.float64, generator=gen)
        auto, fd = directional_check(fn, x, direction, 1e-6)
        assert abs(fd) > 1e-3
        assert auto == pytest.approx(fd, rel=1e-5, abs=1e-8), (fn.__name__, auto, fd)


def test_mask_gradient_moves_silhouette_outward():
    """Scaling a sphere up grows its mask: d(sum mask)/d(scale) matches the analytic 2 A / s."""
    verts, faces = icosphere(4, 0.1, dtype=torch.float64)
    cams = orbit_cameras([0.0], [0.0], radius=0.5, fov_deg=30.0, resolution=(64, 64))
    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    mask = render(verts * scale, faces, cams, passes=("mask",))["mask"]
    area = mask.sum()
    area.backward()
    # Area ~ pi f^2 R^2 / (D^2 - R^2): d/ds at s=1 = 2 A D^2 / (D^2 - R^2).
    expected = 2 * float(area.detach()) * 0.25 / (0.25 - 0.01)
    # The discrete anti-aliasing gives the exact derivative of the discrete coverage (checked by
    # finite differences above), which differs from the continuous one by a few percent at 64^2.
    assert float(scale.grad) == pytest.approx(expected, rel=0.05)


def test_silhouette_gradient_on_a_noisy_marching_tets_mesh():
    """The same check where several contour edges cross one pixel pair and some pixels have their
    blend weights renormalised (DMTet extraction of an SDF with noise, float64): vertices that
    get a gradient, and silhouette vertices that get none (hidden contours), both agree with
    finite differences."""
    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface
    from engine.geometry.tetgrid import make_tet_grid

    grid = make_tet_grid(32)
    noise = torch.randn(grid.vertices.shape[0], generator=torch.Generator().manual_seed(5))
    mesh = extract_surface(grid, head_sdf(grid.vertices) + 0.003 * noise)
    verts, faces = mesh.verts.detach().double(), mesh.faces
    cams = orbit_cameras([25.0], [10.0], radius=0.61, fov_deg=30.0, resolution=(H, H))
    weights = torch.rand(1, H, H, dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def loss(x):
        return (render(x, faces, cams, passes=("mask",))["mask"][..., 0] * weights).sum()

    x = verts.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    strength = grad.norm(dim=1)
    moving = torch.argsort(strength, descending=True)[:8]
    sil = silhouette_vertices(verts, faces, cams)
    still = sil[strength[sil] == 0][:4]
    assert strength[moving].min() > 0 and still.numel() == 4
    gen = torch.Generator().manual_seed(7)
    for v in torch.cat([moving, still]).tolist():
        direction = torch.zeros_like(verts)
        direction[v] = torch.randn(3, generator=gen, dtype=torch.float64)
        auto, fd = directional_check(loss, verts, direction, 1e-7)
        assert auto == pytest.approx(fd, rel=1e-4, abs=1e-6), (v, auto, fd)
