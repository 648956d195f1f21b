"""TextureMaps stay in [0, 1] and receive gradients through render_textured (albedo and
roughness) and render_albedo (albedo only); the shading reproduces the albedo under white light."""

import numpy as np
import pytest
import torch

from engine.render import Lights, orbit_cameras, sample_lights
from engine.texture import TextureMaps, render_albedo, render_textured
from engine.texture.render import linear_to_srgb


@pytest.fixture(scope="module")
def cams():
    return orbit_cameras([0.0, 45.0, -30.0], [5.0, 10.0, 0.0], radius=0.6, fov_deg=30.0, resolution=(48, 48))


def key_lights(n: int) -> Lights:
    lights = sample_lights(n, seed=3, kinds=("directional",))
    lights.specular = torch.full((n,), 0.3)
    return lights


def test_maps_are_in_range_and_pyramid_levels_halve():
    maps = TextureMaps(64, levels=4)
    with torch.no_grad():
        for p in list(maps.albedo_levels) + list(maps.roughness_levels):
            p.normal_(0.0, 10.0)  # extreme logits still map into [0, 1]
    assert maps.level_sizes == (64, 32, 16, 8)
    for m in (maps.albedo(), maps.roughness()):
        assert m.min() >= 0 and m.max() <= 1
    assert maps.albedo().shape == (64, 64, 3) and maps.roughness().shape == (64, 64, 1)
    fresh = TextureMaps(32, init_albedo=(0.2, 0.5, 0.8), init_roughness=0.3)
    np.testing.assert_allclose(fresh.albedo()[5, 7].detach().numpy(), [0.2, 0.5, 0.8], atol=1e-5)
    np.testing.assert_allclose(float(fresh.roughness().detach()[3, 3, 0]), 0.3, atol=1e-5)


def test_gradients_reach_both_maps_through_the_shaded_render(head32, head32_layout, cams):
    verts, faces = head32
    maps = TextureMaps(64)
    image = render_textured(verts, faces, head32_layout, maps, cams, key_lights(len(cams)))
    assert image.shape == (3, 48, 48, 3) and image.min() >= 0 and image.max() <= 1
    weights = torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    (image * weights).sum().backward()
    for name, levels in (("albedo", maps.albedo_levels), ("roughness", maps.roughness_levels)):
        finest = levels[0].grad
        assert finest is not None and float(finest.abs().sum()) > 0, f"no gradient reached the {name} map"
        # Only texels the renders sampled get a gradient at the finest level.
        assert 0 < float((finest.abs().sum(1) > 0).float().mean()) < 0.9, name


def test_unlit_albedo_render_feeds_only_the_albedo(head32, head32_layout, cams):
    verts, faces = head32
    maps = TextureMaps(64, init_albedo=(0.3, 0.5, 0.7))
    image, mask = render_albedo(verts, faces, head32_layout, maps, cams, background=0.0, with_mask=True)
    image.sum().backward()
    assert float(maps.albedo_levels[0].grad.abs().sum()) > 0
    assert all(p.grad is None for p in maps.roughness_levels)
    inside = mask[..., 0] > 0.999
    expected = linear_to_srgb(torch.tensor([0.3, 0.5, 0.7]))
    torch.testing.assert_close(image[inside], expected.expand(int(inside.sum()), 3), atol=2e-3, rtol=0)


def test_white_ambient_light_reproduces_the_albedo(head32, head32_layout, cams):
    verts, faces = head32
    rng = np.random.default_rng(1)
    maps = TextureMaps(64, init_albedo=rng.uniform(0.1, 0.9, size=(64, 64, 3)))
    lit = render_textured(verts, faces, head32_layout, maps, cams, Lights.ambient(len(cams)), srgb=False)
    flat = render_albedo(verts, faces, head32_layout, maps, cams, srgb=False)
    torch.testing.assert_close(lit, flat, atol=1e-5, rtol=0)
    # A key light from one side: the lit side brighter than the unlit albedo times the ambient.
    dim = render_textured(verts, faces, head32_layout, maps, cams, key_lights(len(cams)), srgb=False)
    assert not torch.allclose(dim, flat, atol=1e-2)
