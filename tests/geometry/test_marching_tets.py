"""Tet grid + marching tetrahedra: a sphere comes out closed, manifold, outward and accurate."""

import pytest
import torch

from engine.geometry import mesh_utils
from engine.geometry.marching_tets import extract_surface, marching_tetrahedra
from engine.geometry.tetgrid import make_tet_grid


def test_tet_grid_is_positive_and_conforming():
    grid = make_tet_grid(4, size=0.32)
    assert grid.vertices.shape == (125, 3) and grid.tets.shape == (6 * 64, 4)
    v = grid.vertices[grid.tets.long()]
    det = torch.linalg.det(torch.stack([v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 3] - v[:, 0]], dim=1))
    assert torch.allclose(
        det, torch.full_like(det, grid.cell_size**3), rtol=1e-3
    )  # all positive, same volume
    # Conforming: every interior triangle is shared by exactly two tets, boundary ones by one,
    # and the boundary triangles are exactly 2 per boundary square (6 faces x 16 squares x 2).
    tris = torch.cat(
        [grid.tets[:, [1, 2, 3]], grid.tets[:, [0, 2, 3]], grid.tets[:, [0, 1, 3]], grid.tets[:, [0, 1, 2]]]
    )
    _, counts = torch.unique(torch.sort(tris.long(), dim=1)[0], dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    assert int((counts == 1).sum()) == 6 * 16 * 2
    assert grid.vertices.min().item() == pytest.approx(-0.16) and grid.vertices.max().item() == pytest.approx(
        0.16
    )


@pytest.mark.parametrize("resolution", [32, 64])
def test_sphere_is_accurate_closed_manifold_and_outward(resolution):
    grid = make_tet_grid(resolution)
    radius = 0.1
    center = torch.tensor([0.003, -0.002, 0.001])  # off the grid's symmetry, so no sdf lands on 0 exactly
    sdf = (grid.vertices - center).norm(dim=-1) - radius
    mesh = extract_surface(grid, sdf)
    verts, faces = mesh.verts, mesh.faces
    err = ((verts - center).norm(dim=-1) - radius).abs().max().item()
    assert err < 0.5 * grid.cell_size, f"max radial error {err:.5f} m >= half a cell"
    assert mesh_utils.is_closed_manifold(faces)  # each edge in exactly two faces, consistent winding
    assert mesh_utils.euler_characteristic(verts, faces) == 2
    assert torch.unique(faces).numel() == verts.shape[0]  # no unreferenced vertices
    vol = mesh_utils.signed_volume(verts, faces).item()
    assert vol == pytest.approx(4 / 3 * torch.pi * radius**3, rel=0.03)  # positive: outward
    # Outward per face, not only on average: normals agree with the radial direction.
    centroids = verts[faces].mean(1)
    assert (mesh_utils.face_normals(verts, faces) * (centroids - center)).sum(-1).min() > 0


def test_grid_shortcut_matches_generic_extraction():
    grid = make_tet_grid(24)
    sdf = (grid.vertices / torch.tensor([0.12, 0.09, 0.1])).norm(dim=-1) - 1.0
    fast = extract_surface(grid, sdf)
    full = marching_tetrahedra(grid.vertices, grid.tets, sdf)
    assert torch.equal(fast.edges, full.edges) and torch.allclose(fast.verts, full.verts)
    key = lambda f: torch.sort(f, dim=1)[0].unique(dim=0)  # noqa: E731
    assert torch.equal(key(fast.faces), key(full.faces))


def test_gradients_reach_sdf_and_deformation():
    grid = make_tet_grid(16)
    sdf = (grid.vertices.norm(dim=-1) - 0.08).requires_grad_(True)
    deform = torch.zeros_like(grid.vertices, requires_grad=True)
    mesh = extract_surface(grid, sdf, deform)
    # Growing the sphere: pushing the surface outward must lower the SDF values around it.
    mesh.verts.norm(dim=-1).sum().backward()
    touched = sdf.grad.abs() > 0
    assert touched.sum() > 0 and sdf.grad[touched].max() <= 0
    assert deform.grad.abs().sum() > 0
    # Finite-difference check of one vertex position w.r.t. one SDF value.
    e = mesh.edges[0]
    s = sdf.detach().clone()
    p = grid.vertices

    def vert(sv):
        return (p[e[0]] * sv[e[1]] - p[e[1]] * sv[e[0]]) / (sv[e[1]] - sv[e[0]])

    h = 1e-4
    s2 = s.clone()
    s2[e[0]] += h
    fd = (vert(s2) - vert(s)) / h
    s_req = s.clone().requires_grad_(True)
    out = marching_tetrahedra(p, grid.tets, s_req)
    k = int(((out.edges == e).all(-1)).nonzero()[0, 0])
    (g,) = torch.autograd.grad(out.verts[k].sum(), s_req)
    assert g[e[0]].item() == pytest.approx(fd.sum().item(), rel=1e-2)


def test_empty_field_gives_empty_mesh():
    grid = make_tet_grid(8)
    mesh = extract_surface(grid, torch.ones(grid.vertices.shape[0]))
    assert mesh.verts.shape == (0, 3) and mesh.faces.shape == (0, 3)


def test_bad_resolution_is_explained():
    with pytest.raises(ValueError, match="resolution"):
        make_tet_grid(0)


def test_surface_reaching_the_box_is_closed_at_the_boundary():
    grid = make_tet_grid(16)
    sdf = grid.vertices[:, 2] - 0.05  # a half-space: everything below z = 0.05 is inside
    mesh = extract_surface(grid, sdf)
    assert mesh_utils.is_closed_manifold(mesh.faces)
    assert mesh_utils.signed_volume(mesh.verts, mesh.faces).item() > 0
