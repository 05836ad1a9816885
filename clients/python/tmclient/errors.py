"""Errors the client raises: the api's error envelope, kept whole."""

from __future__ import annotations

from typing import Any


class TaskManagerError(Exception):
    """Base of everything this package raises on purpose."""


class ApiError(TaskManagerError):
    """The api answered with an error (`{"error": {"code", "message", "details"}}`)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.retry_after = retry_after


class WaitTimeout(TaskManagerError):
    """`wait()` gave up before the task finished."""


class SubmitRefused(TaskManagerError):
    """`tm.submit` answered `ok: false`."""

    def __init__(self, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or []
