"""Errors of the prior stage: each says which file is wrong, what is wrong and what to do."""

from __future__ import annotations


class PriorError(Exception):
    """Base of the prior's errors. ``code`` is stable (protocol ``error`` messages), ``hint`` says what to do."""

    code = "prior_error"

    def __init__(self, message: str, hint: str = "", code: str | None = None):
        super().__init__(message if not hint else f"{message}\n  what to do: {hint}")
        self.message = message
        self.hint = hint
        if code:
            self.code = code


class MissingWeightsError(PriorError):
    code = "prior_weights_missing"


class CorruptWeightsError(PriorError):
    code = "prior_weights_corrupt"


class MismatchedWeightsError(PriorError):
    code = "prior_weights_mismatched"


class DatasetError(PriorError):
    code = "prior_dataset_invalid"
