"""Every way a job can fail, as one :class:`EngineError` with its own code and a hint that says what to do."""

from __future__ import annotations

import errno

from ..errors import EngineError

# What a user can still do once the job's own fallbacks (docs/pipeline.md, "GPU memory") are spent
# or could not act: first what the add-on offers, then job.json's fields.
LOWER_MEMORY_HINT = ("close other programs that use the GPU (Blender's viewport and Cycles use it too), choose "
                     "a smaller Quality preset (Preview: tet grid 96), or set Device to CPU in the add-on's "
                     'preferences (hours per head); in job.json: "overrides": {"grid": 96, "views_per_step": 1, '
                     '"texture_views_per_step": 1} or "memory": {"vae_checkpointing": true, "cpu_offload": true}')
# The texts a GPU allocation failure arrives as: the caching allocator's own error, and what cuBLAS,
# cuDNN and CUDA extensions (nvdiffrast) raise when their own allocation fails.
OUT_OF_MEMORY_TEXTS = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
                       "cudaErrorMemoryAllocation")


def is_gpu_out_of_memory(exc: BaseException) -> bool:
    """A GPU memory allocation failure (``torch.OutOfMemoryError`` or one of the library texts)."""
    text = str(exc)
    return type(exc).__name__ == "OutOfMemoryError" or any(marker in text for marker in OUT_OF_MEMORY_TEXTS)


class Cancelled(EngineError):
    code = "cancelled"

    def __init__(self, message: str = "the job was cancelled", checkpoint=None):
        super().__init__(message, hint="run it again with --resume to continue from the last checkpoint")
        self.checkpoint = checkpoint


def nan_loss(stage: str, step: int, *, fp16_on_cuda: bool = False) -> EngineError:
    hint = ('lower the learning rate or guidance in "overrides" (e.g. "geometry_lr", "geometry_guidance"), or try '
            "another seed; --resume restarts from the last checkpoint, which holds finite values")
    if fp16_on_cuda:  # GTX 16xx cards overflow in fp16: a precision problem, not a learning-rate one
        hint = ("the prior ran in fp16 on this GPU, which overflows on some cards (GTX 16xx): press Check GPU in the "
                "add-on's preferences (or run `python -m engine doctor --gpu`), which finds the precision that works "
                'and makes generation use it, or set "dtype": "fp32" in job.json; otherwise ' + hint)
    return EngineError(f"the {stage} loss became NaN or infinite at step {step}", code="nan_loss", hint=hint)


def classify(exc: BaseException, job_dir=None) -> EngineError:
    """The :class:`EngineError` to report for ``exc`` (EngineErrors pass through unchanged)."""
    if isinstance(exc, EngineError):
        return exc
    name = type(exc).__name__
    text = str(exc)
    if is_gpu_out_of_memory(exc):
        first = text.splitlines()[0][:200] if text else name
        return EngineError(f"the GPU ran out of memory ({first})", code="cuda_out_of_memory",
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
