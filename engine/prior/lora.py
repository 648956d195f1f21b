"""Task priors as LoRA adapters on the UNet (peft through diffusers' adapter API).

An adapter folder holds what ``save_lora_adapter`` writes (``pytorch_lora_weights.safetensors``,
with the peft config in its metadata) plus ``prior_adapter.json``: the domain it was trained for,
rank, target modules, and the expression-branch scale it was trained with. Imported only by code
that already needs torch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import NEW_TAG, file_mode
from ..model_digests import sha256_file
from .errors import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError
from .expression_attention import has_expression_branch
from .weights import check_safetensors, read_json

TASKS = ("normal", "albedo")
WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
INFO_FILE = "prior_adapter.json"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "to_k_exp", "to_v_exp")


@dataclass
class AdapterInfo:
    domain: str
    rank: int = 8
    alpha: float = 8.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    expression_scale: float = 1.0
    steps: int = 0
    extra: dict = field(default_factory=dict)
    weights_sha256: str = ""  # of the weights file written with this info: a mismatched pair is detected


def add_task_adapter(unet, info: AdapterInfo, adapter_name: str):
    """Add a fresh trainable LoRA to ``unet``; returns the list of its trainable parameters."""
    from peft import LoraConfig

    names = {n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0" for n, _ in unet.named_modules()}
    unknown = [t for t in info.target_modules if t not in names]
    if unknown:
        raise ValueError(f"LoRA target modules not found in the UNet: {', '.join(unknown)}"
                         + (" (to_k_exp/to_v_exp need the expression branch)" if any("exp" in u for u in unknown) else ""))
    config = LoraConfig(r=info.rank, lora_alpha=info.alpha, init_lora_weights="gaussian",
                        target_modules=list(info.target_modules))
    unet.add_adapter(config, adapter_name=adapter_name)
    unet.set_adapters([adapter_name])
    params = [p for n, p in unet.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params


def save_task_adapter(unet, folder: Path | str, adapter_name: str, info: AdapterInfo) -> Path:
    """Write the adapter's two files into ``folder`` (other files there are kept, e.g. a trainer's
    checkpoints). Each file is staged and renamed into place; the weights go first, so a folder
    with ``prior_adapter.json`` always has matching weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".adapter{NEW_TAG}", dir=folder))  # tagged: a left-over is the engine's
    try:
        unet.save_lora_adapter(staging, adapter_name=adapter_name, weight_name=WEIGHTS_FILE)
        info.weights_sha256 = sha256_file(staging / WEIGHTS_FILE)
        (staging / INFO_FILE).write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
        for name in (WEIGHTS_FILE, INFO_FILE):
            os.chmod(staging / name, file_mode())  # the user's umask, not the staging folder's 0600
        os.replace(staging / WEIGHTS_FILE, folder / WEIGHTS_FILE)
        os.replace(staging / INFO_FILE, folder / INFO_FILE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_adapter_info(folder: Path) -> AdapterInfo:
    if not (folder / WEIGHTS_FILE).is_file():
        raise MissingWeightsError(f"{folder / WEIGHTS_FILE} does not exist",
                                  "point to a folder written by `python -m engine train-prior` (or its final/ folder)")
    data = read_json(folder / INFO_FILE) if (folder / INFO_FILE).is_file() else {"domain": folder.name}
    fix = "train it again with `python -m engine train-prior`, or delete prior_adapter.json to load the weights alone"
    if not isinstance(data, dict) or not isinstance(data.get("domain"), str):
        raise CorruptWeightsError(f"{folder / INFO_FILE} has no 'domain' (normal or albedo)", fix)
    known = set(AdapterInfo.__dataclass_fields__)
    try:
        info = AdapterInfo(**{k: v for k, v in data.items() if k in known})
        info.rank, info.alpha, info.expression_scale = int(info.rank), float(info.alpha), float(info.expression_scale)
    except (TypeError, ValueError) as exc:
        raise CorruptWeightsError(f"{folder / INFO_FILE} has a field of the wrong type ({exc})", fix) from None
    if info.weights_sha256 and info.weights_sha256 != sha256_file(folder / WEIGHTS_FILE):
        raise MismatchedWeightsError(f"{folder / WEIGHTS_FILE} is not the file {folder / INFO_FILE} was written with "
                                     "(an interrupted copy or save?)", fix)
    return info


def _check_tensor_names(unet, path: Path, tensors: dict) -> None:
    """Every tensor must be a LoRA A/B matrix of a module this UNet has: a file with anything else
    (another model's LoRA, a checkpoint of a different format) is refused by name, not half-loaded."""
    modules = {name for name, _ in unet.named_modules()}
    foreign = []
    for name in tensors:
        bare = name[len("unet."):] if name.startswith("unet.") else name
        module, _, tail = bare.rpartition(".lora_")
        if tail not in ("A.weight", "B.weight") or module not in modules:
            foreign.append(name)
    if foreign or not tensors:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise MismatchedWeightsError(
            f"{path} holds tensors that are not LoRA weights of this UNet ({shown or 'no tensors at all'})",
            "use a LoRA written by `python -m engine train-prior` for this base model")


def load_task_adapter(unet, folder: Path | str, adapter_name: str) -> AdapterInfo:
    """Load an adapter folder into ``unet`` under ``adapter_name``, with clear errors."""
    folder = Path(folder)
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        raise ValueError(f"a task prior named {adapter_name!r} is already loaded; switch to it with set_task()")
    # A truncated file is named as such before anything else (the info check hashes it).
    tensors = check_safetensors(folder / WEIGHTS_FILE) if (folder / WEIGHTS_FILE).is_file() else None
    info = read_adapter_info(folder)
    _check_tensor_names(unet, folder / WEIGHTS_FILE, tensors)
    if any("_exp." in name for name in tensors) and not has_expression_branch(unet):
        raise MismatchedWeightsError(f"{folder / WEIGHTS_FILE} adapts the expression branch, which is not installed",
                                     "load the prior with expression_branch=True")
    try:
        # save_lora_adapter writes bare module names; pipeline-level files prefix them with "unet."
        prefix = "unet" if any(name.startswith("unet.") for name in tensors) else None
        unet.load_lora_adapter(folder, prefix=prefix, adapter_name=adapter_name, weight_name=WEIGHTS_FILE)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise MismatchedWeightsError(f"{folder / WEIGHTS_FILE} does not fit this UNet ({str(exc)[:300]})",
                                     "the LoRA was trained on another base model; retrain it on this one") from None
    except OSError as exc:
        raise CorruptWeightsError(f"{folder / WEIGHTS_FILE} could not be read ({exc})", "train or copy it again") from None
    return info
