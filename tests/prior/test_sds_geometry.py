"""Render -> SDS -> field: score distillation moves DMTet geometry, and only because of the prior.

A hash-grid SDF pretrained to a sphere on a small tet grid, extracted by marching tets, rendered
as normal maps from two views, encoded by the (tiny) VAE; the SDS gradient, with fixed noise and
timesteps, flows back through the VAE, the rasteriser and marching tets into the field.
"""

from __future__ import annotations

import pytest
import torch

from engine.geometry.fit import DMTet
from engine.geometry.head_init import pretrain_field
from engine.geometry.sdf_field import HashGridSDF
from engine.geometry.tetgrid import make_tet_grid
from engine.prior.sds import ScoreDistillation, SDSConfig
from engine.render import normals_to_image, orbit_cameras, render

AZIMUTHS = [0.0, 90.0]


@pytest.fixture
def sphere_dmtet():
    torch.manual_seed(0)
    grid = make_tet_grid(16, center=(0.0, 0.0, 0.0), size=0.4)
    field = HashGridSDF(center=(0.0, 0.0, 0.0), size=0.4, hidden=32, n_levels=4, log2_table_size=12,
                        finest_resolution=32)
    error = pretrain_field(field, lambda p: p.norm(dim=-1) - 0.12, grid.vertices, steps=150, batch=4096, lr=1e-2)
    assert error < 0.01
    return DMTet(grid, field)


def _latents(prior, dmtet, cameras):
    result, sdf = dmtet()
    out = render(result.verts, result.faces, cameras, passes=("mask", "normal_camera"))
    image = normals_to_image(out["normal_camera"], out["mask"])
    latents = prior.encode_images(image)
    return result, latents


def _params(dmtet):
    return [p for p in dmtet.field.parameters() if p.requires_grad]


def test_sds_moves_the_geometry_along_the_priors_gradient(base_prior, sphere_dmtet, expected_sds_gradient):
    prior, dmtet = base_prior, sphere_dmtet
    cameras = orbit_cameras(AZIMUTHS, [0.0, 0.0], radius=0.6, fov_deg=40.0, resolution=(64, 64))
    cond = prior.conditioning(torch.randn(512, generator=torch.Generator().manual_seed(1)), "smiling", view=AZIMUTHS)
    g = torch.Generator().manual_seed(2)
    noise, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([300, 600])
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=2.0))
    params = _params(dmtet)

    result, latents = _latents(prior, dmtet, cameras)
    verts_before = result.verts.detach().clone()
    z_before = latents.detach().clone()
    loss, _ = sds.step_latents(latents, cond, 0, 10, noise=noise, t=t)
    grads = torch.autograd.grad(loss, params, retain_graph=True)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0  # the prior's opinion reached the field

    # It is the SDS gradient and nothing else: the field's gradient is the expected w(t)(ε̂ − ε)/B
    # (computed by hand) pulled back through VAE, rasteriser and marching tets by autograd.
    expected = expected_sds_gradient(prior, z_before, cond, noise, t, 2.0) / 2
    pulled = torch.autograd.grad(latents, params, grad_outputs=expected.to(latents.dtype))
    for got, want in zip(grads, pulled):
        assert float((got - want).norm()) <= 1e-4 * float(want.norm()) + 1e-9

    # A small step against that gradient moves the surface and lowers the linearised SDS objective
    # <g, z> (the direction the prior asks for), as a descent step must.
    norm = torch.sqrt(sum(gr.pow(2).sum() for gr in grads))
    with torch.no_grad():
        for p, gr in zip(params, grads):
            p -= 1e-3 * gr / norm
    result_after, z_after = _latents(prior, dmtet, cameras)
    change = float((expected * (z_after.detach() - z_before)).sum())
    assert change < 0, change
    if result_after.verts.shape == verts_before.shape:
        moved = float((result_after.verts.detach() - verts_before).norm(dim=-1).max())
    else:  # marching tets changed the topology: the surface certainly moved
        moved = float("inf")
    assert moved > 1e-6


def test_a_few_sds_steps_change_the_sdf_and_without_the_prior_nothing_moves(base_prior, sphere_dmtet):
    prior, dmtet = base_prior, sphere_dmtet
    cameras = orbit_cameras(AZIMUTHS, [0.0, 0.0], radius=0.6, fov_deg=40.0, resolution=(48, 48))
    cond = prior.conditioning(torch.randn(512), "", view=AZIMUTHS)
    noise, t = torch.randn(2, 4, 8, 8), torch.tensor([400, 400])
    with torch.no_grad():
        sdf_start = dmtet.field.sdf_and_deformation(dmtet.grid.vertices)[0].clone()

    def run(grad_scale, steps):
        sds = ScoreDistillation(prior, SDSConfig(guidance_scale=2.0, grad_scale=grad_scale))
        optimizer = torch.optim.Adam(_params(dmtet), lr=1e-3)
        for _ in range(steps):
            _, latents = _latents(prior, dmtet, cameras)
            loss, _ = sds.step_latents(latents, cond, 0, 10, noise=noise, t=t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return dmtet.field.sdf_and_deformation(dmtet.grid.vertices)[0]

    # control: the same loop with the SDS gradient scaled to zero leaves the field exactly as it was
    torch.testing.assert_close(run(0.0, 2), sdf_start, rtol=0, atol=0)
    moved = (run(1.0, 3) - sdf_start).abs()
    assert float(moved.max()) > 1e-4  # millimetre-scale change of the SDF after 3 steps
