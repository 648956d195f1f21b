"""What the UNet is conditioned on, and the small pure functions that build it (stdlib + numpy only).

* Identity: the prompt "photo of a id person" whose "id" token embedding is replaced by the
  L2-normalised 512-d ArcFace embedding zero-padded to the token width (Arc2Face).
* Expression / edit text ("smiling", "with curly red hair") and the view ("front view") form one
  phrase ("smiling, front view") that reaches the UNet in one of three ways (``text_mode``):
  ``"blend"`` (default, Arc2Avatar's recipe): the exact Arc2Face identity prompt embedding, mixed
  with a small weight of the phrase's plain text embedding; ``"append"``: the phrase appended to
  the identity prompt's tokens; ``"identity"``: the identity prompt alone. The expression branch,
  when active, reads the phrase in every mode.
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


TEXT_MODES = ("blend", "append", "identity")
# Arc2Avatar's weight of the view text embedding in its blend with the identity prompt embedding.
ARC2AVATAR_BLEND_WEIGHT = 0.1


@dataclass(frozen=True)
class ConditioningOptions:
    """How expression and view text enter the prior.

    ``text_mode``: "blend" (default): prompt = (1 − w)·E_id + w·E_text(phrase), E_id Arc2Face's
    embedding of "photo of a id person", E_text the plain text encoder's output for the phrase
    (Arc2Avatar's recipe for view text, w = ``blend_weight``, 0.1 as Arc2Avatar); with no phrase
    the prompt is E_id exactly. "append": the prompt "photo of a id person, smiling, front view"
    (text the Arc2Face encoder was never fine-tuned on). "identity": E_id only (text through the
    expression branch alone). ``text_in_prompt`` (older switch, kept working): True = "append",
    False = "identity"; None = use ``text_mode``. ``blend_encoder``: which encoder makes
    E_text in "blend": "sd15" (SD 1.5's own CLIP text encoder, ``ROOT/sd15/text_encoder``, as
    Arc2Avatar does), "arc2face" (Arc2Face's fine-tuned encoder), "auto" (sd15 when present).
    ``expression_scale``: weight of the expression branch; ``None`` takes the loaded task prior's
    trained value (0 for the base prior, which reproduces Arc2Face exactly).
    ``uncond``: "empty" (the encoder's output for the empty prompt: what Arc2Face's own inference
    gets from the diffusers pipeline) or "zero_id" (the identity prompt with a zero embedding).
    ``negative``: optional negative text, used in place of the unconditional prompt.
    """

    text_mode: str = "blend"
    blend_weight: float = ARC2AVATAR_BLEND_WEIGHT
    text_in_prompt: bool | None = None
    blend_encoder: str = "auto"
    expression_scale: float | None = None
    uncond: str = "empty"
    negative: str = ""

    @property
    def mode(self) -> str:
        """The text mode in force (``text_in_prompt``, when set, wins over ``text_mode``)."""
        if self.text_in_prompt is not None:
            return "append" if self.text_in_prompt else "identity"
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"unknown text mode {self.text_mode!r}; use one of {', '.join(TEXT_MODES)}")
        return self.text_mode


@dataclass
class Conditioning:
    """Everything one UNet call needs besides the noisy latents and timesteps (torch tensors).

    ``prompt`` / ``uncond``: [B, 77, 768] prompt embeddings of the conditional and unconditional
    passes, one row per view. ``expression`` / ``expression_uncond``: [B, T, 768] tokens for the expression branch
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
        """The conditioning of ``n`` renders per view, in the batch order of renders.

        Renders are ordered as ``n`` copies of the V views one after the other:
        ``[v0, v1, …, vV−1, v0, v1, …]`` (render ``i`` belongs to view ``i % V``), which is what
        ``torch.cat([renders_of_all_views] * n)`` gives. The rows follow that order.
        """
        rep = (lambda t: None if t is None else t.repeat(n, *([1] * (t.ndim - 1))))
        return Conditioning(rep(self.prompt), rep(self.uncond), rep(self.expression), rep(self.expression_uncond),
                            self.expression_scale, list(self.texts) * n)
