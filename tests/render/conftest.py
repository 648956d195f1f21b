"""Marching-tets meshes for the render tests: the procedural head extracted on a 64^3 DMTet grid,
clean and with ~2 mm of SDF noise (a bumpy surface whose silhouette zigzags through many small
front/back-facing patches, as an SDS-optimised head's does). Icospheres alone never show what
several contour edges crossing one pixel pair do to anti-aliasing."""

from __future__ import annotations

import pytest
import torch

SDF_NOISE_M = 0.002


def dmtet_head(kind: str, resolution: int = 64):
    """(verts float32 [V, 3], faces int64 [F, 3]) of the procedural head, kind 'clean' or 'noisy'."""
    from engine.geometry.head_init import head_sdf
    from engine.geometry.marching_tets import extract_surface
    from engine.geometry.tetgrid import make_tet_grid

    grid = make_tet_grid(resolution)
    sdf = head_sdf(grid.vertices)
    if kind == "noisy":
        sdf = sdf + SDF_NOISE_M * torch.randn(sdf.shape, generator=torch.Generator().manual_seed(0))
    elif kind != "clean":
        raise ValueError(kind)
    mesh = extract_surface(grid, sdf)
    return mesh.verts.detach(), mesh.faces


@pytest.fixture(scope="session")
def dmtet_heads():
    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = dmtet_head(kind)
        return cache[kind]

    return get


def supersampled_mask(verts, faces, cameras, factor: int = 8) -> torch.Tensor:
    """Coverage [B, H, W, 1] from an unantialiased render at factor x the resolution, box-filtered:
    the reference the anti-aliased mask approximates."""
    import dataclasses

    from engine.render import render

    h, w = cameras.resolution
    big = dataclasses.replace(cameras, resolution=(h * factor, w * factor))
    m = render(verts, faces, big, passes=("mask",), antialias=False, cull_backfaces=True)["mask"]
    return m.reshape(len(cameras), h, factor, w, factor).mean((2, 4)).unsqueeze(-1)


@pytest.fixture(scope="session")
def supersample():
    """:func:`supersampled_mask` (a fixture: test modules cannot import conftest in importlib mode)."""
    return supersampled_mask
