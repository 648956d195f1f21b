"""Identity- and expression-conditioned diffusion priors and score distillation (ID-to-3D §2).

The prior is Arc2Face (an SD 1.5 UNet and CLIP text encoder fine-tuned on faces, conditioned on
a 512-d ArcFace embedding) on the SD 1.5 VAE, tokenizer and scheduler, with an expression-aware
cross-attention branch and two task LoRAs on the same base: ``normal`` (geometry) and ``albedo``
(texture). See docs/prior.md.

    from engine.prior import load_prior
    from engine.prior.sds import ScoreDistillation, SDSConfig

    prior = load_prior(models_root, task="normal")            # or task=None: the base prior
    cond = prior.conditioning(arcface_embedding, "smiling", view=[0.0, 90.0])  # azimuths or labels
    sds = ScoreDistillation(prior, SDSConfig(guidance_scale=3.0))
    loss, info = sds.step(renders, cond, step, total_steps)   # renders [B, H, W, 3] in [0, 1]
    loss.backward()                                           # w(t)(eps_hat - eps) reaches the render

This package imports only the standard library at import time; torch, diffusers and transformers
are imported when a prior is loaded.
"""

from __future__ import annotations

from .errors import CorruptWeightsError, DatasetError, MismatchedWeightsError, MissingWeightsError, PriorError


def load_prior(root, *, device=None, dtype=None, task=None, memory=None, options=None, expression_branch=True,
               lora_dirs=None, allow_download=False):
    """Load the prior from the models folder ``root`` (``sd15/``, ``arc2face/``, optional ``loras/``).

    ``device``/``dtype``: default CUDA + fp16 when available, else CPU + fp32 ("bf16" allowed on
    CUDA). ``task``: None (base prior), "normal" or "albedo" (``ROOT/loras/<task>`` or
    ``lora_dirs[task]``). ``memory``: :class:`engine.prior.model.MemoryOptions`. ``options``:
    :class:`engine.prior.conditioning.ConditioningOptions`. ``allow_download``: fetch missing files
    from Hugging Face at pinned revisions (only when the user agreed). Raises :class:`MissingWeightsError`,
    :class:`CorruptWeightsError` or :class:`MismatchedWeightsError` with the file and what to do.
    """
    from .model import load_prior as _load

    return _load(root, device=device, dtype=dtype, task=task, memory=memory, options=options,
                 expression_branch=expression_branch, lora_dirs=lora_dirs, allow_download=allow_download)


__all__ = ["load_prior", "PriorError", "MissingWeightsError", "CorruptWeightsError", "MismatchedWeightsError",
           "DatasetError"]
