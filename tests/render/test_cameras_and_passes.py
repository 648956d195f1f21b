"""Cameras (conventions, sampler determinism, framing) and the render passes' contract."""

from __future__ import annotations

import math

import pytest
import torch

from engine.render import (Lights, icosphere, normals_to_image, orbit_cameras, radius_for_fill, render,
                           sample_lights, sample_orbit_cameras, vertex_normals)


def test_front_camera_sits_at_minus_y_and_looks_at_the_face():
    cams = orbit_cameras([0.0, 90.0, -90.0, 180.0], [0.0, 0.0, 0.0, 0.0], radius=2.0)
    assert torch.allclose(cams.positions, torch.tensor(
        [[0.0, -2.0, 0.0], [2.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]), atol=1e-5)
    assert cams.labels == ["front", "side", "side", "back"]
    # World +Z is image-up and the target is straight ahead (-Z in camera space).
    w2c = cams.world_to_cam
    up = w2c[:, :3, :3] @ torch.tensor([0.0, 0.0, 1.0])
    assert torch.allclose(up, torch.tensor([0.0, 1.0, 0.0]).expand(4, 3), atol=1e-6)
    target_cam = (w2c @ torch.tensor([0.0, 0.0, 0.0, 1.0]))[:, :3]
    assert torch.allclose(target_cam, torch.tensor([0.0, 0.0, -2.0]).expand(4, 3), atol=1e-5)
    # Front view: world +X (the subject's left) appears on the image's right.
    clip = cams.world_to_clip()[0] @ torch.tensor([0.1, 0.0, 0.0, 1.0])
    assert clip[0] > 0


def test_labels_follow_azimuth_limits():
    cams = orbit_cameras([0, 45, 46, 134, 135, -135, -44.9, 225], 0.0, radius=1.0)
    assert cams.labels == ["front", "front", "side", "side", "back", "back", "front", "back"]


def test_sampler_is_deterministic_and_oversamples_front():
    a = sample_orbit_cameras(400, seed=7, resolution=(64, 64))
    b = sample_orbit_cameras(400, seed=7, resolution=(64, 64))
    c = sample_orbit_cameras(400, seed=8, resolution=(64, 64))
    assert torch.equal(a.world_to_cam, b.world_to_cam) and a.labels == b.labels
    assert not torch.equal(a.world_to_cam, c.world_to_cam)
    el = a.elevation_deg
    assert float(el.min()) >= -10 and float(el.max()) <= 30
    front = a.labels.count("front") / 400
    # Uniform azimuth would give 25 % front views; front_oversample=0.5 gives 50 % + 25 % / 2.
    assert 0.55 < front < 0.70
    assert a.labels.count("back") > 40
    sub = a[3:6]
    assert len(sub) == 3 and sub.labels == a.labels[3:6]
    assert torch.equal(a[[0, 2]].world_to_cam, a.world_to_cam[[0, 2]])


def test_default_radius_makes_the_head_fill_the_frame():
    fov, fill, height = 30.0, 0.7, 0.23
    cams = sample_orbit_cameras(4, seed=0, resolution=(128, 128), fov_deg=fov, fill=fill, head_height=height,
                                elevation_range_deg=(0, 0))
    r = radius_for_fill(height, fov, fill)
    assert torch.allclose(cams.positions.norm(dim=1), torch.full((4,), r), atol=1e-5)
    verts, faces = icosphere(3, height / 2)
    mask = render(verts, faces, cams, passes=("mask",))["mask"]
    rows = (mask[0, :, :, 0].sum(1) > 0.5).sum().item()
    assert abs(rows / 128 - fill) < 0.04


@pytest.fixture(scope="module")
def ball():
    verts, faces = icosphere(3, 0.1)
    cams = orbit_cameras([0.0, 90.0], [0.0, 0.0], radius=0.5, fov_deg=30.0, resolution=(48, 64))
    return verts, faces, cams


@pytest.fixture(scope="module", params=["icosphere", "dmtet_clean", "dmtet_noisy"])
def any_mesh(request, dmtet_heads):
    """The ball, and marching-tets heads (conftest.py), whose silhouettes zigzag: several contour
    edges cross one pixel pair there, which an icosphere never shows."""
    if request.param == "icosphere":
        verts, faces = icosphere(3, 0.1)
        radius = 0.5
    else:
        verts, faces = dmtet_heads(request.param.split("_")[1])
        radius = 0.61  # the head (neck cut included) inside the frame
    cams = orbit_cameras([0.0, 90.0], [0.0, 0.0], radius=radius, fov_deg=30.0, resolution=(48, 64))
    return verts, faces, cams


def test_pass_shapes_ranges_and_backgrounds(any_mesh, supersample):
    verts, faces, cams = any_mesh
    uv = torch.rand(verts.shape[0], 2, generator=torch.Generator().manual_seed(0))
    tex = torch.rand(8, 8, 3)
    out = render(verts, faces, cams, uv=uv, texture=tex, background=0.25, lights=sample_lights(2, seed=1),
                 passes=("mask", "depth", "normal_world", "normal_camera", "albedo", "shaded", "uv",
                         "position", "triangle_id"))
    channels = dict(mask=1, depth=1, normal_world=3, normal_camera=3, albedo=3, shaded=3, uv=2, position=3,
                    triangle_id=1)
    for k, c in channels.items():
        assert out[k].shape == (2, 48, 64, c), k
    empty = out["triangle_id"][..., 0] < 0
    assert empty[:, 0, 0].all() and not empty[:, 24, 32].any()
    assert (out["depth"][empty] == 0).all()
    mask = out["mask"][..., 0]
    assert mask.min() >= 0 and mask.max() <= 1
    # Anti-aliasing lifts an empty pixel only next to a covered one.
    covered = (~empty).float()[:, None]
    near = torch.nn.functional.max_pool2d(covered, 3, stride=1, padding=1)[:, 0] > 0
    assert not ((mask > 0) & empty & ~near).any()
    far = mask == 0
    for k in ("normal_world", "albedo", "shaded"):
        assert torch.allclose(out[k][far], torch.full_like(out[k][far], 0.25)), k
    for k in ("albedo", "shaded"):
        assert out[k].min() >= 0 and out[k].max() <= 1, k
    norms = out["normal_camera"].norm(dim=-1)
    assert norms.max() <= 1 + 1e-5  # unit normals blended with the background: never longer
    sharp = render(verts, faces, cams, passes=("normal_camera",), antialias=False)["normal_camera"].norm(dim=-1)
    assert torch.allclose(sharp[~empty], torch.ones_like(sharp[~empty]), atol=1e-4)
    img = normals_to_image(out["normal_camera"] - (1 - out["mask"]) * 0.25, out["mask"], background=1.0)
    assert img.min() >= -1e-6 and img.max() <= 1 + 1e-6
    # Coverage: the anti-aliased mask's area matches an 8x-supersampled render's.
    assert float(mask.sum()) == pytest.approx(float(supersample(verts, faces, cams).sum()), rel=5e-3)


def test_ball_centre_pixel_faces_the_camera(ball):
    verts, faces, cams = ball
    out = render(verts, faces, cams, passes=("normal_world", "normal_camera", "depth"))
    # Centre pixel of the front view looks straight at the ball: normal toward the camera.
    assert out["normal_camera"][0, 24, 32, 2] > 0.99
    assert out["normal_world"][0, 24, 32, 1] < -0.99  # the front camera is at -Y
    assert out["depth"][0, 24, 32, 0] == pytest.approx(0.4, abs=2e-3)


def test_image_rows_start_at_the_top(ball):
    verts, faces, cams = ball
    raised = verts + torch.tensor([0.0, 0.0, 0.08])  # move the ball up in the world
    m = render(raised, faces, cams, passes=("mask",))["mask"][0, :, :, 0]
    rows = torch.nonzero(m.sum(1) > 0).flatten()
    assert rows.float().mean() < 24  # it appears in the upper half of the image


def test_texture_lookup_orientation():
    """uv (0.25, 0.9) must read the texture's top-left quadrant (row 0 = v 1)."""
    verts = torch.tensor([[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]) * 0.1
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    tex = torch.zeros(2, 2, 3)
    tex[0, 0] = torch.tensor([1.0, 0.0, 0.0])  # top-left red
    uv = torch.full((4, 2), 0.0) + torch.tensor([0.25, 0.9])
    cams = orbit_cameras([0.0], [0.0], radius=0.5, resolution=(16, 16))
    albedo = render(verts, faces, cams, passes=("albedo",), uv=uv, texture=tex, antialias=False)["albedo"]
    assert torch.allclose(albedo[0, 8, 8], torch.tensor([1.0, 0.0, 0.0]))


def test_per_view_vertices_render_per_view(ball):
    verts, faces, cams = ball
    per_view = torch.stack([verts, verts * 1.5])
    masks = render(per_view, faces, cams, passes=("mask",))["mask"]
    alone = render(verts * 1.5, faces, cams[1], passes=("mask",))["mask"]
    assert torch.allclose(masks[1:], alone, atol=1e-5)
    assert masks[1].sum() > 2.0 * masks[0].sum()


def test_normals_to_image_encodes_camera_normals(ball):
    verts, faces, cams = ball
    out = render(verts, faces, cams, passes=("mask", "normal_camera"))
    img = normals_to_image(out["normal_camera"], out["mask"], background=1.0)
    assert img.shape == (2, 48, 64, 3) and img.min() >= 0 and img.max() <= 1
    assert torch.allclose(img[0, 24, 32], torch.tensor([0.5, 0.5, 1.0]), atol=0.02)
    assert torch.allclose(img[0, 0, 0], torch.ones(3))


def test_shading_lambert_and_ambient(ball):
    verts, faces, cams = ball
    amb = render(verts, faces, cams[0], passes=("shaded", "mask"), lights=Lights.ambient(1, 0.5))
    inside = amb["mask"][..., 0] == 1
    assert torch.allclose(amb["shaded"][inside], torch.full_like(amb["shaded"][inside], 0.35), atol=1e-5)
    # A directional light from the camera side: Lambert is brightest at the centre.
    li = Lights.ambient(1, 0.0)
    li.key_kind[:] = 1
    li.key_vector[:] = torch.tensor([0.0, -1.0, 0.0])
    li.key_color[:] = 1.0
    lit = render(verts, faces, cams[0], passes=("shaded",), lights=li)["shaded"][0, :, :, 0]
    assert lit[24, 32] == pytest.approx(0.7, abs=5e-3)
    assert lit[24, 32] > lit[24, 40] > lit[24, 44]


def test_sample_lights_is_deterministic_and_covers_kinds():
    a, b = sample_lights(30, seed=3), sample_lights(30, seed=3)
    assert torch.equal(a.sh, b.sh) and torch.equal(a.key_vector, b.key_vector)
    kinds = set(a.key_kind.tolist())
    assert kinds == {0, 1, 2}
    assert (a.sh[:, 0] > 0).all()


def test_vertex_normals_of_sphere_point_outward():
    verts, faces = icosphere(3, 0.3)
    n = vertex_normals(verts, faces)
    assert torch.allclose(n, verts / 0.3, atol=0.02)  # area weighting on uneven faces: ~1e-2


def test_bad_inputs_are_explained(ball):
    verts, faces, cams = ball
    with pytest.raises(ValueError, match="unknown pass"):
        render(verts, faces, cams, passes=("maks",))
    with pytest.raises(ValueError, match=r"\[B,V,3\]"):
        render(torch.stack([verts] * 3), faces, cams)
    with pytest.raises(ValueError, match="uv"):
        render(verts, faces, cams, passes=("albedo",), texture=torch.zeros(4, 4, 3))
    assert math.isfinite(float(render(verts, faces, cams, passes=("albedo",))["albedo"].sum()))


def test_backface_culling_gives_the_same_image_on_a_closed_mesh(ball):
    verts, faces, cams = ball
    passes = ("mask", "depth", "normal_camera", "triangle_id")
    full = render(verts, faces, cams, passes=passes)
    culled = render(verts, faces, cams, passes=passes, cull_backfaces=True)
    for p in passes:
        assert torch.equal(full[p], culled[p]), p
    # Inside out, the near half is culled and the inside of the far half shows.
    depth = render(verts, faces[:, [0, 2, 1]], cams, passes=("depth",), cull_backfaces=True)["depth"]
    assert float(depth[0, 24, 32, 0]) == pytest.approx(0.6, abs=2e-3)


def test_a_surface_no_camera_sees_renders_background_and_a_zero_gradient():
    # An SDS step can shrink a surface to a floater outside every view; the renderer must return
    # the background (and a zero gradient), not fail on the empty set of covered pixels.
    v, f = icosphere(2)
    verts = (v * 0.01 + torch.tensor([5.0, 0.0, 0.0])).requires_grad_()
    cams = orbit_cameras([0.0, 90.0], [0.0, 0.0], radius=1.0, resolution=(32, 32))
    shaded = render(verts, f, cams, passes=("shaded",), background=1.0)["shaded"]
    assert torch.equal(shaded, torch.ones(2, 32, 32, 3))
    passes = render(verts, f, cams, passes=("mask", "normal_camera"))  # as the geometry stage renders
    assert passes["mask"].shape == (2, 32, 32, 1) and float(passes["mask"].detach().abs().sum()) == 0.0
    image = normals_to_image(passes["normal_camera"], passes["mask"], background=1.0)
    assert torch.equal(image, torch.ones(2, 32, 32, 3))
    image.sum().backward()
    assert verts.grad is None or float(verts.grad.abs().sum()) == 0.0
