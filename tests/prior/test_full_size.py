"""The production loader on full-size random-weight models (the published SD 1.5 / Arc2Face /
CLIP ViT-L/14 architectures, ~2.1 GB written): slow, outside the default run."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_load_prior_on_full_size_models(tmp_path):
    from engine.prior import load_prior
    from engine.prior.fullsize_models import write_fullsize_models

    root = write_fullsize_models(tmp_path / "models")
    prior = load_prior(root, device="cpu")
    def count(module, branch=False):
        return sum(p.numel() for n, p in module.named_parameters() if ("_exp." in n) == branch)

    # published sizes: SD 1.5 UNet 859.52 M, VAE 83.65 M, CLIP ViT-L/14 text model 123.06 M
    assert round(count(prior.unet) / 1e6, 1) == 859.5
    assert round(count(prior.unet, branch=True) / 1e6, 1) == 19.2  # the expression branch's K/V
    assert round(count(prior.vae) / 1e6, 1) == 83.7
    assert round(count(prior.text_encoder) / 1e6, 1) == 123.1
    assert prior.image_size == 512 and prior.id_token_id == 1014 and len(prior.tokenizer) == 49408
    cond = prior.conditioning(torch.randn(512), "smiling", view="front")
    assert cond.prompt.shape == (1, 77, 768)
    with torch.no_grad():
        eps, _, _ = prior.predict_noise(torch.randn(1, 4, 64, 64), torch.tensor([500]), cond, 2.0)
    assert eps.shape == (1, 4, 64, 64) and torch.isfinite(eps).all()
