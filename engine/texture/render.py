"""Renders of the textured head for texture SDS, through ``engine.render.render``.

Two variants, one rasterisation each:

- :func:`render_textured`: the albedo map under the given lights (random ones from
  ``engine.render.sample_lights`` during optimisation), so the prior sees lit skin and the map that
  explains it is the *unlit* colour: lighting is not baked into the albedo. Diffuse and
  environment light come from the render room's ``shade``; the key light's specular lobe is
  computed here per pixel from the roughness map (Blinn-Phong with the exponent that matches a
  GGX/Beckmann lobe of that roughness), which is what lets SDS reach the roughness map at all.
- :func:`render_albedo`: the albedo alone, unlit, for an albedo-task prior.

Maps are linear; the renders are returned sRGB-encoded (``srgb=True``), i.e. as a photo or a
diffusion model's image looks, and albedo.png is written sRGB-encoded from the same linear map:
what Blender shows then matches what the prior judged.
"""

from __future__ import annotations

import torch

from ..render import Lights, render, shade
from ..render.lights import KEY_NONE, KEY_POINT

REFERENCE_SHININESS = 16.0  # the exponent at which the key light's specular strength is taken as given
MIN_ALPHA = 0.03  # GGX alpha (= roughness^2) floor: keeps the Blinn-Phong exponent finite


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer function (IEC 61966-2-1), differentiable; x in [0, 1]."""
    x = x.clamp(0.0, 1.0)
    low = x * 12.92
    high = 1.055 * x.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
    return torch.where(x <= 0.0031308, low, high)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _texture_and_uv(layout, maps, device, channels: int):
    """(texture [S, S, channels], uv [Vt, 2], uv_faces [F, 3]) from a layout and maps.

    ``maps``: a TextureMaps, or a tensor [S, S, 3|4] (albedo, optionally + roughness)."""
    if hasattr(layout, "torch_uv"):
        uv, uv_faces = layout.torch_uv(device)
    else:
        uv, uv_faces = layout
    if hasattr(maps, "packed"):
        texture = maps.packed() if channels == 4 else maps.albedo()
    else:
        texture = torch.as_tensor(maps, device=device)
        if texture.ndim != 3 or texture.shape[-1] not in (3, 4):
            raise ValueError(f"maps must be a TextureMaps or an [S, S, 3|4] texture, got {tuple(texture.shape)}")
        if channels == 4 and texture.shape[-1] == 3:
            from .maps import DEFAULT_ROUGHNESS

            texture = torch.cat([texture, torch.full_like(texture[..., :1], DEFAULT_ROUGHNESS)], dim=-1)
        texture = texture[..., :channels]
    return texture.to(device), uv.to(device), uv_faces.to(device)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def roughness_specular(normal, position, camera_pos, lights: Lights, roughness) -> torch.Tensor:
    """Key-light specular [B, H, W, 3] with a per-pixel roughness [B, H, W, 1] in [0, 1]."""
    b = normal.shape[0]
    li = lights.to(normal.device, normal.dtype)
    if len(li) == 1 and b > 1:
        li = Lights(*(getattr(li, k).expand(b, *getattr(li, k).shape[1:]) for k in
                      ("sh", "key_kind", "key_vector", "key_color", "specular", "shininess")))
    per_view = lambda t: t[:, None, None]  # noqa: E731 - broadcast a per-view value over pixels
    kind = per_view(li.key_kind)[..., None]
    to_light = _unit(torch.where(kind == KEY_POINT, per_view(li.key_vector) - position, per_view(li.key_vector)))
    ndl = (normal * to_light).sum(-1, keepdim=True)
    half = _unit(to_light + _unit(per_view(camera_pos.to(normal.dtype)) - position))
    ndh = (normal * half).sum(-1, keepdim=True).clamp(1e-6, 1.0)
    alpha = (roughness * roughness).clamp_min(MIN_ALPHA)
    exponent = (2.0 / (alpha * alpha) - 2.0).clamp(1.0, 4096.0)
    strength = per_view(li.specular)[..., None] * (exponent + 2.0) / (REFERENCE_SHININESS + 2.0)
    lit = ((ndl > 0) & (kind != KEY_NONE)).to(normal.dtype)
    return per_view(li.key_color) * strength * ndh**exponent * lit


def render_textured(verts, faces, layout, maps, cameras, lights: Lights | None = None, *, background=1.0,
                    srgb: bool = True, with_mask: bool = False, **render_options):
    """Shaded renders [B, H, W, 3] of the textured mesh (see the module docstring).

    verts [V, 3] (one shape for every view) or [B, V, 3] (e.g. an expression per view); faces
    [F, 3]; layout: a UVLayout (or (uv, uv_faces) tensors); maps: TextureMaps (or an
    [S, S, 3|4] texture); lights: one per view or one for all (None: uniform white ambient).
    ``background``: scalar or RGB, in the output's colour space. ``render_options`` go to
    ``engine.render.render`` (``topology``, ``cull_backfaces``, ``backend``). With
    ``with_mask`` returns (image, mask [B, H, W, 1]).
    """
    dev = verts.device
    texture, uv, uv_faces = _texture_and_uv(layout, maps, dev, 4)
    out = render(verts, faces, cameras, passes=("mask", "albedo", "normal_world", "position"), uv=uv,
                 uv_faces=uv_faces, texture=texture, background=0.0, **render_options)
    mask = out["mask"]
    # Anti-aliased passes are premultiplied by coverage at silhouettes: shade the surface's own
    # values, then blend with the background by the same coverage.
    inv = 1.0 / mask.clamp_min(1e-6)
    surface = out["albedo"] * inv
    albedo, roughness = surface[..., :3].clamp(0.0, 1.0), surface[..., 3:4].clamp(0.0, 1.0)
    normal = _unit(out["normal_world"])
    cams = cameras if cameras.device == dev else cameras.to(dev)
    li = lights if lights is not None else Lights.ambient(len(cams), device=dev)
    diffuse_only = Lights(li.sh, li.key_kind, li.key_vector, li.key_color, torch.zeros_like(li.specular),
                          li.shininess)
    cam_pos = cams.positions.to(verts.dtype)
    colour = shade(albedo, normal, out["position"], cam_pos, diffuse_only)
    colour = colour + roughness_specular(normal, out["position"], cam_pos, li, roughness)
    colour = colour.clamp(0.0, 1.0)
    image = _composite(colour, mask, background, srgb)
    return (image, mask) if with_mask else image


def render_albedo(verts, faces, layout, maps, cameras, *, background=1.0, srgb: bool = True,
                  with_mask: bool = False, **render_options):
    """Unlit albedo renders [B, H, W, 3] (for an albedo-task prior); arguments as render_textured."""
    dev = verts.device
    texture, uv, uv_faces = _texture_and_uv(layout, maps, dev, 3)
    out = render(verts, faces, cameras, passes=("mask", "albedo"), uv=uv, uv_faces=uv_faces, texture=texture,
                 background=0.0, **render_options)
    mask = out["mask"]
    colour = (out["albedo"] / mask.clamp_min(1e-6)).clamp(0.0, 1.0)
    image = _composite(colour, mask, background, srgb)
    return (image, mask) if with_mask else image


def _composite(colour, mask, background, srgb: bool):
    encoded = linear_to_srgb(colour) if srgb else colour
    bg = torch.as_tensor(background, dtype=colour.dtype, device=colour.device).reshape(-1)
    if bg.numel() == 1:
        bg = bg.expand(3)
    return (encoded * mask + (1.0 - mask) * bg).clamp(0.0, 1.0)
