"""The export room: the result folder (head.npz, textures, result.json, contact sheet), the .glb
and the quality report. The pipeline calls these; this room knows nothing of the pipeline.

* :func:`write_result` ``(folder, head, *, albedo, roughness, normal=None, info, contact_sheet=None,
  glb=True) -> dict[str, Path]`` (result.py)
* ``engine.export.gltf.write_glb(path, head, albedo, roughness, normal=None)`` (gltf.py)
* ``engine.export.quality.quality_report(...)`` and ``contact_sheet(...)`` (quality.py)

Importing the package loads nothing heavy.
"""

from __future__ import annotations


def write_result(folder, head, **kwargs):
    from .result import write_result as _write

    return _write(folder, head, **kwargs)


__all__ = ["write_result"]
