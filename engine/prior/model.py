"""The identity- and expression-conditioned diffusion prior: Arc2Face's UNet and text encoder on the
SD 1.5 VAE, tokenizer and scheduler, with the expression branch and task LoRAs.

Imported only by code that already needs torch (``engine.prior.load_prior`` imports it lazily).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .conditioning import (ID_PROMPT, ID_WORD, VIEW_LABELS, Conditioning, ConditioningOptions, expression_phrase,
                           identity_prompt, view_label_weights)
from .errors import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError, PriorError
from .expression_attention import has_expression_branch, install_expression_branch
from .lora import TASKS, WEIGHTS_FILE, AdapterInfo, add_task_adapter, load_task_adapter
from .public_loras import VIEW_ADAPTER, check_lora_folder_fits, load_lora_file
from .weights import check_safetensors, check_shapes_against, load_encoder_bin_safely, read_json, resolve_components

log = logging.getLogger(__name__)
ARCFACE_DIM = 512


@dataclass(frozen=True)
class MemoryOptions:
    """Memory/speed switches. ``attention``: "sdpa" (PyTorch fused attention) or "sliced" (less
    memory, slower); ``channels_last`` for the UNet; ``vae_tiling`` for large renders;
    ``vae_checkpointing``: the VAE encoder keeps only each block's input for the backward and runs
    the block again there (same gradients; its saved activations dominate a step's memory,
    docs/benchmarks-prior.md); ``cpu_offload``: keep the UNet and the text encoders on the CPU and
    move each to the GPU only while it runs (the VAE stays: the backward through it needs its
    weights where the forward saved them). The last two can be switched on a loaded prior
    (:meth:`Prior.apply_memory`): the GPU memory fallback does so mid-run."""

    attention: str = "sdpa"
    attention_slice_size: int = 1
    channels_last: bool = False
    vae_tiling: bool = False
    vae_checkpointing: bool = False
    cpu_offload: bool = False


def resolve_device_dtype(device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """Default: CUDA with fp16 when available, else CPU with fp32. Half precision on the CPU is
    refused (slow and inaccurate there): fp32 is used and a warning logged."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "float32": torch.float32}
    if isinstance(dtype, str):
        if dtype not in names and dtype != "auto":
            raise ValueError(f"unknown dtype {dtype!r}; use fp16, bf16, fp32 or auto")
        dtype = names.get(dtype)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and dtype != torch.float32:
        log.warning("half precision requested on the CPU: using fp32")
        dtype = torch.float32
    return device, dtype


def _host_key(embedding):
    """A cache key for an identity embedding held on the host (numpy or a CPU tensor): its dtype,
    shape and bytes. None for a device tensor (reading it would wait for the device)."""
    if torch.is_tensor(embedding):
        if embedding.device.type != "cpu" or embedding.requires_grad:
            return None
        embedding = embedding.detach().numpy()
    array = np.ascontiguousarray(np.asarray(embedding))
    return ("host", str(array.dtype), array.shape, array.tobytes())


class Prior:
    """The loaded prior. Build it with :func:`load_prior`.

    Main methods: :meth:`encode_identity`, :meth:`conditioning`, :meth:`encode_images`,
    :meth:`predict_noise` (classifier-free guidance), :meth:`set_task` (normal / albedo / base).
    """

    def __init__(self, *, unet, vae, text_encoder, tokenizer, scheduler, device, dtype, memory: MemoryOptions,
                 root: Path, options: ConditioningOptions, blend_text_encoder=None):
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.device, self.dtype, self.memory, self.root = device, dtype, memory, root
        self.options = options
        self.adapters: dict[str, AdapterInfo] = {}
        self.task: str | None = None
        self.task_scale = 1.0
        # Arc2Avatar's view LoRA (loras/view), when present: always on, at its published scale.
        self.view_lora: Path | None = None
        self.view_scale = 0.45
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.vae_scale = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.image_size = int(vae.config.sample_size)
        self.id_token_id = self._placeholder_token_id()
        # Installed (or not) by load_prior before the Prior exists; asking the UNet walks all its
        # modules, far too slow for every UNet call.
        self.has_branch = has_expression_branch(unet)
        self._text_cache: dict = {}
        self.blend_text_encoder = blend_text_encoder
        self._identity_cache: dict[tuple, torch.Tensor] = {}
        self._padded_cache: dict[tuple, torch.Tensor] = {}

    # ---- text and identity -------------------------------------------------------------------

    def _placeholder_token_id(self) -> int:
        ids = self.tokenizer.encode(ID_WORD, add_special_tokens=False)
        prompt_ids = self.tokenizer(ID_PROMPT).input_ids
        if len(ids) != 1 or prompt_ids.count(ids[0]) != 1:
            raise MismatchedWeightsError(
                f"the tokenizer in {self.root / 'sd15' / 'tokenizer'} does not turn {ID_WORD!r} into one token "
                f"appearing once in {ID_PROMPT!r} (got {ids})",
                "use the SD 1.5 CLIP tokenizer (stable-diffusion-v1-5/stable-diffusion-v1-5, tokenizer/)")
        return ids[0]

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.tokenizer.model_max_length,
                              return_tensors="pt").input_ids.to(self.device)

    @contextlib.contextmanager
    def _placed(self, module):
        """With ``cpu_offload``, bring ``module`` to the GPU only for the duration of the block.
        Under grad mode it stays there: a graph built in the block holds its weights for the
        backward, and moving them would swap the saved weights' storage (device mismatch)."""
        if not (self.memory.cpu_offload and self.device.type != "cpu"):
            yield module
            return
        module.to(self.device)
        try:
            yield module
        finally:
            if not torch.is_grad_enabled():
                module.to("cpu")

    def apply_memory(self, memory: MemoryOptions) -> None:
        """Switch VAE gradient checkpointing and CPU offload on a loaded prior (attention, channels
        last and tiling are set at load). Results are unchanged: checkpointing recomputes the same
        forward in the backward, offloading only moves weights."""
        if memory.vae_checkpointing:
            self.vae.enable_gradient_checkpointing()
        elif getattr(self.vae, "is_gradient_checkpointing", False):
            self.vae.disable_gradient_checkpointing()
        home = "cpu" if memory.cpu_offload and self.device.type != "cpu" else self.device
        for module in (self.unet, self.text_encoder, self.blend_text_encoder):
            if module is not None:
                module.to(home)
        self.vae.to(self.device)  # small (84 M parameters), and its weights take part in every backward
        self.memory = memory
        if self.device.type == "cuda" and home == "cpu":
            torch.cuda.empty_cache()  # the UNet's blocks go back to the driver

    def padded_identity(self, embedding) -> torch.Tensor:
        """[N, 512] (or [512]) ArcFace embedding -> L2-normalised, zero-padded to the token width."""
        emb = torch.as_tensor(np.asarray(embedding) if not torch.is_tensor(embedding) else embedding)
        emb = emb.to(self.device, torch.float32).reshape(-1, emb.shape[-1])
        if emb.shape[-1] != ARCFACE_DIM:
            raise ValueError(f"an ArcFace embedding has {ARCFACE_DIM} values, got {emb.shape[-1]}")
        norm = emb.norm(dim=-1, keepdim=True)
        emb = torch.where(norm > 0, emb / norm.clamp_min(1e-12), emb)  # zero stays zero (unconditional)
        width = self.text_encoder.get_input_embeddings().embedding_dim
        return F.pad(emb, (0, width - ARCFACE_DIM))

    def encode_identity(self, embedding, extra_text: str = "") -> torch.Tensor:
        """ArcFace embedding [512] or [N, 512] -> prompt embeddings [N, 77, 768] (Arc2Face).

        The padded embedding replaces the token embedding of "id" through a forward hook on the
        encoder's token-embedding layer (transformers 5 has no ``inputs_embeds`` for CLIP), then
        the encoder's last hidden state is the prompt embedding. Gradients reach ``embedding``.
        """
        padded = self.padded_identity(embedding)
        ids = self._tokens([identity_prompt(extra_text)] * padded.shape[0])
        return self._encode_ids_with_identity(ids, padded)

    def _encode_ids_with_identity(self, ids: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        # The placeholder is the first "id" of each prompt (Arc2Face's position, right after
        # "photo of a"); an "id" in the user's own text after it ("with an id badge") stays a word.
        found = ids == self.id_token_id
        if not bool(found.any(dim=1).all()):
            raise ValueError(f"each prompt must hold the placeholder word {ID_WORD!r}")
        first = found.int().argmax(dim=1)
        where = torch.zeros_like(found)
        where[torch.arange(ids.shape[0], device=ids.device), first] = True

        def replace(_module, _inputs, output):
            output = output.clone()
            output[where] = padded.to(output.dtype)
            return output

        with self._placed(self.text_encoder) as encoder:
            # prepend: observers registered by others see the embeddings the encoder really gets
            handle = encoder.get_input_embeddings().register_forward_hook(replace, prepend=True)
            try:
                out = encoder(input_ids=ids).last_hidden_state
            finally:
                handle.remove()
        return out.to(self.dtype)

    @torch.no_grad()
    def encode_text(self, text: str) -> torch.Tensor:
        """Plain text -> [1, 77, 768] (cached: the same few texts are encoded every step)."""
        if text not in self._text_cache:
            with self._placed(self.text_encoder) as encoder:
                self._text_cache[text] = encoder(input_ids=self._tokens([text])).last_hidden_state.to(self.dtype)
        return self._text_cache[text]

    def expression_scale(self) -> float:
        if self.options.expression_scale is not None:
            return float(self.options.expression_scale)
        if self.task and self.task in self.adapters:
            return float(self.adapters[self.task].expression_scale)
        return 0.0

    def conditioning(self, identity_embedding, expression_text: str = "", view=None) -> Conditioning:
        """Conditioning for one identity, one expression/edit text and one or more views.

        ``view``: None, a label ("front"/"side"/"back"), an azimuth in degrees (blended), or a list
        of those (one row per view). Returns a :class:`Conditioning` with B = number of views.
        How the text enters the prompt follows ``options.mode`` (see :class:`ConditioningOptions`).
        """
        views = view if isinstance(view, (list, tuple)) else [view]
        # The identity is the same every step: keyed by its host bytes, its padded form and its
        # prompt embeddings are found without a device read-back (or a host-to-device copy).
        host_key = _host_key(identity_embedding)
        padded = self._padded_cache.get(host_key) if host_key is not None else None
        if padded is None:
            padded = self.padded_identity(identity_embedding)
            if host_key is not None:
                if len(self._padded_cache) > 8:
                    self._padded_cache.clear()
                self._padded_cache[host_key] = padded
        if padded.shape[0] != 1:
            raise ValueError("conditioning() takes one identity; average several embeddings first")
        scale = self.expression_scale()
        use_branch = scale != 0.0 and self.has_branch
        mode = self.options.mode
        prompts, exprs, texts = [], [], []
        with torch.no_grad():
            identity = self._identity_with_text(padded, "", host_key)  # Arc2Face's own prompt embedding
            for v in views:
                weights = view_label_weights(v) or {None: 1.0}
                phrases = {label: expression_phrase(expression_text, label) for label in weights}
                if mode == "append":
                    prompt = sum(w * self._identity_with_text(padded, phrases[label], host_key)
                                 for label, w in weights.items())
                elif mode == "blend" and any(phrases.values()):
                    text = sum(w * self.encode_blend_text(phrases[label]) for label, w in weights.items())
                    beta = float(self.options.blend_weight)
                    prompt = (1.0 - beta) * identity + beta * text
                else:  # "identity", or "blend" with neither expression nor view: E_id exactly
                    prompt = identity
                prompts.append(prompt)
                if use_branch:
                    exprs.append(sum(w * self.encode_text(phrases[label]) for label, w in weights.items()))
                texts.append(phrases[max(weights, key=weights.get)])
            uncond = self.unconditional()
        batch = len(views)
        return Conditioning(
            prompt=torch.cat(prompts), uncond=uncond.expand(batch, -1, -1).clone(),
            expression=torch.cat(exprs) if use_branch else None,
            expression_uncond=self.encode_text("").expand(batch, -1, -1).clone() if use_branch else None,
            expression_scale=scale if use_branch else 0.0, texts=texts)

    @torch.no_grad()
    def encode_blend_text(self, text: str) -> torch.Tensor:
        """Plain text -> [1, 77, 768] with the encoder of the "blend" mode: SD 1.5's own CLIP text
        encoder when ``sd15/text_encoder`` was loaded (what Arc2Avatar blends), else Arc2Face's."""
        if self.blend_text_encoder is None:
            return self.encode_text(text)
        key = ("sd15", text)
        if key not in self._text_cache:
            with self._placed(self.blend_text_encoder) as encoder:
                self._text_cache[key] = encoder(input_ids=self._tokens([text])).last_hidden_state.to(self.dtype)
        return self._text_cache[key]

    def _identity_with_text(self, padded, phrase: str, host_key=None) -> torch.Tensor:
        # cached: a run asks for the same identity with a few expression/view phrases every step
        identity = host_key if host_key is not None else ("padded", padded.detach().cpu().numpy().tobytes())
        key = (phrase, identity)
        if key not in self._identity_cache:
            if len(self._identity_cache) > 64:
                self._identity_cache.clear()
            self._identity_cache[key] = self._encode_ids_with_identity(self._tokens([identity_prompt(phrase)]), padded)
        return self._identity_cache[key]

    def unconditional(self) -> torch.Tensor:
        """[1, 77, 768]: the negative text if set, else the empty prompt or the zero-identity prompt."""
        if self.options.negative:
            return self.encode_text(self.options.negative)
        if self.options.uncond == "zero_id":
            with torch.no_grad():
                return self.encode_identity(torch.zeros(ARCFACE_DIM))
        if self.options.uncond != "empty":
            raise ValueError(f"unknown unconditional mode {self.options.uncond!r}; use 'empty' or 'zero_id'")
        return self.encode_text("")

    # ---- images and noise --------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor, *, sample: bool = False, generator=None) -> torch.Tensor:
        """Renders [B, H, W, 3] in [0, 1] -> scaled VAE latents [B, 4, h, w] (differentiable).

        Renders are resized to the VAE's native size (512 for SD 1.5) first.
        """
        x = images.permute(0, 3, 1, 2).to(self.device, self.dtype)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        dist = self.vae.encode(x * 2.0 - 1.0).latent_dist  # the VAE is never offloaded (apply_memory)
        latents = dist.sample(generator) if sample else dist.mean
        return latents * self.vae_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images [B, H, W, 3] in [0, 1]."""
        x = self.vae.decode(latents.to(self.dtype) / self.vae_scale).sample
        return ((x.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1)

    def unet_eps(self, noisy, t, prompt, expression=None, expression_scale: float = 0.0):
        """One UNet call -> ε prediction (the caller decides on grad mode)."""
        kwargs = {}
        if self.has_branch:
            kwargs["cross_attention_kwargs"] = {"expression_embeds": expression,
                                                "expression_scale": float(expression_scale)}
        if t.ndim == 0:
            t = t.expand(noisy.shape[0])
        with self._placed(self.unet) as unet:
            return unet(noisy.to(self.dtype), t.to(self.device), encoder_hidden_states=prompt.to(self.dtype),
                        **kwargs).sample

    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float):
        """Classifier-free guidance in the standard form ``ε_u + s·(ε_c − ε_u)``; both passes in one
        batch. Returns (ε̂, ε_c, ε_u), float32."""
        b = noisy.shape[0]
        if cond.batch != b:
            raise ValueError(f"{b} latents but conditioning for {cond.batch} views")
        expression = None
        if cond.expression is not None:
            expression = torch.cat([cond.expression_uncond, cond.expression])
        eps = self.unet_eps(torch.cat([noisy, noisy]), torch.cat([t, t]) if t.ndim else t,
                            torch.cat([cond.uncond, cond.prompt]), expression, cond.expression_scale).float()
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u), eps_c, eps_u

    # ---- task priors -------------------------------------------------------------------------

    def load_task(self, task: str, folder: Path | str | None = None) -> AdapterInfo:
        """Load a task LoRA (``ROOT/loras/<task>`` by default) under the adapter name ``task``."""
        folder = Path(folder) if folder else self.root / "loras" / task
        info = load_task_adapter(self.unet, folder, adapter_name=task)
        self.adapters[task] = info
        return info

    def create_task(self, info: AdapterInfo) -> list:
        """Add a fresh trainable LoRA for ``info.domain`` and switch to it; returns its parameters."""
        params = add_task_adapter(self.unet, info, adapter_name=info.domain)
        self.adapters[info.domain] = info
        self.set_task(info.domain)
        return params

    def set_task(self, task: str | None, scale: float = 1.0) -> None:
        """Switch to a task prior (``"normal"``/``"albedo"``) at ``scale``, or to the base (``None``)."""
        if task is not None and task not in self.adapters:
            raise PriorError(f"the {task} prior is not loaded", f"call load_task({task!r}) first")
        names = ([VIEW_ADAPTER] if self.view_lora else []) + ([task] if task else [])
        weights = ([float(self.view_scale)] if self.view_lora else []) + ([float(scale)] if task else [])
        if names:
            self.unet.enable_adapters()
            self.unet.set_adapters(names, weights=weights)
            if self.view_lora:
                self._freeze_view()  # peft marks every active adapter trainable; the view LoRA is fixed
        elif self.adapters:
            self.unet.disable_adapters()
        self.task, self.task_scale = task, scale

    def _freeze_view(self) -> None:
        for name, param in self.unet.named_parameters():
            if f".{VIEW_ADAPTER}." in name:
                param.requires_grad_(False)

    def load_view_lora(self, path: Path | str, scale: float | None = None) -> None:
        """Load a view LoRA file (Arc2Avatar's, or any diffusers/peft UNet LoRA) that stays on
        under every task, at ``scale`` (default Arc2Avatar's 0.45)."""
        path = Path(path)
        load_lora_file(self.unet, path, VIEW_ADAPTER)
        self.view_lora = path
        if scale is not None:
            self.view_scale = float(scale)
        self.set_task(self.task, self.task_scale)


# ---- loading -------------------------------------------------------------------------------------

def _load_checked(cls, folder: Path, weights: str, what: str, dtype, **kwargs):
    """``cls.from_pretrained(folder)`` after checking the weights file, with clear errors."""
    config = read_json(folder / "config.json")
    tensors = check_safetensors(folder / weights)
    try:
        with torch.device("meta"):  # shapes only: no memory, no random init
            skeleton = cls.from_config(config)
    except Exception as exc:
        raise CorruptWeightsError(f"{folder / 'config.json'} is not a valid {what} config ({exc})",
                                  f"download the {what}'s config.json again") from None
    check_shapes_against(skeleton, tensors, folder / weights, what)
    del skeleton
    try:
        return cls.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CorruptWeightsError(f"{folder / weights} could not be loaded as the {what} ({str(exc)[:300]})",
                                  f"download {folder.name}/ again") from None


def _load_text_encoder(folder: Path, dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_dict(read_json(folder / "config.json"))
    with torch.device("meta"):
        skeleton = CLIPTextModel(config)
    if (folder / "model.safetensors").is_file():
        tensors = check_safetensors(folder / "model.safetensors")
        check_shapes_against(skeleton, tensors, folder / "model.safetensors", "text encoder")
        try:
            return CLIPTextModel.from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CorruptWeightsError(f"{folder / 'model.safetensors'} could not be loaded ({str(exc)[:300]})",
                                      f"download {folder.parent.name}/{folder.name}/ again") from None
    # Arc2Face ships a pickle: read it with the weights-only loader and go through safetensors.
    state = load_encoder_bin_safely(folder / "pytorch_model.bin")
    check_shapes_against(skeleton, {k: ("", list(v.shape)) for k, v in state.items()},
                         folder / "pytorch_model.bin", "text encoder")
    from safetensors.torch import save_file

    staging = Path(tempfile.mkdtemp(prefix="encoder-"))
    try:
        shutil.copy(folder / "config.json", staging / "config.json")
        save_file({k: v.contiguous() for k, v in state.items()}, staging / "model.safetensors", metadata={"format": "pt"})
        log.info("loaded %s with the weights-only loader; convert it once with "
                 "engine.prior.weights.convert_encoder_to_safetensors to skip this step", folder / "pytorch_model.bin")
        return CLIPTextModel.from_pretrained(staging, dtype=dtype, use_safetensors=True, local_files_only=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_blend_encoder(sd15: Path, options: ConditioningOptions, hidden: int, dtype):
    """SD 1.5's own text encoder for the "blend" mode (optional: ``text_encoder/`` in the resolved
    ``sd15`` folder, normally ``ROOT/sd15/text_encoder``)."""
    folder = sd15 / "text_encoder"
    choice = options.blend_encoder
    if choice not in ("auto", "sd15", "arc2face"):
        raise ValueError(f"unknown blend encoder {choice!r}; use auto, sd15 or arc2face")
    present = (folder / "config.json").is_file()
    if choice == "arc2face" or (choice == "auto" and not present):
        return None
    if not present:
        raise MissingWeightsError(f"{folder / 'config.json'} does not exist (blend_encoder='sd15')",
                                  "download sd15/text_encoder/ from stable-diffusion-v1-5/stable-diffusion-v1-5, "
                                  "or use blend_encoder='auto'")
    encoder = _load_text_encoder(folder, dtype)
    if encoder.config.hidden_size != hidden:
        raise MismatchedWeightsError(f"the text encoder in {folder} makes {encoder.config.hidden_size}-d tokens, "
                                     f"Arc2Face's {hidden}-d", "use SD 1.5's text_encoder/")
    encoder.requires_grad_(False)
    encoder.eval()
    return encoder


def load_prior(root, *, device=None, dtype=None, task: str | None = None, memory: MemoryOptions | None = None,
               options: ConditioningOptions | None = None, expression_branch: bool = True,
               lora_dirs: dict[str, Path] | None = None, allow_download: bool = False) -> Prior:
    """Load the prior from the models folder ``root`` (see :mod:`engine.prior`). With
    ``allow_download``, missing files are first fetched by ``fetch-models`` (pinned revisions).
    Every file is read locally (Hugging Face offline mode, ``local_files_only``), whatever a config says."""
    from ..models import enforce_offline

    enforce_offline()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    memory = memory or MemoryOptions()
    device, dtype = resolve_device_dtype(device, dtype)
    root = Path(root).expanduser()
    if allow_download:  # missing or broken files fetched by fetch-models, the one download path
        from ..model_store import ensure_models

        ensure_models(root, ["sd15", "arc2face"], log=log.info)
    paths = resolve_components(root)
    unet = _load_checked(UNet2DConditionModel, paths["unet"], "diffusion_pytorch_model.safetensors", "Arc2Face UNet",
                         dtype)
    vae = _load_checked(AutoencoderKL, paths["vae"], "diffusion_pytorch_model.safetensors", "SD 1.5 VAE", dtype)
    text_encoder = _load_text_encoder(paths["text_encoder"], dtype)
    try:
        for config_file in sorted(paths["tokenizer"].glob("*.json")):
            read_json(config_file)  # objects only: a string there would name a Hub repository
        tokenizer = CLIPTokenizer.from_pretrained(paths["tokenizer"], local_files_only=True)
    except CorruptWeightsError:
        raise
    except Exception as exc:
        raise CorruptWeightsError(f"the tokenizer in {paths['tokenizer']} could not be read ({str(exc)[:200]})",
                                  "download sd15/tokenizer/ again") from None
    # DDPM with SD 1.5's betas: SDS and training need q(x_t | x_0), not a sampler's step rule.
    scheduler = DDPMScheduler.from_config(read_json(paths["scheduler"] / "scheduler_config.json"))

    hidden = text_encoder.config.hidden_size
    if unet.config.cross_attention_dim != hidden:
        raise MismatchedWeightsError(
            f"the UNet in {paths['unet']} attends to {unet.config.cross_attention_dim}-d tokens but the text encoder "
            f"in {paths['text_encoder']} makes {hidden}-d ones", "use Arc2Face's arc2face/ and encoder/ together")
    if hidden < ARCFACE_DIM:
        raise MismatchedWeightsError(f"the text encoder in {paths['text_encoder']} is {hidden}-d, narrower than the "
                                     f"{ARCFACE_DIM}-d ArcFace embedding", "use Arc2Face's encoder/")
    if unet.config.in_channels != vae.config.latent_channels:
        raise MismatchedWeightsError(
            f"the UNet in {paths['unet']} takes {unet.config.in_channels} channels, the VAE in {paths['vae']} makes "
            f"{vae.config.latent_channels}", "use the SD 1.5 VAE")
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise MismatchedWeightsError(f"the tokenizer in {paths['tokenizer']} has {len(tokenizer)} tokens, the text "
                                     f"encoder only {text_encoder.config.vocab_size}", "use SD 1.5's tokenizer/")

    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
    if expression_branch:
        install_expression_branch(unet, slice_size=memory.attention_slice_size if memory.attention == "sliced" else None)
    elif memory.attention == "sliced":
        unet.set_attention_slice(memory.attention_slice_size)
    if memory.channels_last:
        unet.to(memory_format=torch.channels_last)
    if memory.vae_tiling:
        vae.enable_tiling()
    options = options or ConditioningOptions()
    blend_encoder = _load_blend_encoder(paths["vae"].parent, options, hidden, dtype) if options.mode == "blend" else None
    prior = Prior(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                  device=device, dtype=dtype, memory=memory, root=root, options=options,
                  blend_text_encoder=blend_encoder)
    prior.apply_memory(memory)  # places every model (on the CPU until it runs, with cpu_offload)
    from ..models import LORA_WEIGHTS_FILE, resolve

    lora_dirs = {k: Path(v) for k, v in (lora_dirs or {}).items()}
    for name in TASKS:
        folder = lora_dirs.get(name) or resolve(f"loras/{name}", root).folder or root / "loras" / name
        if name in lora_dirs or (folder / "prior_adapter.json").is_file():
            check_lora_folder_fits(prior.unet, folder, WEIGHTS_FILE)  # a clear error before peft sees it
            prior.load_task(name, folder)
    view = lora_dirs.get(VIEW_ADAPTER) or resolve("loras/view", root).folder
    if view is not None:
        prior.load_view_lora(view / LORA_WEIGHTS_FILE if view.is_dir() else view)
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)} or None for the base prior")
        if task not in prior.adapters:
            raise MissingWeightsError(
                f"no {task} prior in {root / 'loras' / task}",
                f"train one with `python -m engine train-prior --domain {task} ...`, or run with the base prior "
                "(task=None)")
        prior.set_task(task)
    elif prior.adapters:
        prior.set_task(None)
    return prior


__all__ = ["Prior", "MemoryOptions", "load_prior", "resolve_device_dtype", "VIEW_LABELS"]
