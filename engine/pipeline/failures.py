"""Every way a job can fail, as one :class:`EngineError` with its own code and a hint that says what to do."""

from __future__ import annotations

import errno

from ..errors import EngineError

LOWER_MEMORY_HINT = ('lower one of these in job.json: "overrides": {"views_per_step": 1} (or '
                     '"render_resolution", "texture_views_per_step", "grid"), or turn on '
                     '"memory": {"attention": "sliced", "vae_tiling": true, "cpu_offload": true}')


class Cancelled(EngineError):
    code = "cancelled"

    def __init__(self, message: str = "the job was cancelled", checkpoint=None):
        super().__init__(message, hint="run it again with --resume to continue from the last checkpoint")
        self.checkpoint = checkpoint


def nan_loss(stage: str, step: int) -> EngineError:
    return EngineError(f"the {stage} loss became NaN or infinite at step {step}", code="nan_loss",
                       hint='lower the learning rate or guidance in "overrides" (e.g. "geometry_lr", '
                            '"geometry_guidance"), or try another seed; --resume restarts from the last '
                            "checkpoint, which holds finite values")


def classify(exc: BaseException, job_dir=None) -> EngineError:
    """The :class:`EngineError` to report for ``exc`` (EngineErrors pass through unchanged)."""
    if isinstance(exc, EngineError):
        return exc
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        return EngineError(f"the GPU ran out of memory ({text.splitlines()[0][:200]})", code="cuda_out_of_memory",
                           hint=LOWER_MEMORY_HINT)
    if isinstance(exc, MemoryError):
        return EngineError("the computer ran out of memory", code="out_of_memory", hint=LOWER_MEMORY_HINT)
    if isinstance(exc, OSError):
        where = exc.filename or job_dir or "the job folder"
        if exc.errno == errno.ENOSPC:
            return EngineError(f"the disk is full (writing {where})", code="disk_full",
                               hint="free some space on that disk (or move the job folder), then run again "
                                    "with --resume")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return EngineError(f"cannot write {where} ({exc.strerror})", code="job_dir_unwritable",
                               hint="choose a job folder you can write to")
    return EngineError(f"unexpected failure: {name}: {text[:300]}", code="internal_error",
                       hint="see the log on stderr (worker.log); please report it with the log")
