"""The machine profile Check GPU writes and the pipeline reads (docs/gpu.md, "Machine profile").

One JSON file per (device, driver, torch, engine, models) combination in the per-user data
folder (``<user data>/id-to-3d/machine-profiles/<key>.json``, or ``$IDTO3D_PROFILE_DIR``). The key
is a hash of what the measurement depends on: the device's name, memory and compute capability,
the NVIDIA driver, the torch version and its CUDA build, the engine's version (a changed step
changes its memory) and the size and modification time of the prior's weight files. Inside, one
entry per quality preset (a check of "high" does not decide "preview"'s settings).

A changed key finds no exact profile; the pipeline then falls back to its arithmetic, except for
the precision: a profile made on a GPU of the same name (:func:`load_profile` with
``exact=False``) still says which precision gave finite gradients (a GTX 16xx stays off fp16
after a driver update), with a warning to run Check GPU again. What is not in the key (another
program using GPU memory, a changed job) is not captured: the pipeline's own memory fallback
covers it. Standard library only at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .atomic import write_text_atomic
from .models import user_data_root

PROFILE_ENV = "IDTO3D_PROFILE_DIR"
FORMAT = 2  # 2: one entry per preset, the engine's version in the key
# The weight files whose change invalidates a profile (relative to the models root, first found).
WEIGHT_FILES = (
    ("arc2face/arc2face/diffusion_pytorch_model.safetensors",),
    ("sd15/vae/diffusion_pytorch_model.safetensors",),
    ("arc2face/encoder/model.safetensors", "arc2face/encoder/pytorch_model.bin"),
)


def profile_dir() -> Path:
    env = os.environ.get(PROFILE_ENV)
    return Path(env).expanduser() if env else user_data_root() / "machine-profiles"


def device_identity(device) -> dict:
    """What a measurement on ``device`` depends on, besides the models."""
    import torch

    from . import __version__
    from .cuda_wheels import query_gpus

    info = {"device": str(device), "torch": torch.__version__, "torch_cuda": torch.version.cuda, "engine": __version__}
    if str(device).startswith("cuda"):
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        info.update(name=props.name, memory_bytes=int(props.total_memory),
                    capability=f"{props.major}.{props.minor}")
        gpus = query_gpus()
        info["driver"] = gpus[index].driver if len(gpus) > index else None
    else:
        import platform

        info.update(name=platform.processor() or platform.machine(), cpus=os.cpu_count())
    return info


def models_fingerprint(models_root) -> dict:
    """Size and modification time of each weight file (cheap: no hashing of gigabytes)."""
    root = Path(models_root).expanduser()
    out = {"root": str(root.resolve()) if root.exists() else str(root)}
    for choices in WEIGHT_FILES:
        for name in choices:
            path = root / name
            if path.is_file():
                stat = path.stat()
                out[name] = [stat.st_size, stat.st_mtime_ns]
                break
    return out


def profile_key(identity: dict, fingerprint: dict) -> str:
    blob = json.dumps({"identity": identity, "models": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("presets"), dict):
        return None
    return record


def save_profile(entry: dict, preset: str, identity: dict, fingerprint: dict) -> Path:
    """Write Check GPU's findings for ``preset`` under the key, beside the other presets' entries
    (atomically); returns the path."""
    key = profile_key(identity, fingerprint)
    folder = profile_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    old = _read(path)
    presets = dict(old["presets"]) if old else {}
    presets[preset] = entry
    record = {"format": FORMAT, "key": key, "identity": identity, "models": fingerprint, "presets": presets}
    return write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def load_profile(device, models_root) -> dict | None:
    """The profile made on this device with these models, this torch and this engine (``exact``
    True), else the newest one made on a GPU of the same name and memory (``exact`` False: only
    its precision still holds), else None. The returned dict has ``path`` and ``exact`` added."""
    try:
        identity = device_identity(device)
    except Exception:  # a device that cannot even be described has no profile
        return None
    folder = profile_dir()
    path = folder / f"{profile_key(identity, models_fingerprint(models_root))}.json"
    record = _read(path)
    if record is not None:
        return {**record, "path": str(path), "exact": True}
    if "capability" not in identity:  # only GPUs are matched by name (a CPU's name says nothing)
        return None
    same_gpu = []
    for other in folder.glob("*.json") if folder.is_dir() else ():
        found = _read(other)
        ident = (found or {}).get("identity", {})
        if found and ident.get("name") == identity.get("name") and ident.get("memory_bytes") == identity.get(
                "memory_bytes"):
            same_gpu.append((other.stat().st_mtime_ns, other, found))
    if not same_gpu:
        return None
    _, other, found = max(same_gpu, key=lambda item: item[0])
    return {**found, "path": str(other), "exact": False}


def entry_for(profile: dict | None, preset: str) -> dict | None:
    """The profile's entry for ``preset`` (None when that preset was never checked)."""
    if not profile:
        return None
    entry = profile.get("presets", {}).get(preset)
    return entry if isinstance(entry, dict) else None


def precision_from(profile: dict | None, preset: str) -> tuple[str | None, bool | None]:
    """(dtype, fp16_finite) the profile found: the preset's own entry, else any entry (the
    precision is the GPU's, not the preset's)."""
    if not profile:
        return None, None
    entries = [entry_for(profile, preset)] + list(profile.get("presets", {}).values())
    for entry in entries:
        if isinstance(entry, dict) and entry.get("dtype"):
            return entry["dtype"], entry.get("fp16_finite")
    return None, None
