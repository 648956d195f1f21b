"""Errors of the prior stage: each says which file is wrong, what is wrong and what to do."""

from __future__ import annotations

from ..errors import EngineError


class PriorError(EngineError):
    """Base of the prior's errors: ``code`` is stable (protocol ``error`` messages), ``hint`` says what to do."""

    code = "prior_error"

    def __init__(self, message: str, hint: str = "", code: str | None = None):
        super().__init__(message, code=code, hint=hint or None)


class MissingWeightsError(PriorError):
    code = "prior_weights_missing"


class CorruptWeightsError(PriorError):
    code = "prior_weights_corrupt"


class MismatchedWeightsError(PriorError):
    code = "prior_weights_mismatched"


class DatasetError(PriorError):
    code = "prior_dataset_invalid"
