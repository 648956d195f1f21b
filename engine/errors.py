"""The engine's one exception base: a message that says what is wrong, plus a machine code and a hint.

Stages derive their own classes from :class:`EngineError` so callers (the CLI, the worker, the
add-on) can report ``code``, ``message`` and ``hint`` the same way everywhere.
"""

from __future__ import annotations


class EngineError(Exception):
    """An expected failure with a clear cause: bad input, a missing model, an impossible request."""

    code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}


# Exit statuses of the engine's commands, one per kind of failure (docs/guarantees.md):
EXIT_OK = 0
EXIT_NO_RESULT = 1  # the command ran but could not make its result (it says why)
EXIT_BAD_INPUT = 2  # a bad option value or input file (named in the message); usage errors too
EXIT_OUTPUT_REFUSED = 3  # the output folder is a file, not writable, or holds what the engine did not write
EXIT_DEVICE = 4  # the requested device is not available in this Python
EXIT_BUSY = 5  # another process is running that job (or batch) now: try again later
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); commands stopped by SIGTERM exit 128 + 15 = 143

_OUTPUT_CODES = {"out_not_a_folder", "out_not_writable", "foreign_folder", "foreign_entries", "not_owned",
                 "lock_unavailable", "job_folder_other_job"}
_DEVICE_CODES = {"device_unavailable", "no_cuda"}
_BUSY_CODES = {"job_busy", "batch_busy"}


def exit_code_for(exc: BaseException, default: int = EXIT_BAD_INPUT) -> int:
    """The exit status for an error: output-folder refusals, device problems, a job or batch that
    another process runs, everything else (``default``: bad input before work starts, or
    :data:`EXIT_NO_RESULT` for a failure while a job runs)."""
    code = getattr(exc, "code", None)
    if code in _OUTPUT_CODES:
        return EXIT_OUTPUT_REFUSED
    if code in _DEVICE_CODES:
        return EXIT_DEVICE
    if code in _BUSY_CODES:
        return EXIT_BUSY
    return default


def exit_code_for_signal(signum: int) -> int:
    """128 + the signal's number, as shells report a process a signal stopped (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)
