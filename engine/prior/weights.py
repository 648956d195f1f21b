"""Finding and checking the prior's weight files (downloads belong to ``fetch-models``).

Everything here is about files, before any model is built: the component folders as the models
resolver finds them (``engine.models``: one catalogue, one rule for every stage), a cheap
structural check of every safetensors file and config (so a truncated download fails with the
file's name, not deep inside a loader), and the safe conversion of Arc2Face's
``encoder/pytorch_model.bin`` (weights-only unpickler, never plain pickle). Downloads are
``fetch-models``'s alone (``engine.model_store``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..atomic import write_to_path_atomic
from ..models import (ARC2FACE_REPO, SD15_REPO, FileProblem, missing_files, read_json_object, read_safetensors_header,
                      resolve, spec)
from .errors import CorruptWeightsError, MismatchedWeightsError, MissingWeightsError

log = logging.getLogger(__name__)

DOWNLOAD_HINT = ("fill the models folder with `python -m engine fetch-models --yes` (or download "
                 f"{SD15_REPO} and {ARC2FACE_REPO} from Hugging Face into ROOT/sd15 and ROOT/arc2face), then run "
                 "`python -m engine doctor --models ROOT`; docs/models.md lists every file")

# Component -> (catalogue model, subfolder in it).
COMPONENTS = {
    "vae": ("sd15", "vae"),
    "tokenizer": ("sd15", "tokenizer"),
    "scheduler": ("sd15", "scheduler"),
    "unet": ("arc2face", "arc2face"),
    "text_encoder": ("arc2face", "encoder"),
}


def resolve_components(root: Path | str) -> dict[str, Path]:
    """Folders of each component, found by the models resolver (``engine.models.resolve``: the
    models root first, then the default root and the Hugging Face cache), plus ``loras`` under
    the models root. Raises :class:`MissingWeightsError` naming every missing file."""
    root = Path(root).expanduser()
    folders, missing, searched = {}, [], []
    for key in ("sd15", "arc2face"):
        found = resolve(key, root)
        if found.folder is None:
            missing += [str(found.primary / name) for name in missing_files(spec(key), found.primary)]
            searched += [str(p) for p in found.searched[1:]]
        folders[key] = found.folder
    if missing:
        where = f"\n  (also looked in: {', '.join(searched)})" if searched else ""
        if not root.is_dir():
            raise MissingWeightsError(f"models folder {root} does not exist" + where, DOWNLOAD_HINT)
        raise MissingWeightsError("the prior's weights are incomplete; missing:\n    " + "\n    ".join(missing) + where,
                                  DOWNLOAD_HINT)
    paths = {name: folders[key] / sub for name, (key, sub) in COMPONENTS.items()}
    paths["loras"] = root / "loras"
    return paths


check_files = resolve_components  # the earlier name (engine.model_digests lists the files the same way)


def read_json(path: Path) -> dict:
    """A config file as a dict; anything else (unreadable, or a JSON string that diffusers would
    take for a Hub repository name) is refused with the file's name."""
    try:
        return read_json_object(path)
    except FileProblem as exc:
        raise CorruptWeightsError(str(exc), f"download {Path(path).name} again (it is probably truncated or "
                                            "overwritten)") from None


def check_safetensors(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Check a safetensors file's structure without loading it; return ``name -> (dtype, shape)``
    (see :func:`engine.models.read_safetensors_header`)."""
    try:
        return read_safetensors_header(path)
    except FileProblem as exc:
        raise CorruptWeightsError(str(exc), f"delete {Path(path).name} and download it again (the file is "
                                            "truncated or not a safetensors file)") from None


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
