"""FLOP constants of the prior and a time estimate per preset (standard library only).

The presets are engine/pipeline/presets.py (the table the pipeline reads); the estimate takes any
object with ``geometry_steps``, ``texture_steps``, ``views_per_step``, ``geometry_shortcut_fraction``
(and optionally ``texture_views_per_step``). docs/benchmarks-prior.md
explains the estimate. FLOP figures are counted by ``python bench/bench_sds_step.py --flops``
(torch's FlopCounterMode on the SD 1.5 configurations, meta tensors, 2 FLOPs per multiply-add).
"""

from __future__ import annotations

from dataclasses import dataclass

# Counted for SD 1.5 (bench/bench_sds_step.py --flops); per view.
UNET_CFG_TFLOP = 1.607  # UNet forward, batch 2 (unconditional + conditional), 64x64 latents
VAE_ENCODE_TFLOP = 1.117  # VAE encoder forward on a 512x512 render
VAE_ENCODE_BACKWARD_TFLOP = 1.151  # backward to the render only (frozen VAE: no weight gradients)


def __getattr__(name: str):
    # The preset table itself lives with the pipeline that reads it (engine/pipeline/presets.py);
    # ``PRESETS`` stays importable from here for the estimate's callers (bench_sds_step.py).
    if name in ("PRESETS", "Preset", "PriorPreset"):
        from ..pipeline import presets

        return presets.PRESETS if name == "PRESETS" else presets.Preset
    raise AttributeError(name)


@dataclass(frozen=True)
class StepFlops:
    """TFLOP per view of the parts of one SDS step (defaults: the counted SD 1.5 figures above;
    bench/bench_full_size.py passes the figures it measured on the full-size models)."""

    unet_cfg: float = UNET_CFG_TFLOP
    vae_encode: float = VAE_ENCODE_TFLOP
    vae_backward: float = VAE_ENCODE_BACKWARD_TFLOP


def step_tflop(vae: bool, flops: StepFlops | None = None) -> float:
    """TFLOP of one SDS step for one view: UNet with CFG, plus VAE encode and its backward if used."""
    f = flops or StepFlops()
    return f.unet_cfg + ((f.vae_encode + f.vae_backward) if vae else 0.0)


def preset_tflop(preset, flops: StepFlops | None = None) -> dict[str, float]:
    shortcut = int(preset.geometry_steps * preset.geometry_shortcut_fraction)
    geometry = preset.views_per_step * (shortcut * step_tflop(False, flops)
                                        + (preset.geometry_steps - shortcut) * step_tflop(True, flops))
    texture_views = getattr(preset, "texture_views_per_step", preset.views_per_step)
    texture = texture_views * preset.texture_steps * step_tflop(True, flops)
    return {"geometry": geometry, "texture": texture, "total": geometry + texture}


def preset_minutes(preset, peak_tflops: float, utilisation: float, overhead: float = 0.0,
                   flops: StepFlops | None = None) -> float:
    """Minutes of prior compute per head at ``utilisation`` of ``peak_tflops``; ``overhead`` adds a
    fraction for rendering, geometry extraction and optimiser steps (not counted in the FLOPs)."""
    seconds = preset_tflop(preset, flops)["total"] / (peak_tflops * utilisation)
    return seconds * (1.0 + overhead) / 60.0
