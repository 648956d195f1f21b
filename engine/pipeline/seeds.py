"""Per-step randomness derived from (seed, stage, step), so a resumed run draws what an uninterrupted one would."""

from __future__ import annotations

import numpy as np

GEOMETRY, TEXTURE = 1, 2


def step_seed(seed: int, stage: int, step: int, purpose: int = 0) -> int:
    """A 63-bit integer seed for one purpose (cameras, lights, noise...) of one step."""
    state = np.random.SeedSequence([int(seed), int(stage), int(step), int(purpose)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def step_rng(seed: int, stage: int, step: int, purpose: int = 0) -> np.random.Generator:
    return np.random.default_rng(step_seed(seed, stage, step, purpose))


def step_generator(seed: int, stage: int, step: int, purpose: int = 0):
    import torch

    return torch.Generator(device="cpu").manual_seed(step_seed(seed, stage, step, purpose))


def pick_expression(names: list[str], neutral_fraction: float, rng: np.random.Generator) -> str:
    """Neutral with probability ``neutral_fraction`` (always when there is nothing else), else one of the rest."""
    others = names[1:]
    if not others or rng.random() < neutral_fraction:
        return names[0]
    return others[int(rng.integers(len(others)))]
