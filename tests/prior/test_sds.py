"""Score distillation: the gradient on the latents, CFG, timestep annealing, weightings, guards."""

from __future__ import annotations

import math

import pytest
import torch

from engine.prior.schedules import SCHEDULES, timestep_bounds
from engine.prior.sds import SDSConfig, ScoreDistillation, sds_weight


def _by_hand(prior, latents, cond, noise, t, scale):
    """ε̂ from two separate UNet passes (not the batched path under test)."""
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    with torch.no_grad():
        eps_u = prior.unet_eps(noisy, t, cond.uncond)
        eps_c = prior.unet_eps(noisy, t, cond.prompt)
    return eps_u + scale * (eps_c - eps_u), eps_c, eps_u


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_gradient_on_latents_is_weighted_noise_residual(base_prior, weighting):
    prior = base_prior
    torch.manual_seed(0)
    cond = prior.conditioning(torch.randn(512), "smiling", view="front")
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    noise, t, scale = torch.randn(1, 4, 8, 8), torch.tensor([437]), 2.5
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=scale, weighting=weighting))
    loss, info = sds.step_latents(latents, cond, 0, 10, noise=noise, t=t)
    loss.backward()
    eps_hat, _, _ = _by_hand(prior, latents.detach(), cond, noise, t, scale)
    a = float(prior.alphas_cumprod[437])
    w = {"sds": 1 - a, "uniform": 1.0, "fantasia3d": math.sqrt(a) * (1 - a)}[weighting]
    expected = w * (eps_hat - noise)
    assert info["t"] == [437] and info["w"][0] == pytest.approx(w, rel=1e-6)
    torch.testing.assert_close(latents.grad, expected, rtol=1e-4, atol=1e-5)
    assert loss.item() == pytest.approx(0.5 * float(expected.pow(2).sum()), rel=1e-4)


def test_batch_of_views_gets_mean_gradient_and_reaches_the_render(base_prior):
    prior = base_prior
    cond = prior.conditioning(torch.randn(512), "", view=[0.0, 180.0])
    render = torch.rand(2, 64, 64, 3, requires_grad=True)
    noise, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 700])
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=3.0))
    latents = prior.encode_images(render)
    latents.retain_grad()
    loss, _ = sds.step_latents(latents, cond, 0, 10, noise=noise, t=t)
    loss.backward()
    eps_hat, _, _ = _by_hand(prior, latents.detach(), cond, noise, t, 3.0)
    w = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    torch.testing.assert_close(latents.grad, w * (eps_hat - noise) / 2, rtol=1e-4, atol=1e-5)
    assert render.grad is not None and render.grad.abs().sum() > 0  # through the VAE encoder


def test_cfg_is_the_standard_form(base_prior):
    prior = base_prior
    cond = prior.conditioning(torch.randn(512), "angry")
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    for scale in (0.0, 1.0, 7.5):
        eps_hat, eps_c, eps_u = prior.predict_noise(noisy, t, cond, scale)
        torch.testing.assert_close(eps_hat, eps_u + scale * (eps_c - eps_u))
    with torch.no_grad():
        separate_u = prior.unet_eps(noisy, t, cond.uncond)
        separate_c = prior.unet_eps(noisy, t, cond.prompt)
    torch.testing.assert_close(prior.predict_noise(noisy, t, cond, 0.0)[0], separate_u, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prior.predict_noise(noisy, t, cond, 1.0)[0], separate_c, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(separate_u, separate_c)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_annealing_reaches_the_scheduled_bounds(base_prior, schedule):
    config = SDSConfig(t_start=(0.02, 0.98), t_end=(0.2, 0.5), schedule=schedule)
    sds = ScoreDistillation(base_prior, config)
    first, last = sds.timestep_range(0, 1000), sds.timestep_range(1000, 1000)
    assert first == (20, 980)
    assert last == ((200, 500) if schedule != "constant" else (20, 980))
    highs = [sds.timestep_range(s, 1000)[1] for s in range(0, 1001, 50)]
    assert all(a >= b for a, b in zip(highs, highs[1:]))  # never goes back up
    lo, hi = timestep_bounds(500, 1000, (0.0, 1.0), (0.0, 0.0), schedule)
    assert lo == 0.0 and 0.0 <= hi <= 1.0
    drawn = [sds.step_latents(torch.randn(1, 4, 8, 8, requires_grad=True), base_prior.conditioning(torch.randn(512)),
                              1000, 1000, generator=torch.Generator().manual_seed(i))[1]["t"][0] for i in range(3)]
    assert all(last[0] <= t <= last[1] for t in drawn)


def test_weightings_and_unknown_names(base_prior):
    ac = base_prior.alphas_cumprod
    t = torch.tensor([0, 999])
    assert torch.equal(sds_weight(ac, t, "uniform"), torch.ones(2))
    assert sds_weight(ac, t, "sds")[1] > 0.99 and sds_weight(ac, t, "sds")[0] < 0.01
    with pytest.raises(ValueError, match="weighting"):
        ScoreDistillation(base_prior, SDSConfig(weighting="bogus"))
    with pytest.raises(ValueError, match="schedule"):
        timestep_bounds(0, 10, (0, 1), (0, 1), "bogus")


def test_nan_guard_and_gradient_clipping(base_prior):
    cond = base_prior.conditioning(torch.randn(512))
    render = torch.rand(1, 64, 64, 3)
    render[0, 3, 3, 0] = float("nan")
    render.requires_grad_(True)
    sds = ScoreDistillation(base_prior, SDSConfig(grad_clip=0.01))
    loss, info = sds.step(render, cond, 0, 10)
    assert info["skipped"] and loss.item() == 0.0
    loss.backward()  # harmless
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    loss, info = sds.step_latents(latents, cond, 0, 10, t=torch.tensor([900]), noise=torch.randn(1, 4, 8, 8))
    loss.backward()
    assert latents.grad.abs().max() <= 0.01 + 1e-7 and latents.grad.abs().max() > 0.005


def test_latent_shortcut_takes_four_channel_maps(base_prior):
    cond = base_prior.conditioning(torch.randn(512), view="side")
    maps = torch.rand(2, 32, 32, 4, requires_grad=True)  # normal xyz + mask, no VAE
    sds = ScoreDistillation(base_prior, SDSConfig())
    z = sds.to_latents(maps)
    assert z.shape == (2, 4, 8, 8)
    loss, info = sds.step(maps, cond, 5, 10)
    loss.backward()
    assert maps.grad.abs().sum() > 0 and info["t_max"] < 980
    with pytest.raises(ValueError, match="B, H, W"):
        sds.to_latents(torch.rand(1, 3, 64, 64))


def test_renders_that_do_not_fit_the_views_are_refused_clearly(base_prior):
    cond = base_prior.conditioning(torch.randn(512), "", view=["front", "side"])
    sds = ScoreDistillation(base_prior, SDSConfig())
    with pytest.raises(ValueError, match="3 renders but conditioning for 2 views"):
        sds.step_latents(torch.randn(3, 4, 8, 8), cond, 0, 10)
