"""The same four primitives backed by nvdiffrast's CUDA rasteriser (optional, CUDA only).

nvdiffrast is not on the package index and has no CPU path; this module is imported only when
``import nvdiffrast.torch`` works and the tensors live on a CUDA device (see renderer.py).
Differences it hides from ``render``:

* nvdiffrast's image row 0 is NDC y = -1 (the bottom); we negate clip y before rasterising so
  row 0 is the top, as everywhere in the engine (winding flips, which nvdiffrast ignores).
* It works in float32 with int32 triangles; inputs are cast and outputs cast back.
* Its texture lookup puts v = 0 on the texture's first row; our textures have row 0 at v = 1,
  so v is flipped before the lookup.
* Its rasteriser output packs (u, v, z/w, face id + 1); ``face_id`` turns that into our [B,H,W]
  ids with -1 for empty pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_CONTEXTS: dict = {}  # one RasterizeCudaContext per device: creating one is slow


@dataclass
class NvRaster:
    rast: torch.Tensor  # [B, H, W, 4] float32, nvdiffrast's layout
    pos: torch.Tensor  # [B, V, 4] float32 clip positions (y negated)
    tri: torch.Tensor  # [F, 3] int32
    dtype: torch.dtype  # the caller's dtype, restored on outputs


class NvdiffrastBackend:
    name = "nvdiffrast"

    def __init__(self, context):
        import nvdiffrast.torch as dr

        self.dr = dr
        self.ctx = context

    @classmethod
    def for_device(cls, device: torch.device) -> "NvdiffrastBackend":
        import nvdiffrast.torch as dr

        key = str(device)
        if key not in _CONTEXTS:
            _CONTEXTS[key] = dr.RasterizeCudaContext(device=device)
        return cls(_CONTEXTS[key])

    def rasterize(self, clip, faces, resolution, topology=None, cull_backfaces=False) -> NvRaster:
        flip = torch.tensor([1.0, -1.0, 1.0, 1.0], device=clip.device, dtype=torch.float32)
        pos = (clip.to(torch.float32) * flip).contiguous()
        tri = faces.to(device=clip.device, dtype=torch.int32).contiguous()
        rast, _ = self.dr.rasterize(self.ctx, pos, tri, resolution=[int(resolution[0]), int(resolution[1])])
        return NvRaster(rast=rast, pos=pos, tri=tri, dtype=clip.dtype)

    def face_id(self, r: NvRaster) -> torch.Tensor:
        return r.rast[..., 3].round().long() - 1

    def interpolate(self, attr, r: NvRaster, faces):
        tri = faces.to(device=r.rast.device, dtype=torch.int32).contiguous()
        out, _ = self.dr.interpolate(attr.to(torch.float32).contiguous(), r.rast, tri)
        return out.to(r.dtype)

    def texture(self, texture, uv_image):
        uv = torch.stack([uv_image[..., 0], 1.0 - uv_image[..., 1]], dim=-1).to(torch.float32).contiguous()
        tex = texture.to(device=uv.device, dtype=torch.float32)[None].contiguous()
        b = uv.shape[0]
        out = self.dr.texture(tex.expand(b, *tex.shape[1:]).contiguous(), uv, filter_mode="linear",
                              boundary_mode="clamp")
        return out.to(uv_image.dtype)

    def antialias(self, color, r: NvRaster, clip, faces):
        out = self.dr.antialias(color.to(torch.float32).contiguous(), r.rast, r.pos, r.tri)
        return out.to(color.dtype)
