"""Domain errors; each carries the HTTP status and machine code the API reports."""

from __future__ import annotations


class FarmError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidField(FarmError):
    """A request field the farm cannot accept; the message starts with the field's name."""

    code = "validation_error"


class NotFound(FarmError):
    status = 404
    code = "not_found"


class Unauthorized(FarmError):
    status = 401
    code = "unauthorized"


class InsufficientCredits(FarmError):
    status = 402
    code = "insufficient_credits"


class Conflict(FarmError):
    status = 409
    code = "conflict"


class RateLimited(FarmError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
