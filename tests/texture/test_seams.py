"""Seam dilation: a texture filled only where charts cover it shows dark cracks along the UV seams
once a viewer filters it (a glTF viewer's mipmaps, Blender's smaller image levels, or writing the
map at a smaller size); the same texture dilated shows none. PNG writing sizes and colour encoding."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.render import orbit_cameras
from engine.texture import coverage_mask, dilate, render_albedo, resize_map, to_png_array, write_png

SKIN = 0.8


def dark_surface_pixels(head, layout, texture: np.ndarray) -> int:
    verts, faces = head
    cams = orbit_cameras([0.0, 70.0, 180.0, -110.0], [10.0, 0.0, 20.0, -5.0], radius=0.55, resolution=(160, 160))
    image, mask = render_albedo(verts, faces, layout, torch.as_tensor(texture), cams, srgb=False, with_mask=True)
    interior = mask[..., 0] > 0.999
    return int(((image.min(-1).values < 0.5 * SKIN) & interior).sum())


@pytest.fixture(scope="module")
def seam_texture(head32_layout):
    size = 96
    covered = coverage_mask(head32_layout, size)
    texture = np.zeros((size, size, 3), np.float32)
    texture[covered] = SKIN  # what an optimisation that never touched the empty texels leaves
    return texture, covered


def test_dilation_removes_seam_cracks(head32, head32_layout, seam_texture):
    texture, covered = seam_texture
    size = texture.shape[0]
    # The first mipmap level (half size, area-filtered), as a viewer samples a head seen smaller.
    cracked = dark_surface_pixels(head32, head32_layout, resize_map(texture, size // 2))
    assert cracked > 20, f"expected visible cracks without dilation, found {cracked} dark pixels"
    dilated = dilate(texture, covered, 4)
    healed = dark_surface_pixels(head32, head32_layout, resize_map(dilated, size // 2))
    assert healed == 0, f"{healed} dark pixels remain after dilation (was {cracked})"
    assert dark_surface_pixels(head32, head32_layout, dilated) == 0  # and at full size


def test_dilation_keeps_covered_texels_and_stops_after_its_rings():
    image = np.zeros((20, 20, 3), np.float32)
    mask = np.zeros((20, 20), bool)
    mask[8:12, 8:12] = True
    image[8:12, 8:12] = np.arange(48, dtype=np.float32).reshape(4, 4, 3) / 48
    out = dilate(image, mask, 2)
    np.testing.assert_array_equal(out[mask], image[mask])
    reached = np.abs(out).sum(-1) > 0
    assert reached[6:14, 6:14].all() and not reached[:5].any() and not reached[:, 15:].any()
    torch_out = dilate(torch.as_tensor(image), torch.as_tensor(mask), 2)
    np.testing.assert_allclose(torch_out.numpy(), out)


@pytest.mark.parametrize("size", [64, 256])
def test_png_sizes_and_encoding(tmp_path, size):
    linear = np.full((size, size, 3), 0.214, np.float32)  # sRGB 0.5 in linear light
    path = write_png(tmp_path / "albedo.png", linear, srgb=True)
    with Image.open(path) as im:
        assert im.size == (size, size) and im.mode == "RGB"
        assert abs(int(np.asarray(im)[0, 0, 0]) - 128) <= 1
    grey = write_png(tmp_path / "roughness.png", np.full((size, size, 1), 0.5, np.float32))
    with Image.open(grey) as im:
        assert im.mode == "L" and int(np.asarray(im)[3, 3]) == 128
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    with pytest.raises(ValueError, match="NaN"):
        to_png_array(np.full((4, 4), np.nan))
