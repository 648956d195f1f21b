"""Score distillation: the gradient on the latents, CFG, timestep annealing, weightings, guards."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from engine.prior.schedules import SCHEDULES, timestep_bounds
from engine.prior.sds import HALF_GRAD_TARGET, SDSConfig, ScoreDistillation, half_grad_scale, sds_weight

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from host_syncs import SyncCounter  # noqa: E402  (the benchmarks' counter of host syncs)


def _unet(prior, noisy, t, prompt):
    """A plain UNet call (not the prior's wrapper): the expression branch is off in the base prior."""
    with torch.no_grad():
        return prior.unet(noisy, t, encoder_hidden_states=prompt).sample


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_gradient_on_latents_is_weighted_noise_residual(base_prior, weighting, expected_sds_gradient):
    prior = base_prior
    torch.manual_seed(0)
    cond = prior.conditioning(torch.randn(512), "smiling", view="front")
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    noise, t, scale = torch.randn(1, 4, 8, 8), torch.tensor([437]), 2.5
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=scale, weighting=weighting, diagnostics=True))
    loss, info = sds.step_latents(latents, cond, 0, 10, noise=noise, t=t)
    loss.backward()
    expected = expected_sds_gradient(prior, latents.detach(), cond, noise, t, scale, weighting)
    a = float(prior.scheduler.alphas_cumprod[437])
    w = {"sds": 1 - a, "uniform": 1.0, "fantasia3d": math.sqrt(a) * (1 - a)}[weighting]
    assert info["t"] == [437] and info["w"][0] == pytest.approx(w, rel=1e-6)
    assert expected.abs().max() > 1e-3  # a real gradient, not two zeros compared
    torch.testing.assert_close(latents.grad, expected, rtol=1e-4, atol=1e-5)
    assert loss.item() == pytest.approx(0.5 * float(expected.pow(2).sum()), rel=1e-4)


def test_batch_of_views_gets_mean_gradient_and_reaches_the_render(base_prior, expected_sds_gradient):
    prior = base_prior
    cond = prior.conditioning(torch.randn(512), "", view=[0.0, 180.0])
    render = torch.rand(2, 64, 64, 3, requires_grad=True)
    noise, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 700])
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=3.0))
    latents = prior.encode_images(render)
    latents.retain_grad()
    loss, _ = sds.step_latents(latents, cond, 0, 10, noise=noise, t=t)
    loss.backward()
    expected = expected_sds_gradient(prior, latents.detach(), cond, noise, t, 3.0)
    torch.testing.assert_close(latents.grad, expected / 2, rtol=1e-4, atol=1e-5)
    assert render.grad is not None and render.grad.abs().sum() > 0  # through the VAE encoder


def test_k_renders_per_view_are_paired_with_their_own_view(base_prior, expected_sds_gradient):
    """Renders come as k copies of the V views ([v0, v1, v2, v0, v1, v2]); each must get its own view's
    conditioning. The three views' texts differ, so a mispairing changes the gradient."""
    prior = base_prior
    views = ["front", "side", "back"]
    cond = prior.conditioning(torch.randn(512), "smiling", view=views)
    repeated = cond.repeat(2)
    assert repeated.texts == [f"smiling, {v} view" for v in views] * 2
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(6, 4, 8, 8, generator=g, requires_grad=True)
    noise, t = torch.randn(6, 4, 8, 8, generator=g), torch.tensor([200, 350, 500, 650, 800, 900])
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=2.0))
    loss, _ = sds.step_latents(latents, cond, 0, 10, noise=noise, t=t)
    loss.backward()
    for i in range(6):
        v = i % 3
        own = type(cond)(cond.prompt[v:v + 1], cond.uncond[v:v + 1])
        expected = expected_sds_gradient(prior, latents.detach()[i:i + 1], own, noise[i:i + 1], t[i:i + 1], 2.0) / 6
        torch.testing.assert_close(latents.grad[i:i + 1], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(cond.prompt[0], cond.prompt[1])  # the views really differ


def test_cfg_is_the_standard_form(base_prior):
    prior = base_prior
    cond = prior.conditioning(torch.randn(512), "angry")
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    eps_u, eps_c = _unet(prior, noisy, t, cond.uncond), _unet(prior, noisy, t, cond.prompt)
    assert (eps_c - eps_u).abs().max() > 1e-4  # the two passes differ, so the scale matters
    for scale in (0.0, 1.0, 7.5):
        eps_hat, _, _ = prior.predict_noise(noisy, t, cond, scale)
        torch.testing.assert_close(eps_hat, eps_u + scale * (eps_c - eps_u), rtol=1e-4, atol=1e-5)


def test_half_precision_prior_gives_fp32_render_gradients_without_underflow(tiny_models_root):
    """fp16 on CUDA, stood in for on the CPU by the same tiny models cast to fp16 (load_prior refuses
    half precision on the CPU): the render's gradient is fp32 and matches the fp32 prior's, even for
    gradients small enough to underflow in an fp16 VAE backward without the loss scale."""
    from engine.prior import load_prior

    p32, p16 = load_prior(tiny_models_root, device="cpu"), load_prior(tiny_models_root, device="cpu")
    for module in (p16.unet, p16.vae, p16.text_encoder):
        module.half()
    p16.dtype = torch.float16
    emb, image = torch.randn(512), torch.rand(1, 64, 64, 3)
    noise, t = torch.randn(1, 4, 8, 8), torch.tensor([400])
    grads, infos = {}, {}
    for name, prior in (("fp32", p32), ("fp16", p16)):
        render = image.clone().requires_grad_(True)
        sds = ScoreDistillation(prior, SDSConfig(guidance_scale=2.0, grad_scale=1e-5, diagnostics=True))
        loss, infos[name] = sds.step(render, prior.conditioning(emb, "smiling", view="front"), 0, 10, noise=noise, t=t)
        loss.backward()
        grads[name] = render.grad
    assert grads["fp16"].dtype == torch.float32 and torch.isfinite(grads["fp16"]).all()
    assert infos["fp16"]["half_grad_scale"] > 1 and "half_grad_scale" not in infos["fp32"]
    error = float((grads["fp16"] - grads["fp32"]).norm() / grads["fp32"].norm())
    assert error < 0.03, error  # without the scale: ~2 (most values flushed to zero)


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
    cond = base_prior.conditioning(torch.randn(512))
    drawn = [int(sds.step_latents(torch.randn(1, 4, 8, 8, requires_grad=True), cond, 1000, 1000,
                                  generator=torch.Generator().manual_seed(i))[1]["lazy"]["t"][0]) for i in range(3)]
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


@pytest.mark.parametrize("diagnostics", [False, True])
def test_nan_guard_and_gradient_clipping(base_prior, diagnostics):
    """A non-finite render skips the step on the device: zero loss, an exactly zero (finite) render
    gradient, the flag kept as a tensor (read back only with diagnostics)."""
    cond = base_prior.conditioning(torch.randn(512))
    render = torch.rand(1, 64, 64, 3)
    render[0, 3, 3, 0] = float("nan")
    render.requires_grad_(True)
    sds = ScoreDistillation(base_prior, SDSConfig(grad_clip=0.01, diagnostics=diagnostics))
    loss, info = sds.step(render, cond, 0, 10)
    assert bool(info["lazy"]["skipped"]) and loss.item() == 0.0
    assert info.get("skipped") == ("non-finite render or latents" if diagnostics else None)
    loss.backward()
    assert render.grad is not None and torch.equal(render.grad, torch.zeros_like(render))  # no NaN reaches the mesh
    latents = torch.randn(1, 4, 8, 8, requires_grad=True)
    loss, info = sds.step_latents(latents, cond, 0, 10, t=torch.tensor([900]), noise=torch.randn(1, 4, 8, 8))
    loss.backward()
    assert not bool(info["lazy"]["skipped"]) and info.get("skipped", "") == ""
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


def _half_prior(tiny_models_root):
    """The tiny models cast to fp16 on the CPU: the stand-in for a CUDA fp16 prior (load_prior refuses
    half precision on the CPU)."""
    from engine.prior import load_prior

    prior = load_prior(tiny_models_root, device="cpu")
    for module in (prior.unet, prior.vae, prior.text_encoder):
        module.half()
    prior.dtype = torch.float16
    return prior


def test_a_step_reads_nothing_back_unless_diagnostics_are_asked_for(base_prior, tiny_models_root):
    """On a GPU every read-back stalls the queue: a default SDS step (VAE path, latent shortcut, fp16
    loss scaling) makes none, and its backward none either; with diagnostics the values come back."""
    counter = SyncCounter().install()
    cond = base_prior.conditioning(torch.randn(512), "smiling", view=[0.0, 90.0])
    cases = [(base_prior, torch.rand(2, 64, 64, 3)), (base_prior, torch.rand(2, 32, 32, 4)),
             (_half_prior(tiny_models_root), torch.rand(2, 64, 64, 3))]
    for prior, image in cases:
        c = cond if prior is base_prior else prior.conditioning(torch.randn(512), "smiling", view=[0.0, 90.0])
        for diagnostics in (False, True):
            render = image.clone().requires_grad_(True)
            sds = ScoreDistillation(prior, SDSConfig(diagnostics=diagnostics))
            counter.reset()
            with counter.counting():
                loss, info = sds.step(render, c, 3, 10, generator=torch.Generator().manual_seed(0))
                loss.backward()
            assert render.grad.abs().sum() > 0
            if diagnostics:
                assert sum(counter.read_backs.values()) >= 5 and len(info["t"]) == 2 and info["loss"] > 0
            else:
                assert not counter.read_backs and not counter.data_dependent, (counter.read_backs,
                                                                                counter.data_dependent)
                assert "t" not in info and info["lazy"]["t"].shape == (2,)


def test_half_grad_scale_on_the_device_is_the_host_formula():
    """The fp16 loss scale, now computed on the device from frexp, equals the former host formula
    2^floor(log2(256 / peak)) clamped to [1, 2^24] (1 for a zero peak), powers of two included."""
    g = torch.Generator().manual_seed(0)
    peaks = [0.0, 1e-30, 1e-12, 2.0**-20, 3e-5, 0.1, 0.5, 1.0, 1.5, 2.0, 255.9, 256.0, 256.1, 512.0, 1e6, 3e38]
    peaks += [2.0**k for k in range(-30, 12)]
    peaks += (10.0 ** (torch.rand(200, generator=g) * 16 - 12)).tolist()
    for p in list(peaks):  # each power of two's float32 neighbours too
        peaks += [math.nextafter(p, 0.0), math.nextafter(p, math.inf)] if p > 0 else []
    for p in peaks:
        peak = float(torch.tensor(p, dtype=torch.float32))  # the value the former code read back
        expected = 2.0 ** math.floor(math.log2(HALF_GRAD_TARGET / peak)) if peak > 0 else 1.0
        expected = min(max(expected, 1.0), 2.0**24)
        assert float(half_grad_scale(torch.tensor(peak, dtype=torch.float32))) == expected, p
