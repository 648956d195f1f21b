"""Finding, checking and (on request) downloading the prior's weight files.

Everything here is about files, before any model is built: the models-folder layout
(``ROOT/sd15``, ``ROOT/arc2face``, ``ROOT/loras``), a cheap structural check of every safetensors
file (so a truncated download fails with the file's name, not deep inside a loader), the safe
conversion of Arc2Face's ``encoder/pytorch_model.bin`` (weights-only unpickler, never plain
pickle), and downloads from Hugging Face at pinned revisions, only when the caller allows them.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

from ..atomic import write_text_atomic, write_to_path_atomic
from .errors import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError

log = logging.getLogger(__name__)

# Hugging Face sources. SD 1.5's revision is the commit the stable-diffusion-v1-5 organisation's
# repository has served since the runwayml move; Arc2Face's could not be checked offline, so it is
# resolved at download time and recorded in ``ROOT/arc2face/download.json`` (later downloads reuse
# the recorded commit, so the folder stays reproducible).
HF_SOURCES = {
    "sd15": {
        "repo_id": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "revision": "451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
        "allow_patterns": ["vae/config.json", "vae/diffusion_pytorch_model.safetensors", "tokenizer/*",
                           "scheduler/scheduler_config.json", "model_index.json"],
    },
    "arc2face": {
        "repo_id": "FoivosPar/Arc2Face",
        "revision": None,
        "allow_patterns": ["arc2face/config.json", "arc2face/diffusion_pytorch_model.safetensors",
                           "encoder/config.json", "encoder/model.safetensors", "encoder/pytorch_model.bin",
                           "arcface.onnx"],
    },
}

DOWNLOAD_HINT = ("fill the models folder with `python -m engine fetch-models` (or download "
                 "stable-diffusion-v1-5/stable-diffusion-v1-5 and FoivosPar/Arc2Face from Hugging Face "
                 "into ROOT/sd15 and ROOT/arc2face), then run `python -m engine doctor --prior ROOT`")


def component_paths(root: Path | str) -> dict[str, Path]:
    """Folders of each component in the models-folder layout (DESIGN.md §4)."""
    root = Path(root).expanduser()
    return {
        "vae": root / "sd15" / "vae",
        "tokenizer": root / "sd15" / "tokenizer",
        "scheduler": root / "sd15" / "scheduler",
        "unet": root / "arc2face" / "arc2face",
        "text_encoder": root / "arc2face" / "encoder",
        "loras": root / "loras",
    }


# component -> files that must be present (any one of a "|" group)
_REQUIRED = {
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "tokenizer": ("vocab.json", "merges.txt"),
    "scheduler": ("scheduler_config.json",),
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors|pytorch_model.bin"),
}


def check_files(root: Path | str) -> dict[str, Path]:
    """Raise :class:`MissingWeightsError` naming every missing file; return the component folders."""
    paths = component_paths(root)
    if not Path(root).expanduser().is_dir():
        raise MissingWeightsError(f"models folder {root} does not exist", DOWNLOAD_HINT)
    missing = []
    for name, files in _REQUIRED.items():
        for group in files:
            if not any((paths[name] / f).is_file() and (paths[name] / f).stat().st_size > 0
                       for f in group.split("|")):
                missing.append(str(paths[name] / group.split("|")[0]) + (" (or " + ", ".join(group.split("|")[1:]) + ")"
                                                                       if "|" in group else ""))
    if missing:
        raise MissingWeightsError("the prior's weights are incomplete; missing:\n    " + "\n    ".join(missing),
                                  DOWNLOAD_HINT)
    return paths


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptWeightsError(f"{path} is not a readable JSON file ({exc})",
                                  "download this file again (it is probably truncated)") from None


def check_safetensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Check a safetensors file's structure without loading it; return ``name -> (dtype, shape)``.

    A safetensors file is an 8-byte little-endian header length, a JSON header giving each
    tensor's byte range, then the data. A truncated or overwritten file fails here with its name.
    """
    hint = f"delete {path.name} and download it again (the file is truncated or not a safetensors file)"
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CorruptWeightsError(f"{path} is only {size} bytes: not a safetensors file", hint)
            (header_len,) = struct.unpack("<Q", head)
            if header_len <= 0 or 8 + header_len > size or header_len > 100_000_000:
                raise CorruptWeightsError(f"{path} has an impossible header length ({header_len} for a {size}-byte file)",
                                          hint)
            header = json.loads(handle.read(header_len).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptWeightsError(f"{path} has an unreadable header ({exc})", hint) from None
    tensors = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
            tensors[name] = (info["dtype"], list(info["shape"]))
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(f"{path}: tensor {name!r} has a malformed header entry", hint) from None
        data_end = max(data_end, end)
    if 8 + header_len + data_end > size:
        raise CorruptWeightsError(
            f"{path} is truncated: its header needs {8 + header_len + data_end} bytes, the file has {size}", hint)
    return tensors


def check_shapes_against(model, tensors: dict[str, tuple[str, list[int]]], path: Path, what: str) -> None:
    """Raise :class:`MismatchedWeightsError` when a file's tensors do not fit ``model``'s config.

    Keys are compared after dropping a legacy ``text_model.`` prefix (old CLIP checkpoints).
    """
    expected = {name: list(t.shape) for name, t in model.state_dict().items()}
    wrong, unknown = [], 0
    for name, (_dtype, shape) in tensors.items():
        key = name if name in expected else name.removeprefix("text_model.")
        if key not in expected:
            unknown += 1
            continue
        if expected[key] != shape:
            wrong.append(f"{name}: file {shape}, config {expected[key]}")
    missing = len(set(expected) - {n if n in expected else n.removeprefix("text_model.") for n in tensors})
    if wrong or (missing and missing == len(expected)):
        detail = "; ".join(wrong[:3]) + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else "")
        raise MismatchedWeightsError(
            f"{path} does not match {path.parent / 'config.json'} for the {what}: "
            + (detail or f"none of its {len(tensors)} tensors has a name the config expects"),
            f"the weights and config.json come from different models; put the {what}'s config.json and weights "
            "from the same download into this folder")


def load_encoder_bin_safely(path: Path) -> dict:
    """Arc2Face ships ``encoder/pytorch_model.bin`` (a pickle). Load it with torch's weights-only
    unpickler, which refuses anything but tensors and plain containers: no code from the file runs."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler raises UnpicklingError / RuntimeError
        raise CorruptWeightsError(
            f"{path} could not be read with the weights-only loader ({type(exc).__name__}: {str(exc)[:200]})",
            "download encoder/pytorch_model.bin again, or convert a trusted copy to model.safetensors "
            "with engine.prior.weights.convert_encoder_to_safetensors") from None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CorruptWeightsError(f"{path} does not hold a state dict of tensors",
                                  "download encoder/pytorch_model.bin again")
    return state


def convert_encoder_to_safetensors(encoder_dir: Path | str) -> Path:
    """Write ``model.safetensors`` next to Arc2Face's ``pytorch_model.bin`` (weights-only load, atomic write)."""
    from safetensors.torch import save_file

    encoder_dir = Path(encoder_dir)
    state = load_encoder_bin_safely(encoder_dir / "pytorch_model.bin")
    state = {k: v.contiguous() for k, v in state.items()}
    return write_to_path_atomic(encoder_dir / "model.safetensors",
                                lambda path: save_file(state, str(path), metadata={"format": "pt"}))


def download_prior_weights(root: Path | str, *, allow_download: bool, components=("sd15", "arc2face")) -> Path:
    """Download the prior's files from Hugging Face at pinned revisions into ``root``.

    Only runs when ``allow_download`` is true (the user agreed: research-only licences, gigabytes).
    Only the listed file patterns are fetched; nothing is executed from the repositories.
    """
    if not allow_download:
        raise MissingWeightsError("downloading the prior's weights was not allowed", DOWNLOAD_HINT)
    from huggingface_hub import HfApi, snapshot_download

    root = Path(root).expanduser()
    for key in components:
        source = HF_SOURCES[key]
        target = root / key
        record = target / "download.json"
        revision = source["revision"]
        if revision is None and record.is_file():
            revision = read_json(record).get("revision")
        if revision is None:
            revision = HfApi().model_info(source["repo_id"]).sha  # pin what "main" is now, and record it
        snapshot_download(source["repo_id"], revision=revision, allow_patterns=source["allow_patterns"],
                          local_dir=target)
        write_text_atomic(record, json.dumps({"repo_id": source["repo_id"], "revision": revision}, indent=2))
    return root
