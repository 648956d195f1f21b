"""ID-to-3D engine: photos of a person in, an identity-consistent 3D head with expressions out.

This package never imports ``bpy`` and imports nothing heavy at import time: torch, diffusers,
insightface and friends are imported inside the functions that need them, so that Blender's
Python can import :mod:`engine.protocol` (standard library only) without having torch installed.

Stages, one sub-package each: ``identity`` (photos -> ArcFace embedding), ``prior`` (diffusion
priors and score distillation), ``render`` (differentiable rasteriser and cameras), ``geometry``
(DMTet SDF and the expression model). Run ``python -m engine --help`` for the command line.
"""

__version__ = "0.1.0"
