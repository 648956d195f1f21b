"""The expression-aware cross-attention branch: off = Arc2Face exactly; a fresh branch = Arc2Face
(neutral start); training moves it and then the expression matters."""

from __future__ import annotations

import torch

from engine.prior.conditioning import ConditioningOptions
from engine.prior.expression_attention import ExpressionAttnProcessor, has_expression_branch
from engine.prior.lora import AdapterInfo


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


def _branch_prior(root):
    from engine.prior import load_prior

    return load_prior(root, device="cpu", options=ConditioningOptions(text_mode="identity", expression_scale=1.0))


def _count_branch_calls(unet):
    """Forward hooks on every to_v_exp: proves the branch path really ran (not the stock processor)."""
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for n, m in unet.named_modules() if n.endswith("to_v_exp")]
    return calls, handles


def test_a_fresh_branch_at_scale_one_reproduces_the_base_prior(tiny_models_root):
    from engine.prior import load_prior

    plain = load_prior(tiny_models_root, device="cpu", expression_branch=False)
    prior = _branch_prior(tiny_models_root)
    emb = torch.randn(512)
    smiling = prior.conditioning(emb, "smiling")
    assert smiling.expression is not None and smiling.expression_scale == 1.0
    noisy, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 800])
    calls, handles = _count_branch_calls(prior.unet)
    try:
        with torch.no_grad():
            fresh = prior.unet_eps(noisy, t, smiling.prompt.expand(2, -1, -1), smiling.expression.expand(2, -1, -1),
                                   1.0)
            base = plain.unet_eps(noisy, t, smiling.prompt.expand(2, -1, -1))
    finally:
        for h in handles:
            h.remove()
    assert calls, "the expression branch did not run"
    # the branch path computes attention itself (not the stock processor): equal up to rounding
    torch.testing.assert_close(fresh, base, rtol=1e-5, atol=1e-6)
    # the key projection still reads text as the layer does; the value projection starts at zero
    proc = next(p for p in prior.unet.attn_processors.values() if p.with_branch)
    attn = next(m for n, m in prior.unet.named_modules() if n.endswith("attn2"))
    assert torch.equal(proc.to_k_exp.weight, attn.to_k.weight) and not proc.to_v_exp.weight.any()


def test_training_moves_the_branch_and_then_the_expression_matters(tiny_models_root):
    prior = _branch_prior(tiny_models_root)
    torch.manual_seed(0)
    params = prior.create_task(AdapterInfo(domain="normal", rank=4, alpha=4.0, target_modules=["to_k_exp", "to_v_exp"]))
    prior.options = ConditioningOptions(text_mode="identity", expression_scale=1.0)  # keep the branch on
    emb = torch.randn(512)
    smiling, angry = prior.conditioning(emb, "smiling"), prior.conditioning(emb, "angry")
    assert torch.equal(smiling.prompt, angry.prompt)  # identity prompt only: the branch carries the text
    noisy, t = torch.randn(1, 4, 8, 8), torch.tensor([500])

    def eps(cond):
        return prior.unet_eps(noisy, t, cond.prompt, cond.expression, 1.0)

    with torch.no_grad():
        before_s, before_a = eps(smiling), eps(angry)
    assert torch.equal(before_s, before_a)  # untrained: the expression changes nothing yet
    target = torch.randn(1, 4, 8, 8)
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        loss = (eps(smiling) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after_s, after_a = eps(smiling), eps(angry)
    assert (after_s - before_s).abs().max() > 1e-4  # training moved the branch
    assert (after_s - after_a).abs().max() > 1e-5  # and now "smiling" and "angry" differ
    v_b = [p for n, p in prior.unet.named_parameters() if "to_v_exp" in n and "lora_B" in n]
    assert v_b and any(p.abs().sum() > 0 for p in v_b)
