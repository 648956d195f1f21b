"""Timestep ranges for score distillation, annealed over the run (standard library only).

A schedule maps the run's progress ``p = step / total`` in [0, 1] to a fraction in [0, 1] of the
way from the start range to the end range. Both bounds are fractions of the diffusion's training
timesteps (0.98 -> t = 980 of 1000). Annealing the upper bound down lets early steps fix the
coarse shape (large noise) and late steps refine details (small noise).
"""

from __future__ import annotations

import math


def constant(p: float) -> float:
    return 0.0


def linear(p: float) -> float:
    return p


def sqrt(p: float) -> float:
    """Fast early, slow late (most of the drop in the first part of the run)."""
    return math.sqrt(p)


def cosine(p: float) -> float:
    """Slow start and end: half a cosine."""
    return 0.5 - 0.5 * math.cos(math.pi * p)


def stepped(p: float, at: float = 0.5) -> float:
    """Start range until ``at``, then the end range (threestudio-style two-phase runs)."""
    return 1.0 if p >= at else 0.0


SCHEDULES = {"constant": constant, "linear": linear, "sqrt": sqrt, "cosine": cosine, "stepped": stepped}


def timestep_bounds(step: int, total: int, start: tuple[float, float], end: tuple[float, float],
                    schedule: str = "linear") -> tuple[float, float]:
    """(t_min, t_max) as fractions of the training timesteps at ``step`` of ``total``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    p = min(max(step / max(total, 1), 0.0), 1.0)
    f = SCHEDULES[schedule](p)
    lo = start[0] + (end[0] - start[0]) * f
    hi = start[1] + (end[1] - start[1]) * f
    return lo, max(hi, lo)
