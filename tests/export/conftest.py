"""A textured head with expressions, built from a real DMTet extraction of the procedural head."""

import numpy as np
import pytest

EXPRESSIONS = ["neutral", "smiling", "with curly red hair"]


@pytest.fixture(scope="session")
def textured_head():
    """(HeadMesh with 2 non-neutral expressions and corner UVs, UVLayout, albedo [64,64,3], roughness [64,64,1])."""
    import torch

    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface
    from engine.geometry.mesh_utils import keep_largest_component
    from engine.geometry.tetgrid import make_tet_grid
    from engine.result_format import HeadMesh
    from engine.texture import unwrap_mesh

    grid = make_tet_grid(24)
    mesh = extract_surface(grid, head_sdf(grid.vertices))
    verts, faces = keep_largest_component(mesh.verts, mesh.faces)
    v, f = verts.detach().numpy().astype(np.float32), faces.numpy().astype(np.int32)
    layout = unwrap_mesh(v, f, pack_resolution=256)
    offsets = np.zeros((len(EXPRESSIONS), len(v), 3), np.float32)
    mouth = np.exp(-(((v[:, 0]) / 0.03) ** 2 + ((v[:, 2] + 0.05) / 0.02) ** 2))  # jaw area
    offsets[1, :, 2] = -0.012 * mouth * (v[:, 1] < 0)  # the jaw drops, front only
    offsets[2] = 0.004 * np.sin(40 * v)  # a bumpy "hair" layer everywhere
    head = HeadMesh(vertices=v, faces=f, expression_names=list(EXPRESSIONS), expression_offsets=offsets,
                    uvs=layout.corner_uvs())
    rng = np.random.default_rng(0)
    albedo = np.clip(rng.uniform(0.3, 0.8, (64, 64, 3)), 0, 1).astype(np.float32)
    roughness = np.full((64, 64, 1), 0.55, np.float32)
    torch.manual_seed(0)
    return head, layout, albedo, roughness
