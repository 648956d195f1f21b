"""Training a task prior (a LoRA on the Arc2Face UNet, expression branch included) on a dataset folder.

The loss is the ordinary ε-prediction loss of latent diffusion: encode an image, add noise at a
random timestep, predict the noise conditioned on identity + expression/view, mean squared error.
Only the LoRA parameters train (~0.2 % of the UNet at rank 8 on the attention projections).

Precision, as diffusers' reference LoRA scripts do it: the frozen base stays in the prior's dtype
(fp16 on CUDA by default), the trainable LoRA parameters are kept in fp32, the forward pass runs
under ``torch.autocast`` in the half dtype, and with fp16 a gradient scaler multiplies the loss
before the backward pass (and unscales before clipping and the step), so gradients of order 1e-5
do not underflow to zero in fp16 activations. bf16 has fp32's range and needs no scaler.
Conditioning is dropped (replaced by the unconditional prompt and an empty expression) with
probability ``cond_dropout`` so classifier-free guidance keeps working.

Everything random is drawn from a generator seeded with (seed, step), so a resumed run draws the
same batches and noise as an uninterrupted one. Imported only by code that already needs torch.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..owned import record, remove_owned, replace_owned_entry, write_owned_file
from .conditioning import ConditioningOptions
from .dataset import load_image, read_dataset
from .errors import PriorError
from .lora import DEFAULT_TARGETS, INFO_FILE, WEIGHTS_FILE, AdapterInfo, save_task_adapter

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"


@dataclass
class TrainConfig:
    domain: str
    data: Path
    out: Path
    models_root: Path
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    rank: int = 8
    alpha: float | None = None  # None: equal to rank (LoRA scale 1)
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    expression_scale: float = 1.0
    cond_dropout: float = 0.1
    max_grad_norm: float = 1.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    validate_every: int = 0  # 0: only at the end
    validation_samples: int = 2
    validation_steps: int = 20
    validation_guidance: float = 3.0
    eval_samples: int = 8
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    device: str | None = None
    dtype: str | None = None
    # "auto": autocast in the prior's half dtype on CUDA (fp16 -> with a gradient scaler), none in
    # fp32; or "no", "fp16", "bf16" (these two also work on the CPU, with fp32 weights: tests).
    mixed_precision: str = "auto"
    text_mode: str = "blend"  # how expression/view text enters the prompt (ConditioningOptions)
    extra: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    steps: int
    eval_loss_start: float
    eval_loss_end: float
    adapter_dir: Path
    samples: list[Path]
    resumed_from: int



def latest_checkpoint(out: Path) -> Path | None:
    folders = sorted((out / CHECKPOINTS).glob("step_*")) if (out / CHECKPOINTS).is_dir() else []
    folders = [f for f in folders if (f / "state.json").is_file()]
    return folders[-1] if folders else None


class PriorTrainer:
    def __init__(self, config: TrainConfig, report: Callable[[dict], None] | None = None):
        from .model import load_prior

        self.config = c = config
        self.report = report or _stderr_report
        self.samples_meta = read_dataset(c.data, c.domain)
        # The same text recipe as the runs that will use this prior (recorded in prior_adapter.json).
        options = ConditioningOptions(text_mode=c.text_mode, expression_scale=c.expression_scale)
        self.prior = load_prior(c.models_root, device=c.device, dtype=c.dtype, options=options)
        if c.domain in self.prior.adapters:  # e.g. retraining ROOT/loras/normal: train afresh from the base
            self.prior.unet.delete_adapters(c.domain)
            del self.prior.adapters[c.domain]
        self.info = AdapterInfo(domain=c.domain, rank=c.rank, alpha=float(c.alpha or c.rank),
                                target_modules=list(c.target_modules), expression_scale=c.expression_scale,
                                extra={"text_mode": c.text_mode})
        devices = [self.prior.device] if self.prior.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # peft draws the LoRA init from the global RNG: seed it
            torch.manual_seed(c.seed)
            self.params = self.prior.create_task(self.info)
        self.names = [n for n, p in self.prior.unet.named_parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()  # adapters train in fp32 even on a half-precision base
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, weight_decay=0.0)
        self.amp_dtype = _autocast_dtype(c.mixed_precision, self.prior.device, self.prior.dtype)
        self.scaler = torch.amp.GradScaler(self.prior.device.type, enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self._latents: dict[int, torch.Tensor] = {}
        self._conds: dict[int, tuple] = {}

    # ---- data ----------------------------------------------------------------------------------

    def latents(self, index: int) -> torch.Tensor:
        if index not in self._latents:  # the VAE is frozen: encode each image once
            image = load_image(self.samples_meta[index].image, self.prior.image_size)
            with torch.no_grad():
                self._latents[index] = self.prior.encode_images(torch.from_numpy(image)[None]).float()
        return self._latents[index]

    def conditioning(self, index: int):
        if index not in self._conds:
            s = self.samples_meta[index]
            self._conds[index] = self.prior.conditioning(s.embedding, s.expression, view=s.view)
        return self._conds[index]

    def batch(self, indices: list[int], generator: torch.Generator, dropout: bool):
        latents = torch.cat([self.latents(i) for i in indices])
        prompts, exprs = [], []
        drop = (torch.rand(len(indices), generator=generator) < self.config.cond_dropout) if dropout else \
            torch.zeros(len(indices), dtype=torch.bool)
        for i, d in zip(indices, drop.tolist()):
            cond = self.conditioning(i)
            prompts.append(cond.uncond if d else cond.prompt)
            if cond.expression is not None:
                exprs.append(cond.expression_uncond if d else cond.expression)
        expression = torch.cat(exprs) if exprs else None
        return latents, torch.cat(prompts), expression

    def diffusion_loss(self, latents, prompts, expression, noise, t) -> torch.Tensor:
        noisy = self.prior.scheduler.add_noise(latents, noise, t.cpu()).to(latents.device)
        with torch.autocast(self.prior.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            eps = self.prior.unet_eps(noisy, t.to(latents.device), prompts, expression, self.config.expression_scale)
        return F.mse_loss(eps.float(), noise.float())

    @torch.no_grad()
    def eval_loss(self) -> float:
        """Diffusion loss on a fixed set (same images, noise and timesteps every time): the number
        that shows whether training helps, free of the sampling noise of the training loss."""
        n = min(self.config.eval_samples, len(self.samples_meta))
        g = torch.Generator().manual_seed(12345)
        total = 0.0
        for k in range(n):
            latents, prompts, expression = self.batch([k], g, dropout=False)
            noise = torch.randn(latents.shape, generator=g).to(latents.device)
            t = torch.tensor([int((k + 0.5) / n * (self.prior.num_train_timesteps - 1))])
            total += float(self.diffusion_loss(latents, prompts, expression, noise, t))
        return total / n

    # ---- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        target = self.config.out / CHECKPOINTS / f"step_{self.step:07d}"
        params = dict(zip(self.names, self.params))

        def write(folder: Path) -> None:
            save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, folder / "lora_params.safetensors")
            torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
            state = {"step": self.step, "scaler": self.scaler.state_dict(), "config": _jsonable(asdict(self.config))}
            (folder / "state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")

        replace_owned_entry(target, write)  # --out is an owned folder (train_cli.prepare_output)
        old = sorted((self.config.out / CHECKPOINTS).glob("step_*"))[:-self.config.keep_checkpoints]
        for folder in old:
            remove_owned(folder, keep_foreign=True)  # a file the user put there stays
        return target

    def load_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import load_file

        fix = f"delete {folder} to resume from the checkpoint before it, or start a new --out folder"
        try:
            state = load_file(folder / "lora_params.safetensors")
            # weights_only: the optimizer state is tensors and numbers; nothing else is unpickled.
            optimizer = torch.load(folder / "optimizer.pt", map_location=self.prior.device, weights_only=True)
            saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            step = saved["step"]
        except Exception as exc:  # truncated or foreign files: safetensors, pickle and JSON each raise their own
            raise PriorError(f"checkpoint {folder} is damaged ({type(exc).__name__}: {str(exc)[:200]})", fix,
                             code="bad_checkpoint") from None
        missing = set(self.names) - set(state)
        shapes = {n: tuple(p.shape) for n, p in zip(self.names, self.params)}
        wrong = [n for n in self.names if n in state and tuple(state[n].shape) != shapes[n]]
        if missing or wrong or not isinstance(step, int) or step < 0:
            detail = f"{len(missing)} tensors missing" if missing else \
                (f"{wrong[0]} is {tuple(state[wrong[0]].shape)} there, {shapes[wrong[0]]} here: another --rank?"
                 if wrong else f"step {step!r} in state.json")
            raise PriorError(f"checkpoint {folder} does not match this LoRA configuration ({detail})",
                             "resume with the same --rank and --targets, or start a new --out folder",
                             code="bad_checkpoint")
        try:
            self.optimizer.load_state_dict(optimizer)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise PriorError(f"checkpoint {folder}: the optimizer state does not fit ({str(exc)[:200]})", fix,
                             code="bad_checkpoint") from None
        with torch.no_grad():
            for name, p in zip(self.names, self.params):
                p.copy_(state[name].to(p.device, p.dtype))
        self.step = step
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])

    # ---- validation samples --------------------------------------------------------------------

    @torch.no_grad()
    def validation_samples(self) -> list[Path]:
        """Denoise a few images from fixed noise with the current LoRA (DDIM, CFG) and save PNGs."""
        from diffusers import DDIMScheduler
        from PIL import Image

        c = self.config
        sampler = DDIMScheduler.from_config(self.prior.scheduler.config)
        sampler.set_timesteps(c.validation_steps)
        paths = []
        g = torch.Generator().manual_seed(c.seed + 777)
        size = self.prior.image_size // 8
        for k in range(min(c.validation_samples, len(self.samples_meta))):
            cond = self.conditioning(k)
            x = torch.randn((1, 4, size, size), generator=g).to(self.prior.device)
            for t in sampler.timesteps:
                eps, _, _ = self.prior.predict_noise(x, t.reshape(1).to(self.prior.device), cond, c.validation_guidance)
                x = sampler.step(eps, t, x).prev_sample
            image = (self.prior.decode_latents(x)[0].cpu().numpy() * 255).round().astype(np.uint8)
            path = c.out / SAMPLES / f"step_{self.step:07d}_{k}.png"
            write_owned_file(path, lambda target: Image.fromarray(image).save(target, format="PNG"))
            paths.append(path)
        return paths

    # ---- the loop ------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        c = self.config
        resumed_from = 0
        if c.resume:
            checkpoint = latest_checkpoint(c.out)
            if checkpoint is None:
                log.warning("--resume: no checkpoint in %s, starting from step 0", c.out / CHECKPOINTS)
            else:
                self.load_checkpoint(checkpoint)
                resumed_from = self.step
                log.info("resumed from %s (step %d)", checkpoint, self.step)
        start_loss = self.eval_loss()
        self.report({"kind": "start", "step": self.step, "total": c.steps, "eval_loss": start_loss})
        self.prior.unet.train()
        t0, first = time.perf_counter(), self.step
        samples: list[Path] = []
        n = len(self.samples_meta)
        while self.step < c.steps:
            g = torch.Generator().manual_seed(c.seed * 1_000_003 + self.step)
            indices = torch.randint(0, n, (c.batch_size,), generator=g).tolist()
            latents, prompts, expression = self.batch(indices, g, dropout=True)
            noise = torch.randn(latents.shape, generator=g).to(latents.device)
            t = torch.randint(0, self.prior.num_train_timesteps, (len(indices),), generator=g)
            loss = self.diffusion_loss(latents, prompts, expression, noise, t)
            self.optimizer.zero_grad(set_to_none=True)
            if not torch.isfinite(loss):
                log.warning("step %d: non-finite loss, batch skipped", self.step)
            else:
                # With the scaler off (fp32, bf16) these are plain backward / step calls.
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, c.max_grad_norm)
                self.scaler.step(self.optimizer)  # skipped when the scaled gradients overflowed
                self.scaler.update()
            self.step += 1
            if self.step % c.log_every == 0 or self.step == c.steps:
                rate = (time.perf_counter() - t0) / max(self.step - first, 1)
                self.report({"kind": "progress", "step": self.step, "total": c.steps, "loss": loss.item(),
                             "eta_s": rate * (c.steps - self.step)})
            if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                self.save_checkpoint()
            if c.validate_every and self.step % c.validate_every == 0:
                self.prior.unet.eval()
                samples += self.validation_samples()
                self.prior.unet.train()
        self.prior.unet.eval()
        if not c.checkpoint_every or self.step % c.checkpoint_every:
            self.save_checkpoint()
        end_loss = self.eval_loss()
        self.info.steps = self.step
        save_task_adapter(self.prior.unet, c.out, c.domain, self.info)
        for name in (WEIGHTS_FILE, INFO_FILE):
            record(c.out / name)
        samples += self.validation_samples() if c.validation_samples else []
        self.report({"kind": "done", "step": self.step, "total": c.steps, "eval_loss": end_loss,
                     "eval_loss_start": start_loss})
        return TrainResult(self.step, start_loss, end_loss, c.out, samples, resumed_from)


def _autocast_dtype(mode: str, device, weights_dtype):
    """The autocast dtype of the training forward pass (None: no autocast)."""
    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": None}
    if mode == "auto":
        return weights_dtype if weights_dtype in (torch.float16, torch.bfloat16) else None
    if mode not in names:
        raise PriorError(f"unknown mixed precision {mode!r}", "use auto, no, fp16 or bf16")
    return names[mode]


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _stderr_report(event: dict) -> None:
    if event["kind"] == "progress":
        print(f"train-prior step {event['step']}/{event['total']} loss {event['loss']:.4f} "
              f"eta {event['eta_s']:.0f}s", file=sys.stderr, flush=True)
    else:
        print(f"train-prior {event['kind']} step {event['step']}/{event['total']} "
              f"eval loss {event['eval_loss']:.4f}", file=sys.stderr, flush=True)


def train_prior(config: TrainConfig, report: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or resume) a task prior; returns the eval losses and where things were written."""
    from .train_cli import prepare_output

    read_dataset(config.data, config.domain)  # a bad dataset is named before anything is written
    prepare_output(config.out, config.resume, claim=False)  # a foreign --out is refused before any model loads
    trainer = PriorTrainer(config, report)
    prepare_output(config.out, config.resume)  # the models loaded: now the folder may be made
    return trainer.train()
