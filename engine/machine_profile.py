"""The machine profile Check GPU writes and the pipeline reads (docs/pipeline.md, "Machine profile").

One JSON file per (device, driver, torch, models) combination in the per-user data folder
(``<user data>/id-to-3d/machine-profiles/<key>.json``, or ``$IDTO3D_PROFILE_DIR``). The key is a
hash of what the measurement depends on: the device's name and memory, the NVIDIA driver, the
torch version and its CUDA build, and the size and modification time of the prior's weight
files. A new GPU, driver, torch or model file therefore finds no profile (and the pipeline
falls back to its arithmetic) instead of a stale one. Standard library only at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .atomic import write_text_atomic
from .models import user_data_root

PROFILE_ENV = "IDTO3D_PROFILE_DIR"
FORMAT = 1
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

    from .cuda_wheels import query_gpus

    info = {"device": str(device), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
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


def save_profile(profile: dict, identity: dict, fingerprint: dict) -> Path:
    """Write ``profile`` (Check GPU's findings) under its key, atomically; returns the path."""
    key = profile_key(identity, fingerprint)
    record = {"format": FORMAT, "key": key, "identity": identity, "models": fingerprint, **profile}
    folder = profile_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(folder / f"{key}.json", json.dumps(record, indent=1) + "\n")


def load_profile(device, models_root) -> dict | None:
    """The profile made on this device with these models and this torch, or None (never made,
    made for something else, or unreadable). The returned dict has ``path`` added."""
    try:
        identity = device_identity(device)
    except Exception:  # a device that cannot even be described has no profile
        return None
    fingerprint = models_fingerprint(models_root)
    path = profile_dir() / f"{profile_key(identity, fingerprint)}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    record["path"] = str(path)
    return record
