"""Task priors as LoRA adapters: bit-exact save/load, scale 0 = base, switching, load_prior(task=...)."""

from __future__ import annotations

import json

import pytest
import torch

from engine.prior.lora import AdapterInfo, save_task_adapter


def _randomise(params, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:  # LoRA B starts at zero: give both factors values so the adapter does something
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _eps(prior, emb, noisy, t):
    cond = prior.conditioning(emb, "smiling")
    with torch.no_grad():
        return prior.predict_noise(noisy, t, cond, 2.0)[0]


def test_adapters_save_and_load_bit_exactly_and_switch(models_copy):
    from engine.prior import load_prior

    trainer_side = load_prior(models_copy, device="cpu")
    emb, noisy, t = torch.randn(512), torch.randn(1, 4, 8, 8), torch.tensor([600])
    base = _eps(trainer_side, emb, noisy, t)
    for seed, task in enumerate(("normal", "albedo")):
        info = AdapterInfo(domain=task, rank=4, alpha=4.0, expression_scale=0.5)
        params = trainer_side.create_task(info)
        assert any("to_k_exp" in n for n, p in trainer_side.unet.named_parameters() if p.requires_grad)
        _randomise(params, seed)
        save_task_adapter(trainer_side.unet, models_copy / "loras" / task, task, info)
    saved = {n: p.detach().clone() for n, p in trainer_side.unet.named_parameters() if "lora_" in n}

    prior = load_prior(models_copy, device="cpu", task="normal")
    assert set(prior.adapters) == {"normal", "albedo"} and prior.adapters["normal"].rank == 4
    loaded = {n: p for n, p in prior.unet.named_parameters() if "lora_" in n}
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[n], saved[n]) for n in saved)

    trainer_side.set_task("normal")
    normal = _eps(prior, emb, noisy, t)
    assert torch.equal(normal, _eps(trainer_side, emb, noisy, t))
    assert prior.expression_scale() == 0.5  # the trained branch scale comes with the adapter
    prior.set_task("albedo")
    albedo = _eps(prior, emb, noisy, t)
    prior.set_task(None)
    assert torch.equal(_eps(prior, emb, noisy, t), base)
    assert not torch.allclose(normal, base) and not torch.allclose(normal, albedo)


def test_lora_scale_zero_equals_the_base_model(models_copy):
    from engine.prior import load_prior

    prior = load_prior(models_copy, device="cpu")
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    prompt = prior.encode_identity(torch.randn(512))
    with torch.no_grad():
        base = prior.unet_eps(noisy, t, prompt)
    params = prior.create_task(AdapterInfo(domain="normal", rank=2))
    _randomise(params, 3)
    with torch.no_grad():
        prior.set_task("normal", scale=1.0)
        full = prior.unet_eps(noisy, t, prompt)
        prior.set_task("normal", scale=0.0)
        zero = prior.unet_eps(noisy, t, prompt)
        prior.set_task("normal", scale=0.5)
        half = prior.unet_eps(noisy, t, prompt)
    assert torch.equal(zero, base)
    assert not torch.allclose(full, base)
    assert (half - base).abs().max() < (full - base).abs().max()


def test_missing_task_prior_is_a_clear_error(tiny_models_root):
    from engine.prior import MissingWeightsError, PriorError, load_prior

    with pytest.raises(MissingWeightsError, match="train-prior --domain albedo"):
        load_prior(tiny_models_root, device="cpu", task="albedo")
    prior = load_prior(tiny_models_root, device="cpu")
    with pytest.raises(PriorError, match="not loaded"):
        prior.set_task("normal")


def test_corrupt_and_mismatched_adapters(models_copy):
    from safetensors.torch import load_file, save_file

    from engine.prior import CorruptWeightsError, MismatchedWeightsError, load_prior
    from engine.prior.lora import WEIGHTS_FILE

    prior = load_prior(models_copy, device="cpu")
    prior.create_task(AdapterInfo(domain="normal", rank=2))
    folder = save_task_adapter(prior.unet, models_copy / "loras" / "normal", "normal", AdapterInfo(domain="normal", rank=2))
    weights = folder / WEIGHTS_FILE
    good = weights.read_bytes()

    weights.write_bytes(good[:-100])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        load_prior(models_copy, device="cpu", task="normal")

    weights.write_bytes(good)
    state = load_file(weights)
    key = next(k for k in state if k.endswith("lora_A.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 3)  # trained on another base
    save_file(state, weights)
    with pytest.raises(MismatchedWeightsError, match="not the file"):  # weights swapped under the JSON
        load_prior(models_copy, device="cpu", task="normal")
    info_file = folder / "prior_adapter.json"
    info = json.loads(info_file.read_text())
    info["weights_sha256"] = ""  # a consistent pair, trained on another base model
    info_file.write_text(json.dumps(info))
    with pytest.raises(MismatchedWeightsError, match="does not fit this UNet"):
        load_prior(models_copy, device="cpu", task="normal")
    info_file.write_text(json.dumps({"rank": 2}))
    with pytest.raises(CorruptWeightsError, match="no 'domain'"):
        load_prior(models_copy, device="cpu", task="normal")


def test_loading_the_same_task_twice_is_refused_clearly(models_copy):
    from engine.prior import load_prior

    prior = load_prior(models_copy, device="cpu")
    prior.create_task(AdapterInfo(domain="normal", rank=2))
    folder = save_task_adapter(prior.unet, models_copy / "loras" / "normal", "normal", AdapterInfo(domain="normal", rank=2))
    fresh = load_prior(models_copy, device="cpu", task="normal")
    with pytest.raises(ValueError, match="already loaded"):
        fresh.load_task("normal", folder)
