"""Prompt handling on the real CLIP vocabulary (SD 1.5's tokenizer, rebuilt offline from OpenAI's
BPE merges), with tiny-width models: the "id" token, truncation at 77 tokens, non-ASCII text, and
one UNet call. The encoder has the real vocabulary size (49,408) and a tiny width/depth."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from engine.prior.conditioning import ConditioningOptions

ID_PROMPT_IDS = [49406, 1125, 539, 320, 1014, 2533, 49407]  # <start> photo of a id person <end>


@pytest.fixture(scope="session")
def real_tokenizer_root(tiny_models_root, tmp_path_factory):
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.prior.fullsize_models import CLIP_VIT_L14_TEXT_CONFIG, write_clip_tokenizer

    root = tmp_path_factory.mktemp("real-tokenizer") / "models"
    shutil.copytree(tiny_models_root, root)
    shutil.rmtree(root / "sd15" / "tokenizer")
    write_clip_tokenizer(root / "sd15" / "tokenizer")
    shutil.rmtree(root / "arc2face" / "encoder")
    torch.manual_seed(4)
    config = CLIPTextConfig(**{**CLIP_VIT_L14_TEXT_CONFIG, "num_hidden_layers": 1, "intermediate_size": 256,
                               "num_attention_heads": 4})
    CLIPTextModel(config).to(torch.float16).save_pretrained(root / "arc2face" / "encoder")
    return root


@pytest.fixture(scope="session")
def real_prior(real_tokenizer_root):
    from engine.prior import load_prior

    return load_prior(real_tokenizer_root, device="cpu")


def _ids(prior, text):
    return prior.tokenizer(text, padding="max_length", truncation=True, max_length=77).input_ids


def test_the_real_tokenizer_knows_the_placeholder_and_arc2faces_prompt(real_prior):
    prior = real_prior
    assert len(prior.tokenizer) == 49408 and prior.id_token_id == 1014
    assert prior.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    seen = {}
    layer = prior.text_encoder.get_input_embeddings()
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(ids=i[0].clone(), out=o.detach().clone()))
    emb = torch.randn(512)
    try:
        prior.encode_identity(emb)
    finally:
        handle.remove()
    assert seen["ids"][0, :7].tolist() == ID_PROMPT_IDS and (seen["ids"][0, 7:] == 49407).all()
    assert torch.equal(seen["out"][0, 4], F.pad(emb / emb.norm(), (0, 256)))


def test_an_id_word_in_the_users_text_stays_a_word(tiny_models_root, real_tokenizer_root):
    from engine.prior import load_prior

    prior = load_prior(real_tokenizer_root, device="cpu", options=ConditioningOptions(text_mode="append"))
    calls = []
    layer = prior.text_encoder.get_input_embeddings()
    handle = layer.register_forward_hook(lambda m, i, o: calls.append((i[0].clone(), o.detach().clone())))
    emb = torch.randn(512)
    try:
        prior.conditioning(emb, "holding an id card")  # "id" twice in the appended prompt
    finally:
        handle.remove()
    [(ids, out)] = [(i, o) for i, o in calls if int((i == 1014).sum()) == 2]
    seen = {"ids": ids, "out": out}
    ids = seen["ids"][0]
    positions = (ids == 1014).nonzero().flatten().tolist()
    assert len(positions) == 2 and positions[0] == 4
    assert torch.equal(seen["out"][0, 4], F.pad(emb / emb.norm(), (0, 256)))
    assert torch.equal(seen["out"][0, positions[1]], layer.weight[1014])  # the user's word, untouched


@pytest.mark.parametrize("mode", ["blend", "append"])
def test_long_expression_text_is_cut_at_77_tokens(real_tokenizer_root, mode):
    from engine.prior import load_prior

    prior = load_prior(real_tokenizer_root, device="cpu", options=ConditioningOptions(text_mode=mode))
    long_text = "smiling " + "with very curly bright red hair " * 15
    phrase_ids = _ids(prior, f"photo of a id person, {long_text}, front view")
    assert len(phrase_ids) == 77 and phrase_ids[-1] == 49407  # cut, still closed by <end>
    emb = torch.randn(512)
    a = prior.conditioning(emb, long_text, view="front").prompt
    b = prior.conditioning(emb, long_text + " and a completely different ending", view="front").prompt
    assert a.shape == (1, 77, 768) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # what lies beyond token 77 is not seen
    short = prior.conditioning(emb, "smiling", view="front").prompt
    assert (a - short).abs().max() > 1e-4


def test_non_ascii_expressions_and_one_unet_call(real_prior):
    prior = real_prior
    emb = torch.randn(512)
    texts = ["überrascht", "笑顔", "😊 grinning", "sonriendo, ¡feliz!"]
    for text in texts:
        ids = _ids(prior, text)
        assert 49407 in ids and all(i < 49408 for i in ids)
        assert len([i for i in ids if i not in (49406, 49407)]) >= 1  # not dropped as unknown
    prompts = [prior.conditioning(emb, text, view=[0.0, 90.0]).prompt for text in texts]
    for i in range(len(prompts)):
        for j in range(i):
            assert (prompts[i] - prompts[j]).abs().max() > 1e-5
    cond = prior.conditioning(emb, texts[1], view=[0.0, 90.0])
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 700])
    eps_hat, eps_c, eps_u = prior.predict_noise(noisy, t, cond, 2.0)
    assert eps_hat.shape == (2, 4, 8, 8) and torch.isfinite(eps_hat).all()
    assert (eps_c - eps_u).abs().max() > 1e-5
