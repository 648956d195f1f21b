"""The expression-aware cross-attention branch (decoupled cross-attention, as in IP-Adapter).

Each cross-attention layer of the UNet keeps its identity path unchanged and gains a second
key/value projection pair (``to_k_exp``, ``to_v_exp``) that reads *expression tokens* (the text
encoder's output for e.g. "smiling, side view"). The layer's output becomes

    out = to_out( Attn(q, K_id, V_id) + scale · Attn(q, K_exp, V_exp) )

with the same query. The key projection starts as a copy of the layer's ``to_k`` (the branch
attends to text as the base model does); the value projection starts at **zero**, so a fresh
branch adds nothing at any scale: the UNet with an untrained branch is the base Arc2Face UNet (to
float rounding), and training (LoRA on ``to_k_exp``/``to_v_exp``) moves it from there. A copy of
``to_v`` at scale 1 would instead double the cross-attention output at step 0. When the scale is
0 or no expression tokens are given, the layer calls the stock diffusers processor (bit for bit).

Expression tokens reach the layers through ``cross_attention_kwargs`` (``expression_embeds``,
``expression_scale``). Every attention layer gets a processor of this class (self-attention
layers without a branch) so those kwargs are accepted everywhere.

This module is imported only by code that already needs torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BRANCH_MODULES = ("to_k_exp", "to_v_exp")


class ExpressionAttnProcessor(nn.Module):
    """Attention processor with an optional expression branch (an ``nn.Module``, so its
    projections are registered under the attention layer and seen by ``state_dict`` and peft)."""

    def __init__(self, attn=None, *, with_branch: bool, slice_size: int | None = None):
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

        # The base path is the stock processor, so "no branch" is the base model bit for bit.
        self.main = SlicedAttnProcessor(slice_size) if slice_size else AttnProcessor2_0()
        self.with_branch = with_branch
        if with_branch:
            self.to_k_exp = nn.Linear(attn.to_k.in_features, attn.to_k.out_features, bias=attn.to_k.bias is not None)
            self.to_v_exp = nn.Linear(attn.to_v.in_features, attn.to_v.out_features, bias=attn.to_v.bias is not None)
            with torch.no_grad():
                self.to_k_exp.load_state_dict(_base_linear(attn.to_k).state_dict())
                self.to_v_exp.weight.zero_()  # neutral start: see the module docstring
                if self.to_v_exp.bias is not None:
                    self.to_v_exp.bias.zero_()
            self.to_k_exp.to(attn.to_k.weight.device, attn.to_k.weight.dtype)
            self.to_v_exp.to(attn.to_v.weight.device, attn.to_v.weight.dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 expression_embeds=None, expression_scale: float = 0.0, **kwargs):
        # nn.Module defines __call__ -> forward; diffusers calls processor(attn, ...), so route here.
        return self.forward(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                            expression_embeds, expression_scale)

    def forward(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                expression_embeds=None, expression_scale: float = 0.0):
        active = (self.with_branch and encoder_hidden_states is not None and expression_embeds is not None
                  and expression_scale != 0.0)
        if not active:
            extra = {} if temb is None else {"temb": temb}  # the sliced processor takes no temb
            return self.main(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                             attention_mask=attention_mask, **extra)
        if hidden_states.ndim != 3 or attn.spatial_norm is not None or attn.group_norm is not None:
            raise NotImplementedError("the expression branch expects a transformer cross-attention layer")
        # Fused SDPA here even when slicing is on: this path is cross-attention only (queries x 77
        # tokens), which is small; slicing saves memory in self-attention, which never comes here.
        residual = hidden_states
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        heads = attn.heads
        head_dim = query.shape[-1] // heads

        def split(x):
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            mask = mask.view(batch, heads, -1, mask.shape[-1])
        q = split(query)
        identity = F.scaled_dot_product_attention(q, split(attn.to_k(context)), split(attn.to_v(context)),
                                                  attn_mask=mask)
        expr = expression_embeds.to(query.dtype)
        if expr.shape[0] != batch:
            expr = expr.expand(batch, -1, -1) if expr.shape[0] == 1 else expr
        expression = F.scaled_dot_product_attention(q, split(self.to_k_exp(expr)), split(self.to_v_exp(expr)))
        mixed = identity + expression_scale * expression
        mixed = mixed.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](mixed))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _base_linear(module):
    """The plain Linear under a peft LoRA wrapper (or the module itself)."""
    return getattr(module, "base_layer", module)


def install_expression_branch(unet, *, slice_size: int | None = None) -> int:
    """Give every cross-attention layer an expression branch; return how many layers got one."""
    processors = {}
    count = 0
    modules = dict(unet.named_modules())
    for name in unet.attn_processors:
        attn = modules[name.removesuffix(".processor")]
        cross = bool(getattr(attn, "is_cross_attention", False))
        processors[name] = ExpressionAttnProcessor(attn, with_branch=cross, slice_size=slice_size)
        count += cross
    unet.set_attn_processor(processors)
    return count


def has_expression_branch(unet) -> bool:
    return any(isinstance(p, ExpressionAttnProcessor) and p.with_branch for p in unet.attn_processors.values())
