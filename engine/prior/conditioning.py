"""What the UNet is conditioned on, and the small pure functions that build it (stdlib + numpy only).

* Identity: the prompt "photo of a id person" whose "id" token embedding is replaced by the
  L2-normalised 512-d ArcFace embedding zero-padded to the token width (Arc2Face).
* Expression / edit text ("smiling", "with curly red hair") and the view ("front view"): extra
  prompt tokens after the identity prompt, and the tokens read by the expression branch.
* Views: a label ("front", "side", "back") or an azimuth in degrees, which blends the three
  view embeddings with :func:`view_weights` (avoids the hard switch that causes Janus faces).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ID_PROMPT = "photo of a id person"
ID_WORD = "id"
VIEW_LABELS = ("front", "side", "back")


def view_weights(azimuth_deg: float) -> dict[str, float]:
    """Soft weights of the front/side/back view texts for a camera azimuth.

    Azimuth 0° is the camera in front of the face (on −Y, looking at +Y), ±90° a profile, 180° the
    back of the head. Front and back fade with cos², side with sin², so the weights sum to 1 and
    change smoothly all round.
    """
    a = math.radians(azimuth_deg)
    c, s = math.cos(a), math.sin(a)
    return {"front": c * c if c > 0 else 0.0, "side": s * s, "back": c * c if c < 0 else 0.0}


def view_label_weights(view: Any) -> dict[str, float]:
    """``None`` (no view text), a label, or an azimuth in degrees -> weights over view labels."""
    if view is None:
        return {}
    if isinstance(view, str):
        label = view.strip().lower().removesuffix(" view")
        if label not in VIEW_LABELS:
            raise ValueError(f"unknown view {view!r}; use one of {', '.join(VIEW_LABELS)} or an azimuth in degrees")
        return {label: 1.0}
    return {k: w for k, w in view_weights(float(view)).items() if w > 1e-6}


def expression_phrase(expression: str | None, view_label: str | None) -> str:
    """The extra text: "smiling, side view"; empty when there is neither."""
    parts = [p for p in ((expression or "").strip(), f"{view_label} view" if view_label else "") if p]
    return ", ".join(parts)


def identity_prompt(extra: str) -> str:
    """The identity prompt with the extra text after it (the placeholder stays where Arc2Face has it)."""
    return f"{ID_PROMPT}, {extra}" if extra else ID_PROMPT


@dataclass(frozen=True)
class ConditioningOptions:
    """How expression and view text enter the prior.

    ``text_in_prompt``: append "expression, view" to the identity prompt (works with the base prior).
    ``expression_scale``: weight of the expression branch; ``None`` takes the loaded task prior's
    trained value (0 for the base prior, which reproduces Arc2Face exactly).
    ``uncond``: "empty" (the encoder's output for the empty prompt: what Arc2Face's own inference
    gets from the diffusers pipeline) or "zero_id" (the identity prompt with a zero embedding).
    ``negative``: optional negative text, used in place of the unconditional prompt.
    """

    text_in_prompt: bool = True
    expression_scale: float | None = None
    uncond: str = "empty"
    negative: str = ""


@dataclass
class Conditioning:
    """Everything one UNet call needs besides the noisy latents and timesteps (torch tensors).

    ``prompt`` / ``uncond``: [B, 77, 768] prompt embeddings of the conditional and unconditional
    passes. ``expression`` / ``expression_uncond``: [B, T, 768] tokens for the expression branch
    (``None`` when the branch is off). ``expression_scale``: the branch's weight.
    """

    prompt: Any
    uncond: Any
    expression: Any = None
    expression_uncond: Any = None
    expression_scale: float = 0.0
    texts: list[str] = field(default_factory=list)

    @property
    def batch(self) -> int:
        return int(self.prompt.shape[0])

    def repeat(self, n: int) -> "Conditioning":
        """The same conditioning for ``n`` times as many views (one row per view)."""
        rep = (lambda t: None if t is None else t.repeat_interleave(n, dim=0))
        return Conditioning(rep(self.prompt), rep(self.uncond), rep(self.expression), rep(self.expression_uncond),
                            self.expression_scale, [t for t in self.texts for _ in range(n)])
