"""Optional public priors: a view LoRA (Arc2Avatar's, or any diffusers/peft UNet LoRA) in
ROOT/loras/view is loaded when present, stays on at its scale under every task, and is ignored when
absent; a LoRA that does not fit the UNet is refused with the file and the mismatch. The LoRAs are
made here with peft on the tiny UNet; the expected output is computed independently by merging the
file's matrices into a plain copy of the UNet's weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from engine.prior import MismatchedWeightsError, load_prior
from engine.prior.lora import AdapterInfo

LORA = "pytorch_lora_weights.safetensors"


@pytest.fixture
def root(tiny_models_root, tmp_path):
    target = tmp_path / "models"
    shutil.copytree(tiny_models_root, target)
    return target


def make_lora(root, folder, targets=("to_k", "to_v"), rank=4, seed=0):
    """A peft LoRA on the tiny UNet with random A and B (so it changes the output), saved as diffusers does."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(root / "arc2face" / "arc2face")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False),
                     adapter_name="made")
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_lora_adapter(folder, adapter_name="made", weight_name=LORA)
    return folder / LORA


def merged_unet(root, lora_file, scale):
    """Independent reference: W + scale * B @ A for every pair in the file (alpha = rank here)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    unet = UNet2DConditionModel.from_pretrained(root / "arc2face" / "arc2face")
    state = load_file(lora_file)
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for key, a in state.items():
            if key.endswith("lora_A.weight"):
                name = key.removeprefix("unet.")[: -len(".lora_A.weight")]
                b = state[key.replace("lora_A", "lora_B")]
                modules[name].weight += scale * b @ a
    return unet.eval()


def _inputs(unet):
    g = torch.Generator().manual_seed(3)
    noisy = torch.randn(1, 4, 8, 8, generator=g)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    return noisy, torch.tensor([500]), text


def test_view_lora_is_applied_at_its_scale(root):
    lora = make_lora(root, root / "loras" / "view")
    prior = load_prior(root, device="cpu", expression_branch=False)
    assert prior.view_lora == lora and prior.view_scale == pytest.approx(0.45)
    noisy, t, text = _inputs(prior.unet)
    with torch.no_grad():
        got = prior.unet(noisy, t, encoder_hidden_states=text).sample
        want = merged_unet(root, lora, 0.45)(noisy, t, encoder_hidden_states=text).sample
        base = merged_unet(root, lora, 0.0)(noisy, t, encoder_hidden_states=text).sample
    assert (want - base).abs().max() > 1e-3  # the LoRA matters ...
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)  # ... and is applied exactly at 0.45


def test_old_diffusers_key_layout_loads_the_same(root):
    from safetensors.torch import load_file, save_file

    lora = make_lora(root, root / "peft")
    state = load_file(lora)
    old = {"unet." + k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): v
           for k, v in state.items()}
    (root / "loras" / "view").mkdir(parents=True)
    save_file(old, root / "loras" / "view" / LORA)
    prior = load_prior(root, device="cpu", expression_branch=False)
    noisy, t, text = _inputs(prior.unet)
    with torch.no_grad():
        got = prior.unet(noisy, t, encoder_hidden_states=text).sample
        want = merged_unet(root, lora, 0.45)(noisy, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_absent_view_lora_is_ignored(root):
    prior = load_prior(root, device="cpu", expression_branch=False)
    assert prior.view_lora is None and not getattr(prior.unet, "peft_config", None)


def test_view_stays_on_under_a_task_prior(root):
    make_lora(root, root / "loras" / "view")
    prior = load_prior(root, device="cpu", expression_branch=False)
    prior.create_task(AdapterInfo(domain="normal", rank=2, target_modules=["to_q"]))
    assert sorted(prior.unet.active_adapters()) == ["normal", "view"]
    trainable = [n for n, p in prior.unet.named_parameters() if p.requires_grad]
    assert trainable and all(".normal." in n for n in trainable)  # the view LoRA is never trained
    prior.set_task(None)
    assert prior.unet.active_adapters() == ["view"]


def _rewrite(path, change):
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    change(state)
    save_file(state, path)


def _first(state, suffix):
    return next(k for k in sorted(state) if k.endswith(suffix))


@pytest.mark.parametrize("change, message", [
    (lambda s: s.__setitem__(_first(s, "lora_B.weight"), torch.zeros(s[_first(s, "lora_B.weight")].shape[0], 3)),
     "down rank 4 but up rank 3"),
    (lambda s: s.__setitem__(_first(s, "lora_A.weight"), torch.zeros(4, 40)), "input size 40 but the layer takes"),
    (lambda s: s.__setitem__("mid_block.attentions.0.no_such_layer.lora_A.weight", torch.zeros(4, 8)),
     "module(s) the UNet does not have"),
    (lambda s: s.__setitem__("text_encoder.layers.0.q_proj.lora_A.weight", torch.zeros(4, 8)), "text encoder"),
    (lambda s: [s.pop(k) for k in list(s) if "lora_B" in k], "only half a LoRA pair"),
])
def test_lora_that_does_not_fit_is_refused_clearly(root, change, message):
    lora = make_lora(root, root / "loras" / "view")
    _rewrite(lora, change)
    with pytest.raises(MismatchedWeightsError) as err:
        load_prior(root, device="cpu", expression_branch=False)
    assert message in err.value.message and str(lora) in err.value.message and err.value.hint


def test_refused_view_lora_leaves_a_loaded_prior_unchanged(root):
    prior = load_prior(root, device="cpu", expression_branch=False)
    lora = make_lora(root, root / "elsewhere", targets=("to_q",))
    _rewrite(lora, lambda s: s.__setitem__(_first(s, "lora_A.weight"), torch.zeros(4, 40)))
    with pytest.raises(MismatchedWeightsError):
        prior.load_view_lora(lora)
    assert prior.view_lora is None and not getattr(prior.unet, "peft_config", None)
