"""LoRA files from elsewhere: checked against the UNet before loading, and the Arc2Avatar view LoRA.

Two formats are read: the diffusers/peft one (``<module>.lora_A.weight`` / ``lora_B``, as
``save_lora_adapter`` writes, optionally prefixed ``unet.``) and every format diffusers'
``load_lora_weights`` converts — the one Arc2Avatar loads its view LoRA with
(``pipe.load_lora_weights(folder, weight_name="pytorch_lora_weights.safetensors")``): older
diffusers attention-processor keys (``...processor.to_q_lora.down.weight``) and kohya keys
(``lora_unet_...``). Whether the published file uses the first or the second could not be seen
(its bytes are not in the public snapshot), so both go through diffusers' own conversion.

A LoRA whose modules or shapes do not fit the UNet is refused before anything is changed, with
the file, the mismatch and what to do. Imported only by code that already needs torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import MismatchedWeightsError
from .weights import check_safetensors

VIEW_ADAPTER = "view"
_PAIRS = (  # (down / A suffix, up / B suffix)
    (".lora_A.weight", ".lora_B.weight"),
    (".lora.down.weight", ".lora.up.weight"),
    (".lora_down.weight", ".lora_up.weight"),
)
_PROCESSOR = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.")


def _module_name(key: str) -> tuple[str, str] | None:
    """``key`` -> (module path in the UNet, "A"/"B"), or None for keys that are not LoRA weights."""
    key = key.removeprefix("unet.")
    # old attention-processor layout: attn1.processor.to_out_lora.down.weight -> attn1.to_out.0
    key = _PROCESSOR.sub(lambda m: "." + (m.group(1) + ".0" if m.group(1) == "to_out" else m.group(1)) + ".lora.",
                         key)
    for down, up in _PAIRS:
        if key.endswith(down):
            return key[: -len(down)], "A"
        if key.endswith(up):
            return key[: -len(up)], "B"
    return None


def check_lora_fits(unet, state_dict: dict, path: Path) -> dict[str, int]:
    """Raise :class:`MismatchedWeightsError` unless every LoRA pair in ``state_dict`` targets a
    layer of ``unet`` with matching input/output sizes and one rank per pair. Returns
    ``module -> rank``."""
    path = Path(path)
    foreign = sorted({k.split(".", 1)[0] for k in state_dict if k.startswith(("text_encoder", "lora_te"))})
    if foreign:
        raise MismatchedWeightsError(
            f"{path} also adapts the text encoder ({', '.join(foreign)} keys); the engine applies UNet LoRAs only",
            "use a LoRA trained on the UNet alone (as `python -m engine train-prior` writes), or remove its "
            "text-encoder tensors")
    modules = dict(unet.named_modules())
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, tensor in state_dict.items():
        found = _module_name(key)
        if found is not None:
            pairs.setdefault(found[0], {})[found[1]] = tuple(tensor.shape)
    if not pairs:
        raise MismatchedWeightsError(f"{path} holds no LoRA weights (no lora_A/lora_B or lora.down/lora.up tensors)",
                                     "point to a LoRA file written by diffusers/peft (save_lora_adapter)")
    unknown = sorted(name for name in pairs if name not in modules)
    if unknown:
        hint = ("the LoRA was made for another model; use one trained on Arc2Face / SD 1.5 (for task priors: "
                "`python -m engine train-prior`)")
        if any("_exp" in name for name in unknown):
            hint = "it adapts the expression branch: load the prior with expression_branch=True"
        raise MismatchedWeightsError(
            f"{path} does not fit this UNet: it holds tensors that are not LoRA weights of this UNet, for "
            f"{len(unknown)} module(s) the UNet does not have, e.g. "
            f"{', '.join(unknown[:3])}", hint)
    ranks = {}
    for name, shapes in sorted(pairs.items()):
        layer = modules[name]
        a, b = shapes.get("A"), shapes.get("B")
        if a is None or b is None:
            raise MismatchedWeightsError(f"{path}: module {name} has only half a LoRA pair ({'A' if a else 'B'} "
                                         "without its partner)", "the file is incomplete: copy or train it again")
        width_in = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        width_out = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        problems = []
        if a[0] != b[1]:
            problems.append(f"down rank {a[0]} but up rank {b[1]}")
        if len(a) < 2 or a[1] != width_in:
            problems.append(f"input size {a[1] if len(a) > 1 else '?'} but the layer takes {width_in}")
        if b[0] != width_out:
            problems.append(f"output size {b[0]} but the layer makes {width_out}")
        if problems:
            raise MismatchedWeightsError(
                f"{path} does not fit this UNet: at module {name}, " + "; ".join(problems),
                "the LoRA was trained on a model of another size or with another rank layout; use one trained "
                "on this base model (Arc2Face's UNet)")
        ranks[name] = a[0]
    return ranks


def read_lora_file(path: Path) -> tuple[dict, dict | None]:
    """A LoRA safetensors file -> (state dict in diffusers' format, network alphas), through
    diffusers' own converter (kohya / old diffusers keys), read locally only."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    from safetensors.torch import load_file

    check_safetensors(path)
    state = load_file(str(path))
    return StableDiffusionLoraLoaderMixin.lora_state_dict(state)


def load_lora_file(unet, path: Path | str, adapter_name: str) -> dict[str, int]:
    """Check ``path`` against ``unet``, then load it as adapter ``adapter_name``; returns the ranks."""
    path = Path(path)
    state, alphas = read_lora_file(path)
    ranks = check_lora_fits(unet, state, path)
    prefix = "unet" if any(k.startswith("unet.") for k in state) else None
    try:
        unet.load_lora_adapter(state, prefix=prefix, network_alphas=alphas, adapter_name=adapter_name)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise MismatchedWeightsError(f"{path} could not be loaded into this UNet ({str(exc)[:300]})",
                                     "use a LoRA trained on Arc2Face / SD 1.5") from None
    return ranks


def check_lora_folder_fits(unet, folder: Path, weights_file: str) -> None:
    """The task-prior check before :func:`engine.prior.lora.load_task_adapter` loads ``folder``."""
    from .lora import read_adapter_info

    path = Path(folder) / weights_file
    if path.is_file():
        check_safetensors(path)  # a truncated file is named as such first
        read_adapter_info(Path(folder))  # then a weights/info mismatch
        state, _ = read_lora_file(path)
        check_lora_fits(unet, state, path)
