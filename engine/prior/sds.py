"""Score distillation sampling (SDS): the prior's opinion of a render, as a gradient on the render.

For latents z of a render, a timestep t and noise ε: z_t = √ᾱ_t z + √(1−ᾱ_t) ε, the UNet predicts
ε̂ with classifier-free guidance in the standard form ε̂ = ε_u + s·(ε_c − ε_u) (threestudio writes
ε_c + s·(ε_c − ε_u), which is this form at s+1), and the gradient on z is

    g = w(t) · (ε̂ − ε)          (no backpropagation through the UNet)

injected with the surrogate loss ½‖z − sg(z − g)‖² / B, whose derivative w.r.t. z is g / B (the
mean over the B views, so learning rates do not depend on the batch size). The loss's value is
½‖g‖²/B, a useful magnitude to log but not an objective that goes down.

Half precision (fp16 on CUDA): the UNet runs in fp16 but g is computed in fp32. On the way back
through a half-precision VAE encoder, small gradients would underflow (fp16's smallest normal
value is 6e-5), so g is multiplied by a power of two before the backward pass enters the VAE and
divided by it again, in fp32, where the gradient reaches the render (a static loss scale chosen
per step from max|g|, computed on the device). The render's gradient is always in the render's own
dtype (fp32).

No host read-backs: a step queues its work on the device and returns without waiting for it (on a
GPU every read-back stalls the queue). Non-finite renders and gradient values are handled on the
device (the step's gradient becomes zero; the counts are kept as tensors in ``info["lazy"]``).
``SDSConfig(diagnostics=True)`` adds the read-back values (``t``, ``w``, ``grad_norm``, ``loss``,
``skipped``...) to ``info``, for tests, benches and debugging.

Imported only by code that already needs torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .conditioning import Conditioning
from .schedules import timestep_bounds

WEIGHTINGS = ("sds", "uniform", "fantasia3d")


@dataclass
class SDSConfig:
    """``guidance_scale`` s of ε_u + s(ε_c − ε_u) (Arc2Face works at ~1.3–3, base SD needs far more).
    ``t_start``/``t_end``: (min, max) timestep fractions at the first/last step, annealed by
    ``schedule`` (see :mod:`engine.prior.schedules`). ``weighting``: w(t) = 1−ᾱ_t ("sds",
    DreamFusion), 1 ("uniform") or √ᾱ_t(1−ᾱ_t) ("fantasia3d"). ``grad_clip``: clamp each gradient
    value to ±grad_clip (None: off). ``latent_size``: side of the latent grid the 4-channel shortcut
    is resized to (None: the VAE's native size / 8, 64 for SD 1.5)."""

    guidance_scale: float = 3.0
    t_start: tuple[float, float] = (0.02, 0.98)
    t_end: tuple[float, float] = (0.02, 0.5)
    schedule: str = "linear"
    weighting: str = "sds"
    grad_clip: float | None = None
    grad_scale: float = 1.0
    sample_latents: bool = False
    latent_size: int | None = None
    profile: bool = False  # record per-part wall times in info["timings_ms"] (synchronises CUDA)
    diagnostics: bool = False  # read t, w, grad_norm, loss, skipped... back into info (host syncs)


def sds_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, weighting: str) -> torch.Tensor:
    a = alphas_cumprod[t]
    if weighting == "sds":
        return 1.0 - a
    if weighting == "uniform":
        return torch.ones_like(a)
    if weighting == "fantasia3d":
        return a.sqrt() * (1.0 - a)
    raise ValueError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")


class _InjectGradient(torch.autograd.Function):
    """Identity in the forward pass; in the backward pass, hands ``grad`` to the input."""

    @staticmethod
    def forward(ctx, latents, grad):
        ctx.save_for_backward(grad)
        return torch.zeros((), device=latents.device, dtype=torch.float32)

    @staticmethod
    def backward(ctx, upstream):
        (grad,) = ctx.saved_tensors
        return upstream * grad, None


# Largest |value| of the scaled half-precision gradient on the latents: leaves fp16 headroom
# (65504) for the VAE backward's growth, lifts small values far above the underflow floor.
HALF_GRAD_TARGET = 256.0


def half_grad_scale(peak: torch.Tensor) -> torch.Tensor:
    """The power of two S with max|g·S| close to HALF_GRAD_TARGET, from ``peak`` = max|g| (a 0-d
    tensor), on the device: 2^floor(log2(TARGET / peak)) clamped to [1, 2^24]; 1 when peak is 0.

    Exact integer arithmetic on frexp's exponent (peak = m·2^e, m in [0.5, 1)): TARGET = 2^8, so
    floor(log2(TARGET / peak)) = 8 − e, plus 1 when m is exactly 0.5 (peak a power of two)."""
    mantissa, exponent = torch.frexp(peak.float())
    power = 8 - exponent + (mantissa == 0.5).to(exponent.dtype)
    power = torch.where(peak > 0, power.clamp(0, 24), torch.zeros_like(power))
    return torch.ldexp(torch.ones((), dtype=torch.float32, device=peak.device), power)


class _GuardRenderGradient(torch.autograd.Function):
    """Identity forward. The backward zeroes the render's gradient when the step was skipped (a
    non-finite render: ``holder["ok"]`` is a 0-d bool tensor, read on the device, never on the
    host) and, in half precision, divides it by the loss scale ``holder["scale"]`` in fp32 and
    zeroes non-finite values (an overflow inside a half-precision backward would otherwise reach
    the geometry)."""

    @staticmethod
    def forward(ctx, x, holder):
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx, upstream):
        grad = upstream
        scale = ctx.holder.get("scale")
        if scale is not None:
            grad = torch.nan_to_num(upstream.float() / scale, nan=0.0, posinf=0.0, neginf=0.0).to(upstream.dtype)
        ok = ctx.holder.get("ok")
        if ok is not None:
            grad = torch.where(ok, grad, torch.zeros_like(grad))
        return grad, None


def _from_host(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor (drawn on the CPU for reproducibility) onto ``device`` without stalling: on CUDA a
    plain ``.to`` from pageable memory waits for the device queue; from pinned memory it does not."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


class ScoreDistillation:
    """SDS with a loaded :class:`engine.prior.model.Prior` (see the module docstring)."""

    def __init__(self, prior, config: SDSConfig | None = None):
        self.prior = prior
        self.config = config or SDSConfig()
        if self.config.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {self.config.weighting!r}; use one of {', '.join(WEIGHTINGS)}")
        self.num_steps = prior.num_train_timesteps

    def timestep_range(self, step: int, total_steps: int) -> tuple[int, int]:
        """Integer (t_min, t_max) at this step of the run, both included."""
        lo, hi = timestep_bounds(step, total_steps, self.config.t_start, self.config.t_end, self.config.schedule)
        last = self.num_steps - 1
        t_min = min(max(int(round(lo * self.num_steps)), 0), last)
        t_max = min(max(int(round(hi * self.num_steps)), t_min), last)
        return t_min, t_max

    def to_latents(self, images_or_latents: torch.Tensor, generator=None) -> torch.Tensor:
        """[B, H, W, 3] renders in [0, 1] -> VAE latents; [B, H, W, 4] (e.g. normal xyz + mask in
        [0, 1]) -> the latent shortcut: mapped to [−1, 1] and resized to the latent grid, no VAE."""
        x = images_or_latents
        if x.ndim != 4 or x.shape[-1] not in (3, 4):
            raise ValueError(f"expected [B, H, W, 3] renders or [B, H, W, 4] latent-shortcut maps, got {tuple(x.shape)}")
        if x.shape[-1] == 3:
            return self.prior.encode_images(x, sample=self.config.sample_latents, generator=generator)
        size = self.config.latent_size or self.prior.image_size // 8
        z = x.permute(0, 3, 1, 2) * 2.0 - 1.0
        if z.shape[-1] != size or z.shape[-2] != size:
            z = F.interpolate(z, size=(size, size), mode="bilinear", align_corners=False)
        return z.to(self.prior.device, self.prior.dtype)

    def step(self, images_or_latents: torch.Tensor, conditioning: Conditioning, step: int, total_steps: int, *,
             noise: torch.Tensor | None = None, t: torch.Tensor | None = None, generator=None):
        """One SDS step. Returns ``(loss, info)``; ``loss.backward()`` puts w(t)(ε̂ − ε)/B on the latents
        and from there on the render. ``noise``/``t`` may be fixed (tests); else drawn (``generator``)."""
        timings = {}
        clock = self._clock(timings)
        holder = None
        x = images_or_latents
        if x.requires_grad:
            holder = {}  # "ok" (and "scale" in half precision) are filled in by step_latents
            if self.prior.dtype == torch.float16 and x.dtype != torch.float16:
                holder["scale"] = torch.ones((), device=x.device)
            x = _GuardRenderGradient.apply(x, holder)
        latents = self.to_latents(x, generator)
        clock("encode")
        return self.step_latents(latents, conditioning, step, total_steps, noise=noise, t=t, generator=generator,
                                 _timings=timings, _clock=clock, _guard=holder)

    def step_latents(self, latents: torch.Tensor, conditioning: Conditioning, step: int, total_steps: int, *,
                     noise=None, t=None, generator=None, _timings=None, _clock=None, _guard=None):
        """SDS on latents [B, 4, h, w] already in the UNet's scale.

        ``info`` always holds ``t_min``, ``t_max``, ``guidance_scale`` (host values) and ``lazy``:
        device tensors read by nobody unless asked (``t``, ``w``, ``skipped`` (bool: a non-finite
        render or latents, the gradient is zero), ``nonfinite_grad_values`` (zeroed values of g),
        ``half_grad_scale``). With ``diagnostics`` they are read back into ``info`` as well."""
        timings = {} if _timings is None else _timings
        clock = _clock or self._clock(timings)
        b = latents.shape[0]
        if b % conditioning.batch:
            raise ValueError(f"{b} renders but conditioning for {conditioning.batch} views: the number of renders "
                             "must be a multiple of the number of views the conditioning was made for")
        cond = conditioning if conditioning.batch == b else conditioning.repeat(b // conditioning.batch)
        t_min, t_max = self.timestep_range(step, total_steps)
        device = latents.device
        # A non-finite render or latents skips the step: the gradient becomes zero, decided on the
        # device (the render's own gradient is zeroed by _GuardRenderGradient, see step()).
        ok = torch.isfinite(latents).all()
        if _guard is not None:
            _guard["ok"] = ok
        if t is None:
            t = _from_host(torch.randint(t_min, t_max + 1, (b,), device="cpu", generator=generator), device)
        t = torch.as_tensor(t, device=device).long().expand(b) if torch.as_tensor(t).ndim == 0 else t.to(device).long()
        if noise is None:
            noise = _from_host(torch.randn(latents.shape, generator=generator, device="cpu", dtype=torch.float32),
                               device)
        with torch.no_grad():
            a = self.prior.alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents.detach().float() + (1.0 - a).sqrt() * noise.float()
            clock("noise")
            eps_hat, _, _ = self.prior.predict_noise(noisy, t, cond, self.config.guidance_scale)
            clock("unet")
            w = sds_weight(self.prior.alphas_cumprod, t, self.config.weighting).view(-1, 1, 1, 1)
            grad = self.config.grad_scale * w * (eps_hat - noise.float())
            nonfinite = (~torch.isfinite(grad)).sum()
            # The identity where every value is finite (the usual case): no read-back to decide.
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            if self.config.grad_clip is not None:
                grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
            grad = torch.where(ok, grad, torch.zeros_like(grad))
        lazy = {"t": t, "w": w.flatten(), "skipped": ~ok, "nonfinite_grad_values": torch.where(ok, nonfinite, 0)}
        injected = grad / b
        if _guard is not None and "scale" in _guard:  # half-precision backward ahead: lift g above fp16's floor
            scale = half_grad_scale(injected.abs().max())
            _guard["scale"] = scale
            injected = injected * scale
            lazy["half_grad_scale"] = scale
        loss = _InjectGradient.apply(latents, injected.to(latents.dtype))
        loss = loss + (0.5 * grad.pow(2).sum() / b).detach()  # value for logging, no gradient
        info = {"t_min": t_min, "t_max": t_max, "guidance_scale": self.config.guidance_scale, "lazy": lazy}
        if self.config.diagnostics:
            info.update(self.read_back(lazy, grad, loss))
        clock("gradient")
        if self.config.profile:
            info["timings_ms"] = dict(timings)
        return loss, info

    @staticmethod
    def read_back(lazy: dict, grad: torch.Tensor, loss: torch.Tensor) -> dict:
        """The diagnostic values of a step on the host (each a device sync)."""
        out = {"t": lazy["t"].tolist(), "w": lazy["w"].tolist(), "grad_norm": float(grad.norm()),
               "loss": float(loss.detach()),
               "skipped": "non-finite render or latents" if bool(lazy["skipped"]) else ""}
        count = int(lazy["nonfinite_grad_values"])
        if count:
            out["nonfinite_grad_values"] = count
        if "half_grad_scale" in lazy:
            out["half_grad_scale"] = float(lazy["half_grad_scale"])
        return out

    def _clock(self, timings: dict):
        state = {"last": time.perf_counter()}
        sync = self.config.profile and self.prior.device.type == "cuda"

        def mark(name: str) -> None:
            if not self.config.profile:
                return
            if sync:
                torch.cuda.synchronize()
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + (now - state["last"]) * 1000.0
            state["last"] = now

        return mark
