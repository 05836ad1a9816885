"""`/api/v1/tasks`: submit, batch, read, list, cancel.

Who may call each route is decided by the access table (`access_policy.py`)
before a handler runs; handlers only narrow what the caller sees to its
knowledge bases (tenant scope in every query) and charge the per-kb bucket.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.api import task_repository as repo
from services.api.admission import Admitted
from services.api.auth import principal_of
from services.api.batch_envelope import parse_envelope
from services.api.http import json_response, read_json
from services.api.openapi import Operation, batch_request_model, documented, task_request_union
from services.api.rate_limit import RATE_LIMITS
from services.api.resources import ADMISSION, CHECKS, ENGINE, LIMITS, PUBLISHER, REGISTRY, SETTINGS
from services.api.schemas import (
    BatchItemResult,
    BatchResult,
    ErrorInfo,
    ErrorResponse,
    TaskCreated,
    TaskPage,
    TaskView,
)
from services.api.task_cancel import request_cancel
from services.api.task_repository import KbScope, TaskFilter
from services.api.views import redact_payload, task_created_view, task_view
from shared.errors import (
    Conflict,
    FieldError,
    Forbidden,
    InvalidRequest,
    NotFound,
    TaskManagerError,
)
from shared.ids import is_task_id
from shared.status import TaskStatus
from shared.task_request import (
    IDEMPOTENCY_KEY_PATTERN,
    KB_ID_PATTERN,
    BatchItem,
    ValidTask,
    field_errors,
    validate_task_request,
)

routes = web.RouteTableDef()

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Task ids are UUIDs; the pattern keeps /api/v1/tasks/batch from also matching {task_id}.
TASK_ID_SEGMENT = "[0-9A-Fa-f-]{32,36}"
CANCEL_WAIT_SECONDS = 1.0
_IDEMPOTENCY_PATTERN = IDEMPOTENCY_KEY_PATTERN
_IDEMPOTENCY_KEY = re.compile(_IDEMPOTENCY_PATTERN)
_IDEMPOTENCY_DOC = {IDEMPOTENCY_HEADER: ("The same key (per API key) returns the same task instead of a second one.",
                                         {"type": "string", "pattern": _IDEMPOTENCY_PATTERN})}
_STATUSES = "|".join(TaskStatus)


class TaskFilterFields(BaseModel):
    """The filters of `GET /api/v1/tasks` (also those of the bulk actions)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kb_id: str | None = Field(default=None, pattern=KB_ID_PATTERN)
    status: str | None = Field(default=None, pattern=rf"^({_STATUSES})(,({_STATUSES}))*$",
                               description="Comma-separated statuses.")
    task_type: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    workflow_id: uuid.UUID | None = Field(default=None, description="Only the tasks of this workflow.")

    def task_filter(self) -> TaskFilter:
        return TaskFilter(kb_id=self.kb_id, statuses=tuple(self.status.split(",")) if self.status else (),
                          task_type=self.task_type, workflow_id=str(self.workflow_id) if self.workflow_id else None)


class TaskListQuery(TaskFilterFields):
    """The query of `GET /api/v1/tasks`."""

    limit: int = Field(default=50, ge=1, description="Page size, at most MAX_PAGE_SIZE.")
    cursor: uuid.UUID | None = Field(default=None, description="`next_cursor` of the previous page.")


def _list_query_doc(ctx: Any) -> dict[str, Any]:
    schema = TaskListQuery.model_json_schema()
    schema["properties"]["limit"]["maximum"] = ctx.settings.api.max_page_size
    return schema


@routes.post("/api/v1/tasks")
@documented(Operation(
    summary="Submit a task",
    description="Answers once the task is recorded and the broker confirmed it. The `payload` schema depends on "
                "`task_type`.",
    body=task_request_union, headers=_IDEMPOTENCY_DOC, errors=(409, 503),
    responses={201: (TaskCreated, "Created."), 200: (TaskCreated, "An earlier task with this Idempotency-Key.")},
))
async def submit_task(request: web.Request) -> web.Response:
    valid = validate_task_request(await read_json(request), request.app[REGISTRY], request.app[LIMITS])
    result = await admit_one(request, valid)
    task_id = str(result.task["id"])
    return json_response(
        task_created_view(result.task, result.created),
        status=201 if result.created else 200,
        headers={"Location": f"/api/v1/tasks/{task_id}"},
    )


@routes.post("/api/v1/tasks/batch")
@documented(Operation(
    summary="Submit several tasks",
    description="Answers per item, in order: 201 all created, 207 some refused (each item says why), 422 none "
                "could be (or any is invalid with `atomic: true`: then nothing is created).",
    body=batch_request_model, headers=_IDEMPOTENCY_DOC, errors=(409, 503),
    responses={201: (BatchResult, "Every task created."), 207: (BatchResult, "Some items refused."),
               422: ((BatchResult, ErrorResponse), "No task created: per-item results, or the envelope is invalid.")},
))
async def submit_batch(request: web.Request) -> web.Response:
    app = request.app
    principal = principal_of(request)
    envelope = parse_envelope(await read_json(request), app[SETTINGS].api.max_batch_size)
    items, atomic = envelope.tasks, envelope.atomic
    header_key = idempotency_key(request)

    outcomes: list[Any] = []
    for item in items:
        try:
            outcomes.append(validate_task_request(item, app[REGISTRY], app[LIMITS], model=BatchItem))
        except InvalidRequest as exc:
            outcomes.append(exc)
    valid_at = [i for i, v in enumerate(outcomes) if isinstance(v, ValidTask)]
    checked = await app[CHECKS].check_many([outcomes[i] for i in valid_at], principal)
    for i, problem in zip(valid_at, checked, strict=True):
        if problem is not None:
            outcomes[i] = problem  # another tenant's kb, a refused callback URL: refused per item
    refused = [i for i, v in enumerate(outcomes) if not isinstance(v, ValidTask)]
    if refused and (atomic or len(refused) == len(items)):
        results = [_item_result(i, v) for i, v in enumerate(outcomes)]
        message = "no task was created: " + ("atomic batch has refused items" if atomic else "every item was refused")
        return json_response(BatchResult(created=0, failed=len(items), message=message, results=results), 422)

    to_admit = [(i, v) for i, v in enumerate(outcomes) if isinstance(v, ValidTask)]
    app[RATE_LIMITS].charge_kbs(dict(Counter(v.request.kb_id for _, v in to_admit if v.request.kb_id)))
    admitted = await app[ADMISSION].admit(
        [(v, _item_key(v, header_key, i)) for i, v in to_admit], via="batch", owner=principal.owner
    )
    for (i, _), result in zip(to_admit, admitted, strict=True):
        outcomes[i] = result
    results = [_item_result(i, v) for i, v in enumerate(outcomes)]
    ok = sum(1 for r in results if r.ok)
    if not ok:  # nothing could be admitted (broker or database): the client retries the whole batch
        raise next(r for r in admitted if isinstance(r, TaskManagerError))
    return json_response(BatchResult(created=ok, failed=len(results) - ok, results=results),
                         201 if ok == len(results) else 207)


@routes.get(f"/api/v1/tasks/{{task_id:{TASK_ID_SEGMENT}}}")
@documented(Operation(summary="Read a task", description="With its `payload` (values under secret-looking keys "
                      "masked); lists leave the payload out.", responses={200: (TaskView, "The task.")}))
async def get_task(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    row = await _find(request, task_id)
    async with request.app[ENGINE].connect() as conn:
        parents = await repo.parents_of(conn, [task_id])
    return json_response(task_view(row, parents.get(task_id, []), payload=redact_payload(row["payload"])))


@routes.get("/api/v1/tasks")
@documented(Operation(
    summary="List tasks, newest first",
    description="Only tasks of the knowledge bases the API key may use.",
    query=_list_query_doc, errors=(422,), responses={200: (TaskPage, "A page of tasks.")},
))
async def list_tasks(request: web.Request) -> web.Response:
    try:
        query = TaskListQuery.model_validate(dict(request.rel_url.query))
    except ValidationError as exc:
        errors = field_errors(exc)
        for error in errors:
            if error["message"] == "unknown field":
                error["message"] = "unknown query parameter"
        raise InvalidRequest("invalid query", errors) from None
    max_page = request.app[SETTINGS].api.max_page_size
    if query.limit > max_page:
        raise InvalidRequest("invalid query", [FieldError("limit", f"must be an integer from 1 to {max_page}")])

    scope = _scope(request)
    if query.kb_id is not None and scope is not None and query.kb_id not in scope:
        return json_response(TaskPage(items=[], next_cursor=None))  # another tenant's kb: nothing, not 403
    task_filter = query.task_filter()
    async with request.app[ENGINE].connect() as conn:
        rows = await repo.list_tasks(conn, task_filter, limit=query.limit + 1,
                                     before_id=str(query.cursor) if query.cursor else None, scope=scope)
        page, more = rows[:query.limit], len(rows) > query.limit
        parents = await repo.parents_of(conn, [str(r["id"]) for r in page])
    return json_response(TaskPage(items=[task_view(r, parents.get(str(r["id"]), [])) for r in page],
                                  next_cursor=str(page[-1]["id"]) if more else None))


@routes.delete(f"/api/v1/tasks/{{task_id:{TASK_ID_SEGMENT}}}")
@documented(Operation(
    summary="Cancel a task",
    description="A queued task never runs; a running one is stopped by its worker.",
    errors=(409, 503),
    responses={200: (TaskView, "Cancelled."), 202: (TaskView, "Cancel requested; not final within a second.")},
))
async def cancel_task(request: web.Request) -> web.Response:
    """A queued task is never run; a running one is stopped by its worker.
    Answers 200 with the final state when it lands within a second, else 202."""
    task_id = request.match_info["task_id"]
    row = await _find(request, task_id)
    if TaskStatus(row["status"]).is_terminal:
        raise Conflict(f"task {task_id} is already {row['status']}; only queued or running tasks can be cancelled",
                       status=row["status"])
    await request_cancel(request.app[PUBLISHER], row)
    deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
        row = await _find(request, task_id)
        if TaskStatus(row["status"]).is_terminal:
            return json_response(task_view(row))
    return json_response(task_view(row, cancel_requested=True), 202)


def _scope(request: web.Request) -> KbScope:
    return principal_of(request).kb_ids


async def _find(request: web.Request, task_id: str) -> repo.TaskRow:
    """The task if the caller may see it; another tenant's task is exactly as
    not-found as a task that never existed."""
    if not is_task_id(task_id):
        raise NotFound(f"task {task_id!r} not found")
    async with request.app[ENGINE].connect() as conn:
        row = await repo.get_task(conn, task_id, scope=_scope(request))
    if row is None:
        raise NotFound(f"task {task_id!r} not found")
    return row


async def admit_one(request: web.Request, valid: ValidTask) -> Admitted:
    """Admit one validated task for the caller: submission checks, the kb's
    bucket, then admission under the request's Idempotency-Key."""
    app = request.app
    principal = principal_of(request)
    await app[CHECKS].check(valid, principal)
    if valid.request.kb_id:
        app[RATE_LIMITS].charge_kbs({valid.request.kb_id: 1})
    [result] = await app[ADMISSION].admit([(valid, idempotency_key(request))], via="rest", owner=principal.owner)
    if isinstance(result, TaskManagerError):
        raise result
    return result


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise InvalidRequest("invalid Idempotency-Key", [FieldError(
            IDEMPOTENCY_HEADER, "must be 1-255 visible ASCII characters (no spaces)")])
    return key


def _item_key(valid: ValidTask, header_key: str | None, index: int) -> str | None:
    own: str | None = getattr(valid.request, "idempotency_key", None)
    if own:
        return own
    return f"{header_key}#{index}" if header_key else None


def _item_result(index: int, outcome: Any) -> BatchItemResult:
    if isinstance(outcome, Admitted):
        created = task_created_view(outcome.task)
        return BatchItemResult(index=index, ok=True, created=outcome.created, task_id=created.task_id,
                               status=created.status, created_at=created.created_at)
    if isinstance(outcome, ValidTask):
        return BatchItemResult(index=index, ok=False, error=ErrorInfo(
            code="not_attempted", message="not created: the atomic batch was refused"))
    assert isinstance(outcome, TaskManagerError)
    details = outcome.errors if isinstance(outcome, InvalidRequest | Forbidden) and outcome.errors else None
    error = ErrorInfo(code=outcome.code, message=outcome.message, details=details) if details else \
        ErrorInfo(code=outcome.code, message=outcome.message)
    return BatchItemResult(index=index, ok=False, error=error)
