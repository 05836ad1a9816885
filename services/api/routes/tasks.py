"""`/api/v1/tasks`: submit, batch, read, list, cancel."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from services.api import task_repository as repo
from services.api.admission import Admitted
from services.api.http import json_response, read_json
from services.api.resources import ADMISSION, ENGINE, LIMITS, PUBLISHER, REGISTRY, SETTINGS
from services.api.task_repository import TaskFilter
from services.api.views import task_created_view, task_view
from shared.errors import FieldError, InvalidRequest, NotFound, TaskManagerError, Conflict
from shared.ids import is_task_id
from shared.messages import CancelTask, TaskCancelled, utcnow
from shared.status import TaskStatus
from shared.task_request import BatchItem, ValidTask, validate_task_request

routes = web.RouteTableDef()

IDEMPOTENCY_HEADER = "Idempotency-Key"
CANCEL_WAIT_SECONDS = 1.0


@routes.post("/api/v1/tasks")
async def submit_task(request: web.Request) -> web.Response:
    app = request.app
    valid = validate_task_request(await read_json(request), app[REGISTRY], app[LIMITS])
    key = _idempotency_key(request)
    [result] = await app[ADMISSION].admit([(valid, key)], via="rest")
    if isinstance(result, TaskManagerError):
        raise result
    task_id = str(result.task["id"])
    return json_response(
        task_created_view(result.task),
        status=201 if result.created else 200,
        headers={"Location": f"/api/v1/tasks/{task_id}"},
    )


@routes.post("/api/v1/tasks/batch")
async def submit_batch(request: web.Request) -> web.Response:
    app = request.app
    body = await read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("tasks"), list):
        raise InvalidRequest("send {\"tasks\": [...], \"atomic\": false}", [FieldError("tasks", "must be an array")])
    unknown = set(body) - {"tasks", "atomic"}
    if unknown:
        raise InvalidRequest("unknown fields", [FieldError(k, "unknown field") for k in sorted(unknown)])
    items, atomic = body["tasks"], body.get("atomic", False)
    if not isinstance(atomic, bool):
        raise InvalidRequest("atomic must be a boolean", [FieldError("atomic", "must be true or false")])
    limit = app[SETTINGS].api.max_batch_size
    if not items or len(items) > limit:
        raise InvalidRequest(
            f"a batch holds 1 to {limit} tasks", [FieldError("tasks", f"holds {len(items)} items; allowed 1..{limit}")]
        )
    header_key = _idempotency_key(request)

    validated: list[ValidTask | InvalidRequest] = []
    for item in items:
        try:
            validated.append(validate_task_request(item, app[REGISTRY], app[LIMITS], model=BatchItem))
        except InvalidRequest as exc:
            validated.append(exc)
    invalid = [i for i, v in enumerate(validated) if isinstance(v, InvalidRequest)]
    if invalid and (atomic or len(invalid) == len(items)):
        results = [_item_result(i, v) for i, v in enumerate(validated)]
        message = "no task was created: " + ("atomic batch has invalid items" if atomic else "every item is invalid")
        return json_response({"created": 0, "failed": len(items), "message": message, "results": results}, 422)

    to_admit = [(i, v) for i, v in enumerate(validated) if isinstance(v, ValidTask)]
    admitted = await app[ADMISSION].admit(
        [(v, _item_key(v, header_key, i)) for i, v in to_admit], via="batch"
    )
    outcomes: list[Any] = list(validated)
    for (i, _), result in zip(to_admit, admitted, strict=True):
        outcomes[i] = result
    results = [_item_result(i, v) for i, v in enumerate(outcomes)]
    ok = sum(1 for r in results if r["ok"])
    status = 201 if ok == len(results) else (207 if ok else 503)
    return json_response({"created": ok, "failed": len(results) - ok, "results": results}, status)


@routes.get("/api/v1/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    row = await _find(request, task_id)
    return json_response(task_view(row))


@routes.get("/api/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    params = request.rel_url.query
    allowed = {"kb_id", "status", "task_type", "limit", "cursor"}
    errors = [FieldError(k, "unknown query parameter") for k in params if k not in allowed]
    statuses = tuple(s for s in params.get("status", "").split(",") if s)
    for status in statuses:
        if status not in TaskStatus.__members__.values():
            errors.append(FieldError("status", f"unknown status {status!r}; use {', '.join(TaskStatus)}"))
    max_page = request.app[SETTINGS].api.max_page_size
    limit = 50
    if "limit" in params:
        try:
            limit = int(params["limit"])
        except ValueError:
            limit = -1
        if not 1 <= limit <= max_page:
            errors.append(FieldError("limit", f"must be an integer from 1 to {max_page}"))
    cursor = params.get("cursor")
    if cursor is not None and not is_task_id(cursor):
        errors.append(FieldError("cursor", "is not a cursor returned by this endpoint"))
    if errors:
        raise InvalidRequest("invalid query", errors)

    task_filter = TaskFilter(kb_id=params.get("kb_id"), statuses=statuses, task_type=params.get("task_type"))
    async with request.app[ENGINE].connect() as conn:
        rows = await repo.list_tasks(conn, task_filter, limit=limit + 1, before_id=cursor)
    page, more = rows[:limit], len(rows) > limit
    return json_response(
        {"items": [task_view(r) for r in page], "next_cursor": str(page[-1]["id"]) if more else None}
    )


@routes.delete("/api/v1/tasks/{task_id}")
async def cancel_task(request: web.Request) -> web.Response:
    """A queued task is never run; a running one is stopped by its worker.
    Answers 200 with the final state when it lands within a second, else 202."""
    task_id = request.match_info["task_id"]
    row = await _find(request, task_id)
    if TaskStatus(row["status"]).is_terminal:
        raise Conflict(f"task {task_id} is already {row['status']}; only queued or running tasks can be cancelled",
                       status=row["status"])
    publisher = request.app[PUBLISHER]
    # The event makes the cancel durable (the dispatcher records it: first terminal
    # state wins); the broadcast stops a worker already running it.
    await publisher.event(
        TaskCancelled(
            task_id=task_id, run=row["run"], task_type=row["task_type"], kb_id=row["kb_id"],
            stage=row["stage"] or "default", attempt=max(row["attempts"], 1), finished_at=utcnow(),
        )
    )
    await publisher.control(CancelTask(task_id=task_id))
    deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
        row = await _find(request, task_id)
        if TaskStatus(row["status"]).is_terminal:
            return json_response(task_view(row))
    return json_response({**task_view(row), "cancel_requested": True}, 202)


async def _find(request: web.Request, task_id: str) -> repo.TaskRow:
    if not is_task_id(task_id):
        raise NotFound(f"task {task_id!r} not found")
    async with request.app[ENGINE].connect() as conn:
        row = await repo.get_task(conn, task_id)
    if row is None:
        raise NotFound(f"task {task_id!r} not found")
    return row


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255:
        raise InvalidRequest("invalid Idempotency-Key", [FieldError(IDEMPOTENCY_HEADER, "must be 1-255 characters")])
    return key


def _item_key(valid: ValidTask, header_key: str | None, index: int) -> str | None:
    own = getattr(valid.request, "idempotency_key", None)
    if own:
        return own
    return f"{header_key}#{index}" if header_key else None


def _item_result(index: int, outcome: Any) -> dict[str, Any]:
    if isinstance(outcome, Admitted):
        return {"index": index, "ok": True, "created": outcome.created, **task_created_view(outcome.task)}
    if isinstance(outcome, ValidTask):
        return {"index": index, "ok": False, "error": {"code": "not_attempted",
                                                      "message": "not created: the atomic batch was refused"}}
    assert isinstance(outcome, TaskManagerError)
    error: dict[str, Any] = {"code": outcome.code, "message": outcome.message}
    if isinstance(outcome, InvalidRequest) and outcome.errors:
        error["details"] = outcome.errors
    return {"index": index, "ok": False, "error": error}
