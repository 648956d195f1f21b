"""A real DMTet extraction of the procedural head, unwrapped once per session."""

import pytest


def dmtet_head(resolution: int, noise: float = 0.0, seed: int = 0):
    """(verts float32 [V,3], faces int64 [F,3]): marching tets on the procedural head SDF,
    optionally with Gaussian SDF noise of ``noise`` metres, largest component only."""
    import torch

    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface
    from engine.geometry.mesh_utils import keep_largest_component
    from engine.geometry.tetgrid import make_tet_grid

    grid = make_tet_grid(resolution)
    sdf = head_sdf(grid.vertices)
    if noise:
        sdf = sdf + noise * torch.randn(sdf.shape, generator=torch.Generator().manual_seed(seed))
    mesh = extract_surface(grid, sdf)
    verts, faces = keep_largest_component(mesh.verts, mesh.faces)
    return verts.detach(), faces


@pytest.fixture(scope="session")
def head32():
    return dmtet_head(32)


@pytest.fixture(scope="session")
def head32_layout(head32):
    from engine.texture import unwrap_mesh

    verts, faces = head32
    return unwrap_mesh(verts, faces, pack_resolution=512, padding=2)
