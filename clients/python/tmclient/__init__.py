"""Python client for the knowledge-base task manager."""

from tmclient.aio import AsyncClient, Progress
from tmclient.errors import ApiError, SubmitRefused, TaskManagerError, WaitTimeout
from tmclient.models import (
    BatchItemResult,
    BatchResult,
    SearchAnswer,
    SearchHit,
    Task,
    TaskCreated,
    TaskEvent,
    TaskPage,
    UploadCreated,
)
from tmclient.retrying import RetryPolicy
from tmclient.sync import Client

__all__ = [
    "ApiError", "AsyncClient", "BatchItemResult", "BatchResult", "Client", "Progress", "RetryPolicy",
    "SearchAnswer", "SearchHit", "SubmitRefused", "Task", "TaskCreated", "TaskEvent", "TaskManagerError",
    "TaskPage", "UploadCreated", "WaitTimeout",
]


def __getattr__(name: str) -> object:
    if name == "AmqpSubmitter":  # needs the `amqp` extra
        from tmclient.amqp import AmqpSubmitter
        return AmqpSubmitter
    raise AttributeError(name)
