"""Fixtures of the prior tests: the tiny random-weight models (tests/conftest.py) loaded with the
production loader, and a small synthetic dataset of rendered heads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def base_prior(tiny_models_root):
    """The base prior (no task LoRA), shared: tests must not add adapters to it."""
    from engine.prior import load_prior

    return load_prior(tiny_models_root, device="cpu")


@pytest.fixture
def models_copy(tiny_models_root, tmp_path) -> Path:
    """A private copy of the tiny models folder, for tests that damage or extend it."""
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root, root)
    return root


def write_heads(folder: Path, n_heads: int = 2, views: int = 2, size: int = 64, seed: int = 0) -> Path:
    """Rendered heads in the builder's input layout: smooth synthetic 'normal maps' (not faces:
    their only job is to give the trainer a learnable image distribution)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    expressions = ["smiling", "angry", "surprised", "neutral"]
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for h in range(n_heads):
        head = folder / f"head_{h:02d}"
        head.mkdir(parents=True)
        np.save(head / "identity.npy", rng.normal(size=512).astype(np.float32))
        names = [f"normal_{v:03d}.png" for v in range(views)]
        json.dump({"expression": expressions[h % 4], "views": dict(zip(names, ["front", 90.0, "back", -45.0]))},
                  open(head / "meta.json", "w"))
        for v, name in enumerate(names):
            img = np.stack([xx, yy, np.full_like(xx, 0.3 + 0.2 * h + 0.1 * v)], -1)
            Image.fromarray((img * 255).astype(np.uint8)).save(head / name)
    return folder


@pytest.fixture(scope="session")
def prior_dataset(tmp_path_factory) -> Path:
    from engine.prior.dataset import build_dataset

    base = tmp_path_factory.mktemp("prior-data")
    heads = write_heads(base / "heads")
    build_dataset(heads, base / "dataset", "normal", resolution=64)
    return base / "dataset"


@pytest.fixture
def make_heads():
    return write_heads


@pytest.fixture(scope="session")
def expected_sds_gradient():
    """w(t)·(ε̂ − ε) from the definitions, independently of the code under test: ᾱ from the
    scheduler, z_t by hand, two plain UNet calls (the base prior's expression branch is off), CFG
    ε_u + s(ε_c − ε_u) and the weighting by hand."""
    import torch

    def compute(prior, latents, cond, noise, t, scale, weighting="sds"):
        a = prior.scheduler.alphas_cumprod.float()[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        with torch.no_grad():
            eps_u = prior.unet(noisy, t, encoder_hidden_states=cond.uncond).sample
            eps_c = prior.unet(noisy, t, encoder_hidden_states=cond.prompt).sample
        eps_hat = eps_u + scale * (eps_c - eps_u)
        w = {"sds": 1 - a, "uniform": torch.ones_like(a), "fantasia3d": a.sqrt() * (1 - a)}[weighting]
        return w * (eps_hat - noise)

    return compute
