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
