"""The blocking client: the async client run on a private event loop thread,
so both behave the same (one implementation of retries, waits and streams)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, Self, TypeVar

from tmclient.aio import AsyncClient
from tmclient.models import (
    BatchResult,
    SearchAnswer,
    Task,
    TaskCreated,
    TaskEvent,
    TaskPage,
    UploadCreated,
)

T = TypeVar("T")


class Client:
    """`with Client(url, api_key=...) as tm: tm.wait(tm.submit("echo").task_id)`;
    the same arguments and methods as `AsyncClient`, blocking."""

    def __init__(self, base_url: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tmclient", daemon=True)
        self._thread.start()
        self._async = AsyncClient(base_url, **options)
        self.base_url = self._async.base_url

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def submit(self, task_type: str, payload: Any = None, **options: Any) -> TaskCreated:
        return self._run(self._async.submit(task_type, payload, **options))

    def batch(self, tasks: list[Any], **options: Any) -> BatchResult:
        return self._run(self._async.batch(tasks, **options))

    def get(self, task_id: str) -> Task:
        return self._run(self._async.get(task_id))

    def list(self, **filters: Any) -> TaskPage:
        return self._run(self._async.list(**filters))

    def iter_tasks(self, **filters: Any) -> Iterator[Task]:
        return self._iterate(self._async.iter_tasks(**filters))

    def cancel(self, task_id: str) -> Task:
        return self._run(self._async.cancel(task_id))

    def retry(self, task_id: str) -> Task:
        return self._run(self._async.retry(task_id))

    def upload(self, kb_id: str, file: Any, **options: Any) -> UploadCreated:
        return self._run(self._async.upload(kb_id, file, **options))

    def search(self, kb_id: str, query: str, **options: Any) -> SearchAnswer:
        return self._run(self._async.search(kb_id, query, **options))

    def wait(self, task_id: str, **options: Any) -> Task:
        return self._run(self._async.wait(task_id, **options))

    def events(self, **filters: Any) -> Iterator[TaskEvent]:
        return self._iterate(self._async.events(**filters))

    def _iterate(self, agen: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())
