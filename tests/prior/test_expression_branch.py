"""The expression-aware cross-attention branch: off = Arc2Face exactly; on = expression matters."""

from __future__ import annotations

import torch

from engine.prior.conditioning import ConditioningOptions
from engine.prior.expression_attention import ExpressionAttnProcessor, has_expression_branch


def test_branch_at_scale_zero_is_the_base_unet_bit_for_bit(tiny_models_root):
    from engine.prior import load_prior

    plain = load_prior(tiny_models_root, device="cpu", expression_branch=False)
    branched = load_prior(tiny_models_root, device="cpu")
    assert not has_expression_branch(plain.unet) and has_expression_branch(branched.unet)
    cross = [p for p in branched.unet.attn_processors.values() if p.with_branch]
    n_cross = sum(1 for n, _ in branched.unet.named_modules() if n.endswith("attn2"))
    assert len(cross) == n_cross > 0 and all(isinstance(p, ExpressionAttnProcessor) for p in cross)
    emb = torch.randn(512)
    cond = branched.conditioning(emb, "")
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([250, 750])
    prompt = cond.prompt.expand(2, -1, -1)
    expr = branched.encode_text("smiling").expand(2, -1, -1)
    with torch.no_grad():
        base = plain.unet_eps(noisy, t, prompt)
        off = branched.unet_eps(noisy, t, prompt, expr, 0.0)
        none = branched.unet_eps(noisy, t, prompt, None, 1.0)
    assert torch.equal(base, off) and torch.equal(base, none)


def test_branch_on_makes_the_expression_matter(tiny_models_root):
    from engine.prior import load_prior

    prior = load_prior(tiny_models_root, device="cpu", options=ConditioningOptions(text_in_prompt=False,
                                                                                   expression_scale=1.0))
    emb = torch.randn(512)
    smiling, angry = prior.conditioning(emb, "smiling"), prior.conditioning(emb, "angry")
    assert torch.equal(smiling.prompt, angry.prompt)  # identity prompt only: the branch carries the text
    assert smiling.expression is not None and smiling.expression_scale == 1.0
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
    a = prior.predict_noise(noisy, t, smiling, 1.0)[0]
    b = prior.predict_noise(noisy, t, angry, 1.0)[0]
    assert (a - b).abs().max() > 1e-5
    # the branch starts as a copy of the layer's own key/value projections
    proc = next(p for p in prior.unet.attn_processors.values() if p.with_branch)
    attn = next(m for n, m in prior.unet.named_modules() if n.endswith("attn2"))
    assert torch.equal(proc.to_k_exp.weight, attn.to_k.weight)
    # gradients reach the branch's projections (they are trainable)
    proc.to_k_exp.weight.requires_grad_(True)
    prior.unet_eps(noisy, t, smiling.prompt, smiling.expression, 1.0).sum().backward()
    assert proc.to_k_exp.weight.grad is not None and proc.to_k_exp.weight.grad.abs().sum() > 0
    proc.to_k_exp.weight.requires_grad_(False)
