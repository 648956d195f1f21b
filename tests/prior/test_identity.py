"""Identity conditioning as Arc2Face does it, views, unconditional embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.prior.conditioning import ConditioningOptions, view_label_weights, view_weights


def _arc2face_by_hand(encoder, tokenizer, emb, prompt="photo of a id person"):
    """Arc2Face's recipe computed independently of the prior's code: tokenise the prompt, write the
    L2-normalised, zero-padded embedding into the token-embedding table's row of "id" (a private
    copy of the encoder; "id" occurs once, so this is the same as replacing that position), run the
    encoder, take the last hidden state."""
    import copy

    ids = tokenizer(prompt, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    id_token = tokenizer.convert_tokens_to_ids("id</w>")
    assert int((ids == id_token).sum()) == 1
    encoder = copy.deepcopy(encoder)
    with torch.no_grad():
        encoder.get_input_embeddings().weight[id_token] = F.pad(emb / emb.norm(), (0, 768 - 512))
        return encoder(input_ids=ids).last_hidden_state


def _text_by_hand(encoder, tokenizer, text):
    ids = tokenizer(text, padding="max_length", truncation=True, max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(input_ids=ids).last_hidden_state


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


def test_identity_prompt_is_arc2faces_recipe_computed_independently(base_prior):
    emb = torch.randn(512)
    expected = _arc2face_by_hand(base_prior.text_encoder, base_prior.tokenizer, emb)
    torch.testing.assert_close(base_prior.encode_identity(emb), expected, rtol=1e-5, atol=1e-5)
    # no expression, no view: the default (blend) conditioning is exactly Arc2Face's prompt
    torch.testing.assert_close(base_prior.conditioning(emb, "").prompt, expected, rtol=1e-5, atol=1e-5)
    # and not merely some prompt: another identity gives another one
    assert (_arc2face_by_hand(base_prior.text_encoder, base_prior.tokenizer, torch.randn(512)) - expected).abs().max() > 1e-3


def test_default_blends_view_and_expression_text_into_the_identity_prompt(base_prior):
    """Arc2Avatar's recipe: (1 − 0.1)·E_id + 0.1·E_text(phrase), E_id Arc2Face's exact prompt."""
    assert base_prior.options.mode == "blend" and base_prior.blend_text_encoder is None  # tiny models: no sd15 encoder
    emb = torch.randn(512)
    e_id = _arc2face_by_hand(base_prior.text_encoder, base_prior.tokenizer, emb)
    cond = base_prior.conditioning(emb, "smiling", view=["front", "side", 45.0])
    assert cond.batch == 3 and cond.texts[:2] == ["smiling, front view", "smiling, side view"]
    text = {v: _text_by_hand(base_prior.text_encoder, base_prior.tokenizer, f"smiling, {v} view") for v in ("front", "side")}
    for row, label in ((0, "front"), (1, "side")):
        torch.testing.assert_close(cond.prompt[row:row + 1], 0.9 * e_id + 0.1 * text[label], rtol=1e-5, atol=1e-5)
    w = view_weights(45.0)
    blended = 0.9 * e_id + 0.1 * (w["front"] * text["front"] + w["side"] * text["side"])
    torch.testing.assert_close(cond.prompt[2:3], blended, rtol=1e-5, atol=1e-5)
    only_expr = base_prior.conditioning(emb, "angry").prompt
    angry = _text_by_hand(base_prior.text_encoder, base_prior.tokenizer, "angry")
    torch.testing.assert_close(only_expr, 0.9 * e_id + 0.1 * angry, rtol=1e-5, atol=1e-5)


def test_append_and_identity_modes(tiny_models_root):
    from engine.prior import load_prior

    emb = torch.randn(512)
    append = load_prior(tiny_models_root, device="cpu", options=ConditioningOptions(text_mode="append"))
    got = append.conditioning(emb, "smiling", view="side").prompt
    expected = _arc2face_by_hand(append.text_encoder, append.tokenizer, emb, "photo of a id person, smiling, side view")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert ConditioningOptions(text_in_prompt=True).mode == "append"  # the older switch still works
    ident = load_prior(tiny_models_root, device="cpu", options=ConditioningOptions(text_in_prompt=False))
    torch.testing.assert_close(ident.conditioning(emb, "smiling", view="side").prompt,
                               _arc2face_by_hand(ident.text_encoder, ident.tokenizer, emb), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="text mode"):
        ConditioningOptions(text_mode="bogus").mode


def test_blend_uses_sd15s_own_text_encoder_when_present(models_copy):
    """Arc2Avatar encodes the view text with SD 1.5's CLIP text encoder, not Arc2Face's."""
    from transformers import CLIPTextModel

    from engine.prior import MissingWeightsError, load_prior

    with pytest.raises(MissingWeightsError, match="text_encoder"):
        load_prior(models_copy, device="cpu", options=ConditioningOptions(blend_encoder="sd15"))
    arc_encoder = CLIPTextModel.from_pretrained(models_copy / "arc2face" / "encoder")
    torch.manual_seed(7)
    sd15_encoder = CLIPTextModel(arc_encoder.config)  # another (random) encoder of the same shape
    sd15_encoder.save_pretrained(models_copy / "sd15" / "text_encoder")
    prior = load_prior(models_copy, device="cpu")
    assert prior.blend_text_encoder is not None
    emb = torch.randn(512)
    e_id = _arc2face_by_hand(prior.text_encoder, prior.tokenizer, emb)
    front = _text_by_hand(sd15_encoder, prior.tokenizer, "front view")
    torch.testing.assert_close(prior.conditioning(emb, "", view="front").prompt, 0.9 * e_id + 0.1 * front,
                               rtol=1e-5, atol=1e-5)
    forced = load_prior(models_copy, device="cpu", options=ConditioningOptions(blend_encoder="arc2face"))
    assert forced.blend_text_encoder is None


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
