"""Checkpoints of a running job: ``JOB_DIR/checkpoints/ckpt-<step>.pt`` plus ``latest.json``.

A checkpoint is one ``torch.save`` of a dict (stage name, global step, every module's and
optimiser's state, the torch RNG state, the job's resolved settings). It is written to a
temporary name and renamed; ``latest.json`` (also atomic) names the newest one, so a crash at
any moment leaves the previous checkpoint usable. Only the newest two are kept. Each file is
recorded in the job folder's manifest (engine/owned.py) before its rename, and pruning deletes
only recorded, unchanged ``ckpt-*.pt``: a file of the user's that matches the name stays.

Per-step randomness comes from (seed, stage, step) generators, not from a global stream, so a
resumed run draws exactly what the uninterrupted run would have drawn.

A copy of a job folder that did not keep file times (``cp -r``, ``scp -r``, an object store)
leaves checkpoints the manifest no longer recognises; :func:`adopt` (``--adopt-checkpoints``)
loads and checks each one, then records it again.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from .. import owned
from ..errors import EngineError
from ..owned import prune_owned, write_owned_file
from .job_folder import CHECKPOINT_NAME as _NAME
from .job_folder import CHECKPOINTS as FOLDER
from .job_folder import LATEST, foreign_checkpoints

START_OVER = "start the job over instead (`generate ... --new`; the add-on's worker: without --resume)"

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
        raise CheckpointError(f"the checkpoint named by {latest} cannot be read ({exc})", hint=START_OVER) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this engine version", hint=START_OVER)
    return state


def adopt(job_dir: Path, spec) -> list[Path]:
    """Take a copied job folder's files back as the engine's (the user asked: ``--adopt-checkpoints``).

    Every checkpoint file the manifest does not recognise is loaded (``weights_only``: tensors and
    plain data, never code) and checked: this engine's format, the step its name says, a stage,
    and settings that ``spec`` (job.json) can continue (memory fallbacks aside, as a resume
    checks); ``latest.json`` must name one of the checkpoints and its step. Only when all pass are
    they recorded, together with the folder's other engine files whose size is as recorded and
    only their time changed (``owned.restamp``: job.json, previews, identity/, result/). One that
    fails raises :class:`CheckpointError` naming it, and nothing is recorded. Returns the files
    taken back. The caller holds the job's lock.
    """
    from .memory_fallback import resumed_plan

    job_dir = Path(job_dir)
    folder = job_dir / FOLDER
    foreign = foreign_checkpoints(job_dir)
    hint = f"move {folder} away to start the job over, or copy the folder again (`cp -a` or `rsync -a` keep file times)"
    steps = {}
    for path in (p for p in foreign if p.name != LATEST):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise CheckpointError(f"{path} cannot be adopted: it does not load as a checkpoint ({exc}); nothing was "
                                  "changed", hint=hint) from None
        problem = None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            problem = "it is not a checkpoint of this engine version"
        elif state.get("step") != _step(path):
            problem = f"it holds step {state.get('step')!r}, not the step {_step(path)} its name says"
        elif state.get("stage") not in ("geometry", "texture"):
            problem = f"its stage {state.get('stage')!r} is not one this engine writes"
        if problem:
            raise CheckpointError(f"{path} cannot be adopted: {problem}; nothing was changed", hint=hint)
        try:
            resumed_plan(spec.settings, state.get("settings"), state.get("memory_fallback"))
        except EngineError as exc:
            raise CheckpointError(f"{path} cannot be adopted: {exc.message}; nothing was changed",
                                  code=exc.code, hint=hint) from None
        steps[path.name] = state["step"]
    latest = folder / LATEST
    if latest in foreign:
        try:
            info = json.loads(latest.read_text(encoding="utf-8"))
            named, step = str(info["file"]), int(info["step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{latest} cannot be adopted: it is not the engine's latest.json ({exc}); nothing "
                                  "was changed", hint=hint) from None
        known = steps.get(named, _step(folder / named) if _NAME.fullmatch(named) and owned.is_own(folder / named)
                          else None)
        if info.get("format") != FORMAT or known is None or known != step:
            raise CheckpointError(f"{latest} cannot be adopted: it names {named!r} at step {step}, which is not one of "
                                  "the folder's checkpoints; nothing was changed", hint=hint)
    for path in foreign:
        owned.record(path)
    return sorted(foreign + owned.restamp(job_dir, skip=lambda p: p.parent == folder))
