"""Quality presets of the prior stages and a FLOP-based time estimate (standard library only).

The pipeline reads the step counts, views per step and SDS settings from here; docs/benchmarks-prior.md
explains the estimate. FLOP figures are counted by ``python bench/bench_sds_step.py --flops``
(torch's FlopCounterMode on the SD 1.5 configurations, meta tensors, 2 FLOPs per multiply-add).
"""

from __future__ import annotations

from dataclasses import dataclass

# Counted for SD 1.5 (bench/bench_sds_step.py --flops); per view.
UNET_CFG_TFLOP = 1.607  # UNet forward, batch 2 (unconditional + conditional), 64x64 latents
VAE_ENCODE_TFLOP = 1.117  # VAE encoder forward on a 512x512 render
VAE_ENCODE_BACKWARD_TFLOP = 1.151  # backward to the render only (frozen VAE: no weight gradients)


@dataclass(frozen=True)
class PriorPreset:
    name: str
    geometry_steps: int
    texture_steps: int
    views_per_step: int  # renders per SDS step (one batch)
    geometry_shortcut_fraction: float  # first part of geometry using the 4-channel latent shortcut (no VAE)
    geometry_guidance: float
    texture_guidance: float
    geometry_t: tuple[tuple[float, float], tuple[float, float]]  # (start, end) timestep ranges
    texture_t: tuple[tuple[float, float], tuple[float, float]]


PRESETS = {
    "preview": PriorPreset("preview", 2000, 1000, 1, 0.5, 3.0, 2.0, ((0.02, 0.98), (0.02, 0.5)), ((0.02, 0.5), (0.02, 0.3))),
    "standard": PriorPreset("standard", 5000, 2000, 2, 0.3, 3.0, 2.0, ((0.02, 0.98), (0.02, 0.5)), ((0.02, 0.5), (0.02, 0.3))),
    "high": PriorPreset("high", 10000, 4000, 4, 0.2, 3.0, 2.0, ((0.02, 0.98), (0.02, 0.4)), ((0.02, 0.5), (0.02, 0.2))),
}


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


def preset_tflop(preset: PriorPreset, flops: StepFlops | None = None) -> dict[str, float]:
    shortcut = int(preset.geometry_steps * preset.geometry_shortcut_fraction)
    geometry = preset.views_per_step * (shortcut * step_tflop(False, flops)
                                        + (preset.geometry_steps - shortcut) * step_tflop(True, flops))
    texture = preset.views_per_step * preset.texture_steps * step_tflop(True, flops)
    return {"geometry": geometry, "texture": texture, "total": geometry + texture}


def preset_minutes(preset: PriorPreset, peak_tflops: float, utilisation: float, overhead: float = 0.0,
                   flops: StepFlops | None = None) -> float:
    """Minutes of prior compute per head at ``utilisation`` of ``peak_tflops``; ``overhead`` adds a
    fraction for rendering, geometry extraction and optimiser steps (not counted in the FLOPs)."""
    seconds = preset_tflop(preset, flops)["total"] / (peak_tflops * utilisation)
    return seconds * (1.0 + overhead) / 60.0
