"""Checkpoints of a running job: ``JOB_DIR/checkpoints/ckpt-<step>.pt`` plus ``latest.json``.

A checkpoint is one ``torch.save`` of a dict (stage name, global step, every module's and
optimiser's state, the torch RNG state, the job's resolved settings). It is written to a
temporary name and renamed; ``latest.json`` (also atomic) names the newest one, so a crash at
any moment leaves the previous checkpoint usable. Only the newest two are kept. Each file is
recorded in the job folder's manifest (engine/owned.py) before its rename, and pruning deletes
only recorded, unchanged ``ckpt-*.pt``: a file of the user's that matches the name stays.

Per-step randomness comes from (seed, stage, step) generators, not from a global stream, so a
resumed run draws exactly what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from ..errors import EngineError
from ..owned import prune_owned, write_owned_file
from .job_folder import CHECKPOINT_NAME as _NAME
from .job_folder import CHECKPOINTS as FOLDER
from .job_folder import LATEST

KEEP = 2
FORMAT = 1


class CheckpointError(EngineError):
    code = "checkpoint_corrupt"


def save_checkpoint(job_dir: Path, step: int, state: dict) -> Path:
    folder = Path(job_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{step:07d}.pt"
    payload = {"format": FORMAT, "step": step, **state}
    write_owned_file(path, lambda tmp: torch.save(payload, tmp))
    latest = json.dumps({"format": FORMAT, "file": path.name, "step": step}) + "\n"
    write_owned_file(folder / LATEST, lambda tmp: tmp.write_text(latest, encoding="utf-8"))
    # The newest are this run's latest steps. Checkpoints of a later step come from an earlier run
    # that went further (the job was started over): they go first, never the one just written.
    prune_owned(folder, _NAME, KEEP, newest_last=lambda p: (_step(p) <= step, _step(p)))
    return path


def _step(path: Path) -> int:
    return int(_NAME.fullmatch(path.name).group(1))


def load_latest(job_dir: Path) -> dict | None:
    """The newest checkpoint's dict, or None when the job has none yet."""
    folder = Path(job_dir) / FOLDER
    latest = folder / LATEST
    if not latest.is_file():
        return None
    try:
        info = json.loads(latest.read_text(encoding="utf-8"))
        path = folder / str(info["file"])
        if not _NAME.fullmatch(path.name):
            raise ValueError(f"unexpected checkpoint name {path.name!r}")
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # garbage bytes
        raise CheckpointError(f"the checkpoint named by {latest} cannot be read ({exc})",
                              hint="run the job again without --resume (it starts over)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this engine version",
                              hint="run the job again without --resume")
    return state
