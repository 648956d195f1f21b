"""What a stage step makes the host wait for (on a GPU): counted on the CPU by bench/host_syncs.py.

A geometry or texture step reads back three values from the device: the loss (the pipeline's own
NaN check and progress value) and the two sizes the rasteriser's data-dependent work needs (the
visibility pass's candidate count, the anti-aliasing passes' crossing counts). Nothing from the
SDS step, the conditioning or the edge table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from host_syncs import SyncCounter  # noqa: E402  (the benchmarks' counter of host syncs)


@pytest.fixture(scope="module")
def stages(tiny_models_root):
    from engine.pipeline.geometry_stage import GeometryStage
    from engine.pipeline.presets import resolve_preset
    from engine.pipeline.texture_stage import TextureStage
    from engine.prior import load_prior

    prior = load_prior(tiny_models_root, device="cpu")
    settings = resolve_preset("test", {"grid": 24, "render_resolution": 48, "pretrain_steps": 60,
                                       "geometry_steps": 4, "geometry_shortcut_fraction": 0.5, "views_per_step": 2,
                                       "texture_render_resolution": 48, "sdf_sign": 0.1})
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32)
    geometry = GeometryStage(settings, prior, embedding, ["neutral", "smiling"], seed=1, device="cpu",
                             normal_maps=False)
    geometry.initialise()
    v, f, offsets = geometry.canonical()
    texture = TextureStage(settings, prior, embedding, v, f, offsets, size=64, seed=1, device="cpu",
                           albedo_lora=False)
    return geometry, texture


def _files(counts) -> dict[str, int]:
    out: dict[str, int] = {}
    for site, n in counts.items():
        out[site.split(":")[0]] = out.get(site.split(":")[0], 0) + n
    return out


def test_a_step_reads_back_the_loss_and_the_rasteriser_sizes_only(stages):
    geometry, texture = stages
    counter = SyncCounter().install()
    try:
        steps = [("geometry, latent shortcut", lambda: geometry.step(0).loss),
                 ("geometry, VAE path", lambda: geometry.step(3).loss),
                 ("texture", lambda: texture.step(0)[0])]
        for name, step in steps:
            step()  # first calls fill caches (conditioning texts) that later steps reuse
            counter.reset()
            with counter.counting():
                loss = float(step())
            assert np.isfinite(loss)
            device = _files(counter.device_read_backs())
            assert device == {"tests/pipeline/test_host_syncs.py": 1, "engine/render/rasterize_torch.py": 2}, (
                name, counter.device_read_backs())
            # not device syncs: Adam's CPU step counters and the cameras before they move
            assert set(_files(counter.host_read_backs())) <= {"torch/optim/optimizer.py", "engine/render/cameras.py",
                                                              "engine/pipeline/geometry_stage.py",
                                                              "engine/pipeline/texture_stage.py"}, name
    finally:
        counter.uninstall()
