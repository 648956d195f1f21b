"""Mesh utilities, regularisers, SDF fields and the procedural head."""

import math

import pytest
import torch

from engine.geometry import mesh_utils, regularisers
from engine.geometry.head_init import head_sdf, pretrain_field
from engine.geometry.marching_tets import extract_surface
from engine.geometry.sdf_field import HashGridEncoding, HashGridSDF, VertexSDF
from engine.geometry.tetgrid import make_tet_grid


def _sphere(resolution=24, radius=0.1):
    grid = make_tet_grid(resolution)
    m = extract_surface(grid, grid.vertices.norm(dim=-1) - radius)
    return m.verts, m.faces


def test_mesh_utilities_on_a_sphere():
    verts, faces = _sphere()
    vn = mesh_utils.vertex_normals(verts, faces)
    radial = torch.nn.functional.normalize(verts, dim=-1)
    assert (vn * radial).sum(-1).min() > 0.95
    area = mesh_utils.surface_area(verts, faces).item()
    assert area == pytest.approx(4 * math.pi * 0.1**2, rel=0.03)
    # Laplacian vectors of a sphere point inward (toward the centre).
    for lap in (mesh_utils.uniform_laplacian(verts, faces), mesh_utils.cotangent_laplacian(verts, faces)):
        assert (lap * radial).sum(-1).mean() < 0
    lengths = mesh_utils.edge_lengths(verts, mesh_utils.unique_edges(faces))
    assert 0 < lengths.mean().item() < 0.32 / 24 * 1.8
    pairs = mesh_utils.interior_edge_face_pairs(faces)
    assert pairs.shape[0] == mesh_utils.unique_edges(faces).shape[0]  # closed: every edge has a pair


def test_chamfer_distance_of_concentric_spheres():
    va, fa = _sphere(32, 0.1)
    vb, fb = _sphere(32, 0.11)
    c = mesh_utils.chamfer_distance(va, fa, vb, fb, n_points=4000)
    assert c["chamfer"] == pytest.approx(0.01, abs=0.0015)
    same = mesh_utils.chamfer_distance(va, fa, va, fa, n_points=4000)
    assert same["chamfer"] < 0.35 * c["chamfer"]  # only the sampling spacing remains


def test_regularisers_prefer_smooth_surfaces():
    verts, faces = _sphere()
    noisy = verts + torch.randn(verts.shape, generator=torch.Generator().manual_seed(0)) * 0.002
    assert regularisers.laplacian_smoothness(noisy, faces) > 2 * regularisers.laplacian_smoothness(
        verts, faces
    )
    assert regularisers.normal_consistency(noisy, faces) > 2 * regularisers.normal_consistency(verts, faces)
    uneven = verts.clone()
    uneven[verts[:, 2] > 0] *= 2.0  # stretch the upper half: its edges grow, the lower half's do not
    assert regularisers.edge_length_variance(uneven, faces) > 1.5 * regularisers.edge_length_variance(verts, faces)
    # The sign regulariser grows with how sharply the two ends of crossing edges disagree.
    grid = make_tet_grid(16)
    sdf = grid.vertices.norm(dim=-1) - 0.08
    edges = extract_surface(grid, sdf).edges
    assert regularisers.sdf_sign_regulariser(sdf * 100, edges) > regularisers.sdf_sign_regulariser(
        sdf * 0.01, edges
    )


def test_hash_grid_encoding_is_continuous_and_trainable():
    enc = HashGridEncoding(
        n_levels=4, n_features=2, log2_table_size=10, base_resolution=4, finest_resolution=64
    )
    assert enc.resolutions[0] == 4 and enc.resolutions[-1] == 64
    torch.nn.init.normal_(enc.table, std=1.0)
    p = torch.tensor([[0.01, 0.02, -0.03]])
    d = torch.tensor([[1e-5, 0.0, 0.0]])
    assert (enc(p) - enc(p + d)).abs().max() < 1e-2  # trilinear: continuous across small moves
    assert enc(p).shape == (1, 8)
    enc(p).sum().backward()
    touched = (enc.table.grad.abs() > 0).any(-1).sum(-1)  # table entries touched per level
    for res, n in zip(enc.resolutions, touched.tolist()):
        if (res + 1) ** 3 <= enc.table_size:
            assert n == 8  # dense level: the 8 corners of one cell
        else:
            assert 1 <= n <= 8  # hashed level: 8 corners, possibly colliding


def test_head_initialisation_is_head_sized_and_faces_minus_y():
    grid = make_tet_grid(48)
    mesh = extract_surface(grid, head_sdf(grid.vertices))
    v = mesh.verts
    lo, hi = v.min(0)[0], v.max(0)[0]
    assert mesh_utils.is_closed_manifold(mesh.faces) and mesh_utils.euler_characteristic(v, mesh.faces) == 2
    top = hi[2].item()
    chin = v[(v[:, 1] < -0.03)][:, 2].min().item()  # lowest point of the face (front half)
    assert 0.20 < top - chin < 0.26, "head ~0.23 m from chin to crown"
    assert -lo[1].item() > hi[1].item(), "the nose sticks out toward -Y"
    assert abs(lo[0].item() + hi[0].item()) < 1e-3, "left-right symmetric"
    assert hi[2].item() < 0.16 and lo[2].item() > -0.16, "inside the grid box"


def ellipsoid_distance(points: torch.Tensor, center, radii, iterations: int = 200) -> torch.Tensor:
    """Exact unsigned distance from points [N, 3] to an axis-aligned ellipsoid's surface.

    Independent of the SDF code: the closest surface point is x_i = e_i^2 y_i / (e_i^2 + t) for the
    one t > -min(e_i^2) with sum (x_i / e_i)^2 = 1 (a monotone function of t), found by bisection
    in float64 in the first octant (the ellipsoid is symmetric)."""
    y = (points.double() - torch.tensor(center, dtype=torch.float64)).abs() + 1e-15
    e2 = torch.tensor(radii, dtype=torch.float64) ** 2
    lo = torch.full((y.shape[0],), -float(e2.min()), dtype=torch.float64)
    hi = torch.full_like(lo, float(y.norm(dim=1).max() * e2.sqrt().max()))
    for _ in range(iterations):
        t = 0.5 * (lo + hi)
        g = ((e2.sqrt() * y / (t[:, None] + e2)) ** 2).sum(1) - 1.0  # decreasing in t
        lo = torch.where(g > 0, t, lo)
        hi = torch.where(g > 0, hi, t)
    x = e2 * y / (0.5 * (lo + hi))[:, None].add(e2)
    return (x - y).norm(dim=1)


def test_ellipsoid_distance_reference_is_exact_on_known_points():
    center, radii = (0.01, -0.02, 0.0), (0.07, 0.09, 0.08)
    pts = torch.tensor([[0.01 + 0.09, -0.02, 0.0], [0.01, -0.02 - 0.05, 0.0], [0.01, -0.02, 0.08 + 0.003]])
    assert torch.allclose(ellipsoid_distance(pts, center, radii),
                          torch.tensor([0.02, 0.04, 0.003], dtype=torch.float64), atol=1e-9)
    theta, phi = torch.rand(50, dtype=torch.float64) * math.pi, torch.rand(50, dtype=torch.float64) * 2 * math.pi
    on = torch.stack([radii[0] * theta.sin() * phi.cos(), radii[1] * theta.sin() * phi.sin(),
                      radii[2] * theta.cos()], 1) + torch.tensor(center, dtype=torch.float64)
    assert ellipsoid_distance(on, center, radii).max() < 1e-9


def test_vertex_field_extracts_an_analytic_ellipsoid():
    """The per-vertex field, set from an ellipsoid's SDF, through DMTet, against the ellipsoid
    itself (exact point-to-surface distances and the closed-form volume), not against another
    extraction of the same values."""
    from engine.geometry.fit import DMTet
    from engine.geometry.head_init import CRANIUM, ellipsoid_sdf
    from engine.geometry.sdf_field import MAX_SAFE_DEFORMATION

    grid = make_tet_grid(32)
    field = VertexSDF(grid.vertices.shape[0], max_deformation=MAX_SAFE_DEFORMATION * grid.cell_size)
    pretrain_field(field, lambda p: ellipsoid_sdf(p, *CRANIUM), grid.vertices)
    result, _ = DMTet(grid, field)()
    verts, faces = result.verts, result.faces
    center, radii = CRANIUM
    dist = ellipsoid_distance(verts.detach(), center, radii)
    # Linear zero crossings of a curved field along 10-17 mm tet edges: measured max 0.50 mm,
    # mean 0.09 mm; volume -0.7 %.
    assert float(dist.max()) < 0.08 * grid.cell_size, float(dist.max())
    assert float(dist.mean()) < 0.015 * grid.cell_size, float(dist.mean())
    exact_volume = 4.0 / 3.0 * math.pi * radii[0] * radii[1] * radii[2]
    assert float(mesh_utils.signed_volume(verts.detach(), faces)) == pytest.approx(exact_volume, rel=0.01)
    assert mesh_utils.is_closed_manifold(faces) and mesh_utils.euler_characteristic(verts, faces) == 2
    # Every part of the ellipsoid is there: its extreme points are reached along each axis.
    extent = (verts.detach().amax(0) - verts.detach().amin(0)) / 2
    assert torch.allclose(extent, torch.tensor(radii), atol=0.08 * grid.cell_size), extent
    (verts.square().sum()).backward()
    assert field.sdf.grad.abs().sum() > 0 and field.raw_deformation.grad.abs().sum() > 0


def test_hash_field_pretrains_to_the_head():
    torch.manual_seed(0)
    grid = make_tet_grid(32)
    from engine.geometry.sdf_field import MAX_SAFE_DEFORMATION

    bound = MAX_SAFE_DEFORMATION * grid.cell_size
    field = HashGridSDF(max_deformation=bound, n_levels=6, log2_table_size=14, finest_resolution=64)
    err = pretrain_field(field, head_sdf, grid.vertices, steps=120, batch=8192)
    assert err < 0.002
    sdf, deform = field.sdf_and_deformation(grid.vertices)
    assert deform.norm(dim=-1).max() <= bound * (1 + 1e-6)
    # The reference is the analytic head's own extraction; the trained network is independent of it.
    ref = extract_surface(grid, head_sdf(grid.vertices))
    got = extract_surface(grid, sdf, deform)
    c = mesh_utils.chamfer_distance(got.verts.detach(), got.faces, ref.verts, ref.faces, n_points=4000)
    assert c["chamfer"] < 0.5 * grid.cell_size
    (got.verts.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())


def test_vertex_sdf_refuses_other_points():
    with pytest.raises(ValueError, match="tet-grid vertices"):
        VertexSDF(10).sdf_and_deformation(torch.zeros(5, 3))


def test_keep_largest_component_drops_a_floater():
    grid = make_tet_grid(32)
    p = grid.vertices
    sdf = torch.minimum(p.norm(dim=-1) - 0.1, (p - torch.tensor([0.13, 0.0, 0.0])).norm(dim=-1) - 0.015)
    mesh = extract_surface(grid, sdf)
    verts, faces = mesh_utils.keep_largest_component(mesh.verts, mesh.faces)
    assert faces.shape[0] < mesh.faces.shape[0]
    assert mesh_utils.is_closed_manifold(faces) and mesh_utils.euler_characteristic(verts, faces) == 2
    assert verts.norm(dim=-1).max() < 0.1 + grid.cell_size  # only the big sphere remains
    assert torch.unique(faces).numel() == verts.shape[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_extraction_and_fields_run_on_cuda():
    grid = make_tet_grid(64).to("cuda")
    field = HashGridSDF(max_deformation=0.25 * grid.cell_size).to("cuda")
    pretrain_field(field, head_sdf, grid.vertices, steps=50)
    sdf, deform = field.sdf_and_deformation(grid.vertices)
    mesh = extract_surface(grid, sdf, deform)
    assert mesh.verts.is_cuda and mesh_utils.is_closed_manifold(mesh.faces)
    mesh.verts.sum().backward()
    assert field.encoding.table.grad is not None


def test_dmtet_evaluates_a_neural_field_only_on_the_surface_band_with_the_same_result():
    from engine.geometry.fit import DMTet

    torch.manual_seed(0)
    grid = make_tet_grid(24)
    field = HashGridSDF(
        max_deformation=0.25 * grid.cell_size, n_levels=4, log2_table_size=12, finest_resolution=24
    )
    pretrain_field(field, head_sdf, grid.vertices, steps=40, batch=4096)
    result, _ = DMTet(grid, field)()
    result.verts.square().sum().backward()
    sparse_grad = field.encoding.table.grad.clone()
    field.zero_grad()
    sdf, deform = field.sdf_and_deformation(grid.vertices)  # the plain, whole-grid way
    full = extract_surface(grid, sdf, deform)
    full.verts.square().sum().backward()
    assert torch.equal(result.faces, full.faces)
    assert torch.allclose(result.verts, full.verts, atol=1e-6)
    diff = (sparse_grad - field.encoding.table.grad).abs().max().item()
    assert diff <= 1e-3 * field.encoding.table.grad.abs().max().item()  # float32 summation order only
