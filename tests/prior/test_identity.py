"""Identity conditioning as Arc2Face does it, views, unconditional embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.prior.conditioning import ConditioningOptions, view_label_weights, view_weights


def test_placeholder_position_holds_exactly_the_padded_embedding(base_prior):
    prior = base_prior
    emb = torch.randn(512)
    seen = {}
    layer = prior.text_encoder.get_input_embeddings()
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(ids=i[0].clone(), out=o.detach().clone()))
    try:
        prompt = prior.encode_identity(emb)
    finally:
        handle.remove()
    ids = seen["ids"][0]
    position = int((ids == prior.id_token_id).nonzero())
    expected = F.pad(emb / emb.norm(), (0, 768 - 512))
    assert position == 4  # <start> photo of a [id] person
    assert torch.equal(seen["out"][0, position], expected)
    plain = layer(ids[None])[0]
    others = [i for i in range(ids.shape[0]) if i != position]
    assert torch.equal(seen["out"][0, others], plain[others])  # nothing else touched
    assert prompt.shape == (1, 77, 768)


def test_two_identities_give_different_prompts_and_noise_predictions(base_prior):
    prior = base_prior
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, generator=g), torch.randn(512, generator=g)
    ca, cb = prior.conditioning(a, "smiling"), prior.conditioning(b, "smiling")
    assert not torch.allclose(ca.prompt, cb.prompt)
    noisy, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([400])
    with torch.no_grad():
        ea, eb = prior.unet_eps(noisy, t, ca.prompt), prior.unet_eps(noisy, t, cb.prompt)
    assert (ea - eb).abs().max() > 1e-4
    # the same identity at another scale is the same identity (ArcFace embeddings are normalised)
    torch.testing.assert_close(prior.encode_identity(a), prior.encode_identity(3 * a))


def test_gradient_reaches_the_identity_embedding(base_prior):
    emb = torch.randn(512, requires_grad=True)
    base_prior.encode_identity(emb).pow(2).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_expression_and_view_text_change_the_prompt(base_prior):
    emb = torch.randn(512)
    neutral = base_prior.conditioning(emb, "")
    smiling = base_prior.conditioning(emb, "smiling")
    assert not torch.allclose(neutral.prompt, smiling.prompt)
    # no expression and no view: exactly Arc2Face's "photo of a id person" embedding
    torch.testing.assert_close(neutral.prompt, base_prior.encode_identity(emb), rtol=0, atol=0)
    views = base_prior.conditioning(emb, "smiling", view=["front", "side", 45.0])
    assert views.batch == 3 and views.texts[:2] == ["smiling, front view", "smiling, side view"]
    w = view_weights(45.0)
    blended = w["front"] * views.prompt[0] + w["side"] * views.prompt[1]
    torch.testing.assert_close(views.prompt[2], blended, rtol=1e-5, atol=1e-5)


def test_view_weights():
    for az in (-170.0, -90.0, 0.0, 33.0, 90.0, 135.0, 180.0):
        assert sum(view_weights(az).values()) == pytest.approx(1.0)
    assert view_weights(0.0)["front"] == pytest.approx(1.0)
    assert view_weights(90.0)["side"] == pytest.approx(1.0)
    assert view_weights(180.0)["back"] == pytest.approx(1.0)
    assert view_label_weights("Side view") == {"side": 1.0}
    with pytest.raises(ValueError, match="unknown view"):
        view_label_weights("top")


def test_unconditional_and_negative_embeddings(tiny_models_root):
    from engine.prior import load_prior

    empty = load_prior(tiny_models_root, device="cpu")
    assert torch.equal(empty.unconditional(), empty.encode_text(""))
    zero = load_prior(tiny_models_root, device="cpu", options=ConditioningOptions(uncond="zero_id"))
    torch.testing.assert_close(zero.unconditional(), zero.encode_identity(torch.zeros(512)))
    assert not torch.allclose(zero.unconditional(), empty.unconditional())
    negative = load_prior(tiny_models_root, device="cpu", options=ConditioningOptions(negative="old"))
    cond = negative.conditioning(torch.randn(512), "smiling", view=[0.0, 90.0])
    assert cond.uncond.shape == (2, 77, 768)
    assert torch.equal(cond.uncond[1], negative.encode_text("old")[0])
    with pytest.raises(ValueError, match="512"):
        empty.encode_identity(torch.randn(128))
