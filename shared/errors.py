"""One error root for the project, sorted by what the caller should do.

`Retryable` and `Permanent` are what a task handler raises; the consume loop
turns them into a retry through `tm.retry` or a final failure. Errors at the
edges (`InvalidRequest`, `NotFound`, `Conflict`, `Unavailable`) map to HTTP
answers and to `tm.submit` replies.
"""

from __future__ import annotations

from typing import Any


class TaskManagerError(Exception):
    """Root of every error this project raises on purpose."""

    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


# --- what a task handler raises -------------------------------------------------


class TaskError(TaskManagerError):
    """A task attempt failed. Subclasses say whether trying again can help."""

    retryable = True


class Retryable(TaskError):
    """A transient failure (network, busy dependency): try again later."""

    code = "retryable_error"
    retryable = True


class Permanent(TaskError):
    """Trying again cannot help (bad payload, unsupported format)."""

    code = "permanent_error"
    retryable = False


class TaskTimeout(Retryable):
    code = "timeout"


# --- what the edges answer -------------------------------------------------------


class FieldError(dict[str, str]):
    """One invalid field: `{"field": "priority", "message": "..."}`."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field=field, message=message)


class InvalidRequest(TaskManagerError):
    """The caller sent something we cannot accept; the fields say what."""

    code = "validation_error"

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class NotFound(TaskManagerError):
    code = "not_found"


class Conflict(TaskManagerError):
    code = "conflict"


class Unauthorized(TaskManagerError):
    """No credentials, or credentials we do not accept (unknown, revoked, expired key)."""

    code = "unauthorized"

    def __init__(self, message: str, *, presented: bool = False) -> None:
        super().__init__(message)
        self.presented = presented  # a key was sent (RFC 6750: error="invalid_token")


class Forbidden(TaskManagerError):
    """A valid key without the scope (or knowledge base) this request needs."""

    code = "forbidden"

    def __init__(self, message: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RateLimited(TaskManagerError):
    """A token bucket is empty: the caller should wait `retry_after_seconds`."""

    code = "rate_limited"

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PayloadTooLarge(TaskManagerError):
    code = "payload_too_large"


class Unavailable(TaskManagerError):
    """A backing service (broker, database) cannot take the request now; retry later."""

    code = "unavailable"

    def __init__(self, message: str, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class InsufficientStorage(TaskManagerError):
    """The server's disk is too full to keep what was sent (507); retry later or elsewhere."""

    code = "insufficient_storage"


class InternalError(TaskManagerError):
    """One request met an unexpected error; answered alone (500) so it fails no other request."""

    code = "internal_error"


class PoisonMessage(TaskManagerError):
    """A message that cannot be parsed or is of an unknown version: dead-letter it."""

    code = "poison_message"
