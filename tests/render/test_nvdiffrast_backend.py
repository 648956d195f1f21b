"""The nvdiffrast backend against the built-in one on one scene (needs CUDA and nvdiffrast)."""

from __future__ import annotations

import pytest
import torch

from engine.render import available_backends, icosphere, orbit_cameras, render, sample_lights

needs_nvdiffrast = pytest.mark.skipif(
    not torch.cuda.is_available() or "nvdiffrast" not in available_backends(),
    reason="needs a CUDA device and nvdiffrast (not on the package index)",
)


@pytest.mark.gpu
@needs_nvdiffrast
def test_both_backends_render_the_same_scene():
    dev = torch.device("cuda")
    verts, faces = icosphere(4, 0.1, device=dev)
    uv = torch.stack([torch.atan2(verts[:, 0], -verts[:, 1]) / (2 * torch.pi) + 0.5,
                      verts[:, 2] / 0.2 + 0.5], dim=1)
    tex = torch.rand(64, 64, 3, device=dev, generator=torch.Generator(dev).manual_seed(0))
    cams = orbit_cameras([0.0, 60.0, 180.0], [10.0, 0.0, 20.0], radius=0.5, resolution=(128, 128), device=dev)
    passes = ("mask", "depth", "normal_world", "normal_camera", "albedo", "shaded", "triangle_id")
    kw = dict(passes=passes, uv=uv, texture=tex, lights=sample_lights(3, seed=0, device=dev))
    a = render(verts, faces, cams, backend="torch", **kw)
    b = render(verts, faces, cams, backend="nvdiffrast", **kw)
    ids_equal = (a["triangle_id"] == b["triangle_id"]).float().mean()
    assert ids_equal > 0.99  # ties on shared edges may go either way
    same = (a["triangle_id"] == b["triangle_id"])[..., 0] & (a["triangle_id"][..., 0] >= 0)
    for p in ("depth", "normal_world", "normal_camera", "albedo"):
        assert torch.allclose(a[p][same], b[p][same], atol=2e-3), p
    # Anti-aliasing differs in detail (ours is edge-driven); the totals agree closely.
    assert abs(float(a["mask"].sum() / b["mask"].sum()) - 1.0) < 0.005
    assert float((a["shaded"] - b["shaded"]).abs().mean()) < 0.01


@pytest.mark.gpu
@needs_nvdiffrast
def test_nvdiffrast_mask_gradients_reach_vertices():
    dev = torch.device("cuda")
    verts, faces = icosphere(3, 0.1, device=dev)
    verts.requires_grad_(True)
    cams = orbit_cameras([0.0], [0.0], radius=0.5, resolution=(64, 64), device=dev)
    render(verts, faces, cams, backend="nvdiffrast")["mask"].sum().backward()
    assert verts.grad.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_runs_on_cuda():
    dev = torch.device("cuda")
    verts, faces = icosphere(3, 0.1, device=dev)
    cams = orbit_cameras([0.0], [0.0], radius=0.5, resolution=(64, 64), device=dev)
    gpu = render(verts, faces, cams, backend="torch", passes=("mask", "depth"))
    cpu = render(verts.cpu(), faces.cpu(), cams.to("cpu"), backend="torch", passes=("mask", "depth"))
    assert torch.allclose(gpu["mask"].cpu(), cpu["mask"], atol=1e-4)
    assert torch.allclose(gpu["depth"].cpu(), cpu["depth"], atol=1e-4)


def test_asking_for_nvdiffrast_without_cuda_is_a_clear_error():
    if torch.cuda.is_available() and "nvdiffrast" in available_backends():
        pytest.skip("nvdiffrast is usable here")
    verts, faces = icosphere(1, 0.1)
    cams = orbit_cameras([0.0], [0.0], radius=0.5, resolution=(16, 16))
    with pytest.raises(RuntimeError, match="backend='torch'"):
        render(verts, faces, cams, backend="nvdiffrast")
    # 'auto' falls back to the built-in rasteriser.
    assert render(verts, faces, cams, backend="auto")["mask"].sum() > 0
