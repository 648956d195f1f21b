"""The preset table the pipeline reads: every number a generation run uses, per quality level.

Standard library only (the add-on lists the presets). ``job.json`` names a preset and may
override any field (``"overrides": {"geometry_steps": 20}``); :func:`resolve_preset` applies and
type-checks the overrides. docs/pipeline.md says which published recipe each default follows:

* CFG: Arc2Face samples at guidance 3 (its own inference default); Arc2Avatar's SDS on Arc2Face
  uses ~1.25. Geometry keeps 3 (shaded/normal renders need a firmer opinion), texture 2.
* Timesteps: t in [0.02, 0.98] annealed to [0.02, 0.5] for geometry (DreamFusion/Fantasia3D-style
  coarse to fine); texture t in [0.02, 0.5] (Arc2Avatar's range) annealed towards 0.3.
* Geometry: HumanNorm/Fantasia3D-style 512^2 renders and 5-10k steps for "standard"/"high";
  "preview" halves both. Tet grid 128-192 (DMTet papers use 128-256).
* "test" is a TEST PRESET: tiny numbers so the whole job runs in seconds on a CPU with tiny
  random-weight priors. Its heads mean nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    # geometry + expressions (stage 1)
    grid: int  # tet grid resolution (cubes per side of the 0.32 m box)
    render_resolution: int  # geometry renders, square
    pretrain_steps: int  # fit of the field to the procedural head before SDS
    pretrain_batch: int  # points per pretraining step
    geometry_steps: int
    views_per_step: int  # renders per SDS step (one batch)
    geometry_lr: float
    expression_lr: float
    geometry_guidance: float  # CFG scale s of eps_u + s (eps_c - eps_u)
    geometry_t_start: tuple[float, float]  # (min, max) timestep fraction at the first step
    geometry_t_end: tuple[float, float]  # ... at the last step (linear anneal)
    geometry_shortcut_fraction: float  # first part of stage 1 on the 4-channel latent shortcut (no VAE)
    neutral_fraction: float  # share of stage-1 steps that render neutral; the rest cycle the expressions
    max_deformation_cells: float  # DMTet vertex deformation bound (length), in grid cells (<= 0.28)
    expression_max_offset: float  # metres, tanh bound of the expression offsets
    expression_offset_weight: float  # pull of every expression towards neutral (L2 on offsets)
    laplacian: float
    normal_consistency: float
    sdf_sign: float
    sdf_smoothness: float
    grad_clip: float  # SDS gradient value clamp
    elevation_range_deg: tuple[float, float]
    front_fraction: float  # share of cameras drawn in the front half (over-sampled front views)
    target_faces: int  # decimate the canonical mesh to about this many faces (0: keep all)
    # texture (stage 2)
    texture_steps: int
    texture_render_resolution: int
    texture_views_per_step: int
    texture_lr: float
    texture_guidance: float
    texture_t_start: tuple[float, float]
    texture_t_end: tuple[float, float]
    texture_size: int  # default UV texture size when job.json does not set one
    quality_resolution: int  # renders scored by the quality report
    # bookkeeping
    checkpoint_every: int  # steps between checkpoints (plus one at every stage end)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


_COMMON = dict(
    geometry_lr=1e-3, expression_lr=1e-3, geometry_guidance=3.0,
    geometry_t_start=(0.02, 0.98), geometry_t_end=(0.02, 0.5),
    neutral_fraction=0.5, max_deformation_cells=0.25, expression_max_offset=0.05, expression_offset_weight=10.0,
    laplacian=0.5, normal_consistency=0.05, sdf_sign=0.0, sdf_smoothness=0.0, grad_clip=1.0,
    elevation_range_deg=(-10.0, 30.0), front_fraction=0.6,
    texture_lr=1e-2, texture_guidance=2.0, texture_t_start=(0.02, 0.5), texture_t_end=(0.02, 0.3),
)

PRESETS: dict[str, Preset] = {
    "test": Preset(
        name="test", description="TEST PRESET: seconds on a CPU with tiny random priors; the head means nothing",
        grid=16, render_resolution=32, pretrain_steps=40, pretrain_batch=4096, geometry_steps=6, views_per_step=1,
        geometry_shortcut_fraction=0.5, target_faces=0,
        texture_steps=3, texture_render_resolution=32, texture_views_per_step=1, texture_size=64, quality_resolution=128,
        checkpoint_every=2, **_COMMON),
    "preview": Preset(
        name="preview", description="a quick look: half the standard steps at 256^2 renders",
        grid=96, render_resolution=256, pretrain_steps=300, pretrain_batch=16384, geometry_steps=2000, views_per_step=1,
        geometry_shortcut_fraction=0.5, target_faces=20000,
        texture_steps=1000, texture_render_resolution=256, texture_views_per_step=1, texture_size=1024, quality_resolution=256,
        checkpoint_every=200, **_COMMON),
    "standard": Preset(
        name="standard", description="the default: 512^2 renders, 5k geometry steps (HumanNorm/Fantasia3D scale)",
        grid=128, render_resolution=512, pretrain_steps=500, pretrain_batch=16384, geometry_steps=5000, views_per_step=2,
        geometry_shortcut_fraction=0.3, target_faces=40000,
        texture_steps=2000, texture_render_resolution=512, texture_views_per_step=2, texture_size=2048, quality_resolution=256,
        checkpoint_every=250, **_COMMON),
    "high": Preset(
        name="high", description="the slowest: 10k geometry steps, 4 views per step, grid 192",
        grid=192, render_resolution=512, pretrain_steps=800, pretrain_batch=16384, geometry_steps=10000, views_per_step=4,
        geometry_shortcut_fraction=0.2, target_faces=80000,
        texture_steps=4000, texture_render_resolution=512, texture_views_per_step=4, texture_size=4096, quality_resolution=256,
        checkpoint_every=500, **{**_COMMON, "geometry_t_end": (0.02, 0.4), "texture_t_end": (0.02, 0.2)}),
}

# Fields an override may not change (they name the preset rather than configure it).
FIXED_FIELDS = ("name", "description")


class OverrideError(ValueError):
    """An override that names no preset field or has the wrong type/range (job.py turns it into a JobError)."""


def _check_value(name: str, kind, value, default):
    if kind is bool or isinstance(default, bool):
        if not isinstance(value, bool):
            raise OverrideError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise OverrideError(f"{name} must be a whole number, got {value!r}")
        if value < 0:
            raise OverrideError(f"{name} must not be negative, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise OverrideError(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if (not isinstance(value, (list, tuple)) or len(value) != len(default)
                or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
            raise OverrideError(f"{name} must be a list of {len(default)} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    raise OverrideError(f"{name} cannot be overridden")


# Ranges a run cannot work outside of (checked after overrides).
def _check_ranges(p: Preset) -> None:
    positive = ("grid", "render_resolution", "views_per_step", "texture_render_resolution",
                "texture_views_per_step", "checkpoint_every", "texture_size", "quality_resolution")
    for name in positive:
        if getattr(p, name) < 1:
            raise OverrideError(f"{name} must be at least 1, got {getattr(p, name)}")
    for name in ("geometry_shortcut_fraction", "neutral_fraction", "front_fraction"):
        if not 0.0 <= getattr(p, name) <= 1.0:
            raise OverrideError(f"{name} must be between 0 and 1, got {getattr(p, name)}")
    # engine.geometry.sdf_field.MAX_SAFE_DEFORMATION (that module needs torch): beyond h/(2*sqrt 3)
    # a Kuhn tet can flatten, so DMTet refuses larger bounds.
    if not 0.0 <= p.max_deformation_cells <= 0.28:
        raise OverrideError(f"max_deformation_cells must be between 0 and 0.28 (tets can invert beyond "
                            f"0.289 cell), got {p.max_deformation_cells}")
    for name in ("geometry_t_start", "geometry_t_end", "texture_t_start", "texture_t_end"):
        lo, hi = getattr(p, name)
        if not 0.0 <= lo <= hi <= 1.0:
            raise OverrideError(f"{name} must be [min, max] with 0 <= min <= max <= 1, got {[lo, hi]}")


def resolve_preset(name: str, overrides: dict | None = None) -> Preset:
    """The preset ``name`` with ``overrides`` applied; raises KeyError (unknown preset) or OverrideError."""
    base = PRESETS[name]
    changes = {}
    defaults = {f.name: getattr(base, f.name) for f in fields(base)}
    for key, value in (overrides or {}).items():
        if key not in defaults or key in FIXED_FIELDS:
            allowed = ", ".join(k for k in defaults if k not in FIXED_FIELDS)
            raise OverrideError(f"{key!r} is not a preset field (fields: {allowed})")
        changes[key] = _check_value(key, type(defaults[key]), value, defaults[key])
    preset = dataclasses.replace(base, **changes)
    _check_ranges(preset)
    return preset


def preset_names() -> list[str]:
    return list(PRESETS)
