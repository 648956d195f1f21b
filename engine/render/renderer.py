"""``render``: one call from a mesh and cameras to image passes, on either rasteriser backend.

A backend offers four primitives in nvdiffrast's shape -- rasterize, interpolate, texture,
antialias -- plus ``face_id``; everything else (normals, shading, background handling) is
computed here once for both, so the two backends give the same passes.
"""

from __future__ import annotations

import functools

import torch

from . import rasterize_torch as rt
from .cameras import Cameras
from .lights import Lights, shade
from .mesh_ops import MeshTopology, vertex_normals as compute_vertex_normals

PASSES = ("mask", "depth", "normal_world", "normal_camera", "albedo", "shaded", "uv", "position",
          "color", "triangle_id")
# Passes blended across silhouettes; depth, uv, position and ids stay exact per pixel.
ANTIALIASED = ("mask", "normal_world", "normal_camera", "albedo", "shaded", "color")
DEFAULT_ALBEDO = 0.7


class TorchBackend:
    """The project's own rasteriser (engine.render.rasterize_torch); CPU or GPU."""

    name = "torch"

    def rasterize(self, clip, faces, resolution, topology=None, cull_backfaces=False):
        return rt.rasterize(clip, faces, resolution, topology, cull_backfaces)

    def face_id(self, rast) -> torch.Tensor:
        return rast.face_id

    def interpolate(self, attr, rast, faces):
        return rt.interpolate(attr, rast, faces)

    def texture(self, texture, uv_image):
        return bilinear_texture(texture, uv_image)

    def antialias(self, color, rast, clip, faces):
        return rt.antialias(color, rast, faces)


def bilinear_texture(texture: torch.Tensor, uv_image: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``texture`` [Ht, Wt, C] (row 0 = top, i.e. v = 1) at ``uv_image``
    [B, H, W, 2] (u right, v up, in [0, 1]; clamped at the border) -> [B, H, W, C]."""
    import torch.nn.functional as F

    b, h, w, _ = uv_image.shape
    tex = texture.to(uv_image.dtype).permute(2, 0, 1)[None]  # [1, C, Ht, Wt]
    grid = torch.stack([uv_image[..., 0] * 2.0 - 1.0, 1.0 - uv_image[..., 1] * 2.0], dim=-1)
    out = F.grid_sample(tex, grid.reshape(1, b * h, w, 2), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0].permute(1, 2, 0).reshape(b, h, w, -1)


def available_backends() -> list[str]:
    return list(_available_backends())


@functools.lru_cache(maxsize=1)
def _available_backends() -> tuple[str, ...]:
    # Cached: a failed import is not cached by Python and would search the disk on every render.
    try:
        import nvdiffrast.torch  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA build that fails on import
        return ("torch",)
    return ("torch", "nvdiffrast")


def _pick_backend(name: str, device: torch.device):
    if name == "torch":
        return TorchBackend()
    if name not in ("auto", "nvdiffrast"):
        raise ValueError(f"unknown backend {name!r}: use 'auto', 'torch' or 'nvdiffrast'")
    if device.type == "cuda" and "nvdiffrast" in available_backends():
        from .nvdiffrast_backend import NvdiffrastBackend

        return NvdiffrastBackend.for_device(device)
    if name == "nvdiffrast":
        raise RuntimeError(
            "backend='nvdiffrast' needs `import nvdiffrast.torch` to work and tensors on a CUDA "
            "device; use backend='torch' (the built-in rasteriser) or 'auto'."
        )
    return TorchBackend()


def _as_background(value, channels: int, ref: torch.Tensor) -> torch.Tensor:
    bg = torch.as_tensor(value, dtype=ref.dtype, device=ref.device).reshape(-1)
    if bg.numel() == 1:
        bg = bg.expand(channels)
    if bg.numel() != channels:
        raise ValueError(f"background has {bg.numel()} values for a {channels}-channel pass")
    return bg


def render(
    verts: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    *,
    passes=("mask",),
    vertex_normals: torch.Tensor | None = None,
    uv: torch.Tensor | None = None,
    uv_faces: torch.Tensor | None = None,
    texture: torch.Tensor | None = None,
    vertex_colors: torch.Tensor | None = None,
    lights: Lights | None = None,
    background=0.0,
    antialias: bool = True,
    backend: str = "auto",
    topology: MeshTopology | None = None,
    cull_backfaces: bool = False,
) -> dict[str, torch.Tensor]:
    """Render a triangle mesh from a batch of cameras.

    verts: [V, 3] shared by all views or [B, V, 3] per view (expressions); world space.
    faces: [F, 3] int, counter-clockwise seen from outside; one topology for all views.
    Returns {pass: [B, H, W, C]} in verts' dtype (float32 normally), row 0 = top:

    - mask (1): anti-aliased coverage; differentiable w.r.t. verts at silhouettes.
    - depth (1): camera-space depth along the view axis (-z_cam, metres); 0 where empty.
    - normal_world / normal_camera (3): smooth unit normals from vertex normals (computed from
      verts when not given), camera space = OpenGL (x right, y up, z toward the viewer).
    - albedo (3): bilinear lookup of ``texture`` [Ht, Wt, 3] at ``uv`` [Vt, 2] via ``uv_faces``
      [F, 3] (default ``faces``); else ``vertex_colors``; else a constant grey 0.7.
    - shaded (3): albedo under ``lights`` (default: uniform white ambient), see lights.py.
    - color (C): interpolated ``vertex_colors`` [V, C] or [B, V, C].
    - uv (2), position (3, world), triangle_id (1, int64, -1 where empty): exact, not blended.

    ``background`` (scalar or per-channel) fills empty pixels of normal/albedo/shaded/color.
    ``antialias`` blends those passes and the mask across silhouette edges. ``backend``:
    'torch', 'nvdiffrast' (CUDA only) or 'auto' (nvdiffrast on CUDA when importable).
    ``topology``: ``mesh_topology(faces)``, to reuse across calls with the same faces.
    ``cull_backfaces``: skip faces turned away (counter-clockwise = front); about 2x faster
    visibility on closed, consistently oriented meshes such as marching-tets output, same image
    (torch backend; nvdiffrast rasterises everything and ignores it).
    """
    passes = tuple(passes)
    for p in passes:
        if p not in PASSES:
            raise ValueError(f"unknown pass {p!r}; available: {', '.join(PASSES)}")
    if verts.ndim == 2:
        verts_b = verts.unsqueeze(0).expand(len(cameras), -1, -1)
    elif verts.ndim == 3 and verts.shape[0] == len(cameras):
        verts_b = verts
    else:
        raise ValueError(
            f"verts must be [V,3] or [B,V,3] with B={len(cameras)} cameras, got {tuple(verts.shape)}"
        )
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
    if texture is not None and texture.ndim != 3:
        raise ValueError(f"texture must be [H, W, C] (a grey map as [H, W, 1]), got {tuple(texture.shape)}")
    dt, dev = verts.dtype, verts.device
    faces = faces.to(dev).long()
    cams = cameras if cameras.device == dev else cameras.to(dev)
    be = _pick_backend(backend, dev)

    w2clip = cams.world_to_clip().to(dt)
    homog = torch.cat([verts_b, torch.ones_like(verts_b[..., :1])], dim=-1)
    clip = homog @ w2clip.transpose(1, 2)
    rast = be.rasterize(clip, faces, cams.resolution, topology, cull_backfaces)
    fid = be.face_id(rast)
    covered = (fid >= 0).unsqueeze(-1).to(dt)
    out: dict[str, torch.Tensor] = {}

    need_normals = any(p in passes for p in ("normal_world", "normal_camera", "shaded"))
    need_albedo = any(p in passes for p in ("albedo", "shaded"))
    need_pos = any(p in passes for p in ("position", "shaded"))

    if "mask" in passes:
        out["mask"] = covered
    if "depth" in passes:
        out["depth"] = be.interpolate(clip[..., 3:4].contiguous(), rast, faces) * covered
    if "triangle_id" in passes:
        out["triangle_id"] = fid.unsqueeze(-1)
    if need_pos:
        position = be.interpolate(verts_b.contiguous(), rast, faces)
        if "position" in passes:
            out["position"] = position
    if need_normals:
        if vertex_normals is not None:
            vn = vertex_normals
        elif verts.ndim == 2:  # one mesh seen by every view: its normals once, not once per view
            vn = compute_vertex_normals(verts, faces).unsqueeze(0).expand_as(verts_b)
        else:
            vn = compute_vertex_normals(verts_b, faces)
        n = be.interpolate(vn.to(dt).contiguous(), rast, faces)
        n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        n_world = n * covered  # exact zeros where empty (no NaN-prone 0/0 there)
        if "normal_world" in passes:
            out["normal_world"] = n_world
        if "normal_camera" in passes:
            rot = cams.world_to_cam[:, :3, :3].to(dt)
            out["normal_camera"] = torch.einsum("bij,bhwj->bhwi", rot, n_world)
    uv_img = None
    if uv is not None and (need_albedo or "uv" in passes):
        uvf = faces if uv_faces is None else uv_faces.to(dev).long()
        if uvf.shape != faces.shape:
            raise ValueError(f"uv_faces must match faces' shape {tuple(faces.shape)}, got {tuple(uvf.shape)}")
        uv_img = be.interpolate(uv.to(dt).contiguous(), rast, uvf)
        if "uv" in passes:
            out["uv"] = uv_img
    if "uv" in passes and uv_img is None:
        raise ValueError("pass 'uv' needs uv coordinates (uv=[Vt, 2])")
    color = None
    if vertex_colors is not None and ("color" in passes or (need_albedo and texture is None)):
        color = be.interpolate(vertex_colors.to(dt).contiguous(), rast, faces)
        if "color" in passes:
            out["color"] = color
    if "color" in passes and color is None:
        raise ValueError("pass 'color' needs vertex_colors")
    if need_albedo:
        if texture is not None:
            if uv_img is None:
                raise ValueError("a texture needs uv coordinates (uv=[Vt, 2], optional uv_faces=[F, 3])")
            albedo = be.texture(texture.to(dev), uv_img)
        elif color is not None:
            albedo = color[..., :3]
        else:
            albedo = torch.full_like(covered.expand(*covered.shape[:3], 3), DEFAULT_ALBEDO)
        albedo = albedo * covered
        if "albedo" in passes:
            out["albedo"] = albedo
        if "shaded" in passes:
            li = lights if lights is not None else Lights.ambient(len(cams), device=dev)
            out["shaded"] = shade(albedo, n_world, position, cams.positions.to(dt), li) * covered

    # Fill the background, then blend every anti-aliased pass in one call.
    for name in ("normal_world", "normal_camera", "albedo", "shaded", "color"):
        if name in out:
            bg = _as_background(background, out[name].shape[-1], out[name])
            out[name] = out[name] + (1.0 - covered) * bg
    if antialias:
        names = [p for p in ANTIALIASED if p in out]
        if names:
            stacked = torch.cat([out[p] for p in names], dim=-1)
            blended = be.antialias(stacked, rast, clip, faces)
            start = 0
            for p in names:
                c = out[p].shape[-1]
                out[p] = blended[..., start : start + c]
                start += c
    return {p: out[p] for p in passes}
