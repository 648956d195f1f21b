"""The texture room: UV unwrap of the canonical head, the albedo/roughness maps optimised by SDS,
renders of the textured head, seam dilation and PNG output.

Public API (the pipeline's texture stage calls these; this room knows nothing of the pipeline):

* :func:`unwrap_mesh` ``(vertices [V,3], faces [F,3]) -> UVLayout`` (xatlas, charts computed on a
  smoothed copy; ``uv`` [Vt,2], ``uv_faces`` [F,3], ``vmapping`` [Vt], ``corner_uvs()`` [F,3,2]).
* :class:`TextureMaps` ``(size)``: ``albedo()`` [S,S,3], ``roughness()`` [S,S,1] in [0,1].
* :func:`render_textured` (lit by random lights) and :func:`render_albedo` (unlit) through
  ``engine.render.render``.
* :func:`coverage_mask`, :func:`dilate`, :func:`to_png_array`, :func:`write_png`, :func:`resize_map`.

Importing the package loads nothing heavy; numpy, torch and xatlas load with the first name used.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "UVLayout": ".unwrap", "unwrap_mesh": ".unwrap", "taubin_smooth": ".unwrap", "UnwrapError": ".unwrap",
    "TextureMaps": ".maps",
    "render_textured": ".render", "render_albedo": ".render", "linear_to_srgb": ".render",
    "srgb_to_linear": ".render",
    "coverage_mask": ".seams", "face_index_map": ".seams", "dilate": ".seams",
    "to_png_array": ".png", "write_png": ".png", "resize_map": ".png", "TEXTURE_SIZES": ".png",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
