"""The async client: every REST call of the task manager, the event stream,
and `wait()` that follows a task to its end."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp

from tmclient.errors import ApiError, WaitTimeout
from tmclient.models import (
    TERMINAL,
    BatchResult,
    Model,
    SearchAnswer,
    Task,
    TaskCreated,
    TaskEvent,
    TaskPage,
    UploadCreated,
)
from tmclient.retrying import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from tmclient.sse import read_events

M = TypeVar("M", bound=Model)
_UNSET: Any = object()
# Events that move a task's progress (their data carries `progress`).
_PROGRESS_KINDS = frozenset({"started", "progress", "stage_completed"})


@dataclass(frozen=True)
class Progress:
    """What `wait()` reports as a task moves."""

    task_id: str
    status: str
    progress: int
    stage: str | None = None
    message: str | None = None


ProgressCallback = Callable[[Progress], Any]


# While following the stream, the task's status is also read this often (a safety net).
STREAM_CHECK_SECONDS = 5.0


class AsyncClient:
    """`async with AsyncClient(url, api_key=...) as tm: await tm.submit("echo", {...})`.

    `base_url` defaults to $API_URL (else http://127.0.0.1:8084) and `api_key`
    to $TASKMGR_API_KEY."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None,
                 retry: RetryPolicy | None = None, timeout: float = 30.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = (base_url or os.environ.get("API_URL") or "http://127.0.0.1:8084").rstrip("/")
        key = api_key if api_key is not None else os.environ.get("TASKMGR_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.retry_policy = retry or RetryPolicy()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    # --- tasks ------------------------------------------------------------------------------

    async def submit(self, task_type: str, payload: Mapping[str, Any] | None = None, *, kb_id: str | None = None,
                     priority: str | None = None, retry_limit: int | None = None,
                     timeout_seconds: float | None = None, callback_url: str | None = None,
                     idempotency_key: str | None = None, **fields: Any) -> TaskCreated:
        """Submit one task; `fields` carries request fields this client does not name yet."""
        body = _task_body(task_type, payload, kb_id=kb_id, priority=priority, retry_limit=retry_limit,
                          timeout_seconds=timeout_seconds, callback_url=callback_url, **fields)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._call("POST", "/api/v1/tasks", TaskCreated, json=body, headers=headers)

    async def batch(self, tasks: list[Mapping[str, Any]], *, atomic: bool = False,
                    idempotency_key: str | None = None) -> BatchResult:
        """Submit many task bodies at once. 201/207/422 all answer a BatchResult (per item)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._call("POST", "/api/v1/tasks/batch", BatchResult, ok=(201, 207, 422),
                                json={"tasks": list(tasks), "atomic": atomic}, headers=headers)

    async def get(self, task_id: str) -> Task:
        return await self._call("GET", f"/api/v1/tasks/{task_id}", Task)

    async def list(self, *, kb_id: str | None = None, status: str | list[str] | None = None,
                   task_type: str | None = None, workflow_id: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> TaskPage:
        params = _params(kb_id=kb_id, task_type=task_type, workflow_id=workflow_id, limit=limit, cursor=cursor,
                         status=",".join(status) if isinstance(status, list) else status)
        return await self._call("GET", "/api/v1/tasks", TaskPage, params=params)

    async def iter_tasks(self, **filters: Any) -> AsyncIterator[Task]:
        """Every task matching the filters of `list()`, page after page."""
        cursor = None
        while True:
            page = await self.list(cursor=cursor, **filters)
            for task in page.items:
                yield task
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def cancel(self, task_id: str) -> Task:
        return await self._call("DELETE", f"/api/v1/tasks/{task_id}", Task, ok=(200, 202))

    async def retry(self, task_id: str) -> Task:
        """Run a failed or cancelled task again (a new run, the same id)."""
        return await self._call("POST", f"/api/v1/tasks/{task_id}/retry", Task, ok=(200, 202))

    # --- files and knowledge bases ----------------------------------------------------------------

    async def upload(self, kb_id: str, file: str | Path | bytes, *, filename: str | None = None) -> UploadCreated:
        """Upload a file (a path or bytes) for tasks of `kb_id`; use `.file_ref` in their payload."""
        if isinstance(file, bytes):
            content, name = file, filename or "upload.bin"
        else:
            path = Path(file)
            content, name = await asyncio.to_thread(path.read_bytes), filename or path.name

        def form() -> aiohttp.FormData:  # rebuilt per attempt: a FormData is consumed when sent
            data = aiohttp.FormData()
            data.add_field("file", content, filename=name, content_type="application/octet-stream")
            return data

        return await self._call("POST", "/api/v1/uploads", UploadCreated, ok=(201,), params={"kb_id": kb_id},
                                data=form)

    async def search(self, kb_id: str, query: str, *, top_k: int = 5, mode: str = "hybrid",
                     document_ids: list[str] | None = None) -> SearchAnswer:
        body: dict[str, Any] = {"query": query, "top_k": top_k, "mode": mode}
        if document_ids is not None:
            body["document_ids"] = document_ids
        return await self._call("POST", f"/api/v1/kbs/{kb_id}/search", SearchAnswer, json=body)

    # --- the event stream --------------------------------------------------------------------

    async def events(self, *, kb_id: str | None = None, task_id: str | None = None, task_type: str | None = None,
                     last_event_id: str | None = None, reconnect: bool = True) -> AsyncIterator[TaskEvent]:
        """Task events as they happen. Reconnects after a dropped connection (or a
        `stream.closed`) from the last event received, so nothing in the server's
        window is missed; `reconnect=False` ends with the connection."""
        last = last_event_id
        attempt = 0
        while True:
            params = _params(kb_id=kb_id, task_id=task_id, task_type=task_type)
            headers = {**self._headers, "Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = last
            try:
                async with self._http().get(self.base_url + "/api/v1/events", params=params, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as response:
                    if response.status != 200:
                        error = await _error(response)
                        if response.status not in RETRYABLE_STATUSES or attempt >= self.retry_policy.max_retries:
                            raise error
                        attempt += 1
                        await asyncio.sleep(self.retry_policy.delay(attempt, error.retry_after))
                        continue
                    attempt = 0
                    async for event in read_events(response):
                        if event.id:
                            last = event.id
                        yield event
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                if not reconnect:
                    raise
                attempt += 1
                if attempt > self.retry_policy.max_retries:
                    raise
                await asyncio.sleep(self.retry_policy.delay(attempt, None))
                continue
            if not reconnect:
                return

    async def wait(self, task_id: str, *, timeout: float | None = None, on_progress: ProgressCallback | None = None,
                   poll_interval: float = 1.0, use_events: bool = True) -> Task:
        """The task once it is completed, failed or cancelled. Follows the event
        stream (from the start of the server's window, so an end that happened
        before the stream opened is still seen) and falls back to polling when
        the stream is unavailable. `on_progress` gets a `Progress` as it moves."""
        try:
            async with asyncio.timeout(timeout):
                task = await self.get(task_id)
                _report(on_progress, task)
                if task.finished:
                    return task
                if use_events:
                    try:
                        return await self._wait_on_events(task, on_progress)
                    except (ApiError, aiohttp.ClientError):
                        pass  # no stream here (older api, proxy): poll instead
                return await self._poll(task_id, on_progress, poll_interval)
        except TimeoutError:
            raise WaitTimeout(f"task {task_id} did not finish within {timeout}s") from None

    async def _wait_on_events(self, task: Task, on_progress: ProgressCallback | None) -> Task:
        """The stream, with a slow status check beside it: an end the stream does not
        deliver (a reconnect gap, a proxy that buffers) is still seen within
        `STREAM_CHECK_SECONDS`."""
        follow = asyncio.ensure_future(self._follow_events(task, on_progress))
        check = asyncio.ensure_future(self._poll(task.task_id, None, STREAM_CHECK_SECONDS))
        try:
            done, _ = await asyncio.wait({follow, check}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (follow, check):
                pending.cancel()
            await asyncio.gather(follow, check, return_exceptions=True)
        final = done.pop().result()
        _report(on_progress, final)
        return final

    async def _follow_events(self, task: Task, on_progress: ProgressCallback | None) -> Task:
        async for event in self.events(task_id=task.task_id, last_event_id="0"):
            data = event.data
            if event.event == "stream.reset":
                continue
            if data.get("run", 1) < task.run:
                continue  # an earlier run of a retried task
            if event.kind in _PROGRESS_KINDS and on_progress is not None:
                on_progress(Progress(task.task_id, "processing", int(data.get("progress", 0)), data.get("stage"),
                                     data.get("message")))
            elif event.kind in TERMINAL:
                final = await self.get(task.task_id)
                if final.finished:
                    return final
        raise ApiError(0, "stream_ended", "the event stream ended")  # pragma: no cover - events() reconnects

    async def _poll(self, task_id: str, on_progress: ProgressCallback | None, interval: float) -> Task:
        while True:
            await asyncio.sleep(interval)
            task = await self.get(task_id)
            _report(on_progress, task)
            if task.finished:
                return task

    async def raw(self, method: str, path: str, **kwargs: Any) -> Any:
        """Any other endpoint (e.g. `/api/v1/stats/workers`): its JSON, with the same retries."""
        return await self._call(method, path, None, **kwargs)

    # --- plumbing ------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def _call(self, method: str, path: str, model: type[M] | None, *, ok: tuple[int, ...] = (200, 201),
                    data: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        headers = {**self._headers, **(kwargs.pop("headers", None) or {})}
        attempt = 0
        while True:
            async with self._http().request(method, self.base_url + path, headers=headers,
                                            data=data() if data else None, **kwargs) as response:
                if response.status in ok:
                    body = await response.json(content_type=None)
                    return body if model is None else model.model_validate(body)
                error = await _error(response)
            attempt += 1
            if error.status not in RETRYABLE_STATUSES or attempt > self.retry_policy.max_retries:
                raise error
            await asyncio.sleep(self.retry_policy.delay(attempt, error.retry_after))


def _task_body(task_type: str, payload: Mapping[str, Any] | None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"task_type": task_type}
    if payload is not None:
        body["payload"] = dict(payload)
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def _params(**values: Any) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def _report(on_progress: ProgressCallback | None, task: Task) -> None:
    if on_progress is not None:
        on_progress(Progress(task.task_id, task.status, task.progress, task.stage))


async def _error(response: aiohttp.ClientResponse) -> ApiError:
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    try:
        body = await response.json(content_type=None)
        error = body["error"]
        return ApiError(response.status, error["code"], error["message"], error.get("details"), retry_after)
    except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
        text = (await response.text())[:500]
        return ApiError(response.status, "http_error", text or response.reason or "", None, retry_after)
