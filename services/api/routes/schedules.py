"""`/api/v1/schedules`: periodic schedules (cron + time zone + a task template).

The api validates and stores a schedule; the dispatcher fires it (decision 0090,
docs/scheduler.md). A schedule belongs to its template's knowledge base: keys
restricted to other kbs neither see nor touch it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import Field, ValidationError

from services.api import schedule_repository as repo
from services.api.auth import principal_of
from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented
from services.api.resources import CHECKS, ENGINE, LIMITS, REGISTRY
from services.api.schedule_repository import ScheduleRow
from services.api.schemas import _Body
from shared.errors import FieldError, InvalidRequest, NotFound
from shared.ids import is_task_id, new_task_id
from shared.messages import utcnow
from shared.schedules import CatchUp, ScheduleRequest, next_fire_time
from shared.task_request import ValidTask, field_errors, validate_task_request

routes = web.RouteTableDef()

SCHEDULE_ID = "[0-9A-Fa-f-]{32,36}"
MAX_LISTED = 1000
# A template is a task to submit now, not later: each firing is the time it runs.
_NOT_IN_TEMPLATE = ("run_at", "delay_seconds")


class Firing(_Body):
    fire_time: datetime
    fired_at: datetime
    task_id: str | None = Field(description="Null until the api admitted the firing's task.")
    status: str | None


class ScheduleView(_Body):
    schedule_id: str
    name: str | None
    cron: str
    timezone: str
    catch_up: CatchUp
    task: dict[str, Any]
    paused: bool
    next_fire_at: datetime
    last_fire_at: datetime | None
    created_at: datetime
    recent_firings: list[Firing] | None = Field(default=None, description="Newest first (on GET of one).")


class SchedulePage(_Body):
    items: list[ScheduleView]


def _view(row: ScheduleRow, firings: list[ScheduleRow] | None = None) -> ScheduleView:
    extra: dict[str, Any] = {}
    if firings is not None:
        extra["recent_firings"] = [Firing(**f) for f in firings]
    return ScheduleView(
        schedule_id=str(row["id"]), name=row["name"], cron=row["cron"], timezone=row["timezone"],
        catch_up=row["catch_up"], task=row["task"], paused=row["paused"], next_fire_at=row["next_fire_at"],
        last_fire_at=row["last_fire_at"], created_at=row["created_at"], **extra)


@routes.post("/api/v1/schedules")
@documented(Operation(
    summary="Create a periodic schedule", tag="schedules",
    description="Each firing of `cron` (in `timezone`) submits `task`, exactly once even with several "
                "dispatchers. `catch_up` decides about firings missed while no dispatcher ran.",
    body=ScheduleRequest, errors=(422,), responses={201: (ScheduleView, "Created.")},
))
async def create_schedule(request: web.Request) -> web.Response:
    app = request.app
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", [FieldError("body", "expected an object")])
    try:
        spec = ScheduleRequest.model_validate(body)
    except ValidationError as exc:
        errors = field_errors(exc)
        raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors) from None
    valid = _template(spec.task, request)
    await app[CHECKS].check(valid, principal_of(request))

    now = utcnow()
    row = {
        "id": new_task_id(), "name": spec.name, "cron": spec.cron, "timezone": spec.timezone,
        "catch_up": spec.catch_up.value, "task": valid.request.model_dump(mode="json", exclude_none=True),
        "kb_id": valid.request.kb_id, "created_by": principal_of(request).owner, "paused": False,
        "next_fire_at": next_fire_time(spec.cron, spec.timezone, now), "last_fire_at": None,
        "created_at": now, "updated_at": now,
    }
    async with app[ENGINE].begin() as conn:
        await repo.insert_schedule(conn, row)
    return json_response(_view(row), 201, headers={"Location": f"/api/v1/schedules/{row['id']}"})


@routes.get("/api/v1/schedules")
@documented(Operation(summary="List schedules", tag="schedules",
                      description=f"Oldest first, at most {MAX_LISTED}; only the knowledge bases the key may use.",
                      responses={200: (SchedulePage, "The schedules.")}))
async def list_schedules(request: web.Request) -> web.Response:
    async with request.app[ENGINE].connect() as conn:
        rows = await repo.list_schedules(conn, scope=principal_of(request).kb_ids, limit=MAX_LISTED)
    return json_response(SchedulePage(items=[_view(r) for r in rows]))


@routes.get(f"/api/v1/schedules/{{schedule_id:{SCHEDULE_ID}}}")
@documented(Operation(summary="Read a schedule and its recent firings", tag="schedules",
                      responses={200: (ScheduleView, "The schedule.")}))
async def get_schedule(request: web.Request) -> web.Response:
    row = await _find(request)
    async with request.app[ENGINE].connect() as conn:
        firings = await repo.recent_firings(conn, str(row["id"]))
    return json_response(_view(row, firings))


@routes.post(f"/api/v1/schedules/{{schedule_id:{SCHEDULE_ID}}}/pause")
@documented(Operation(summary="Pause a schedule", tag="schedules", responses={200: (ScheduleView, "Paused.")}))
async def pause_schedule(request: web.Request) -> web.Response:
    return await _set_paused(request, paused=True)


@routes.post(f"/api/v1/schedules/{{schedule_id:{SCHEDULE_ID}}}/resume")
@documented(Operation(summary="Resume a schedule", tag="schedules",
                      description="Firings missed while paused are skipped: it resumes from the next one.",
                      responses={200: (ScheduleView, "Resumed.")}))
async def resume_schedule(request: web.Request) -> web.Response:
    return await _set_paused(request, paused=False)


@routes.delete(f"/api/v1/schedules/{{schedule_id:{SCHEDULE_ID}}}")
@documented(Operation(summary="Delete a schedule", tag="schedules",
                      description="Tasks it already submitted are not touched.",
                      responses={204: (None, "Deleted.")}))
async def delete_schedule(request: web.Request) -> web.Response:
    row = await _find(request)
    async with request.app[ENGINE].begin() as conn:
        await repo.delete_schedule(conn, str(row["id"]))
    return web.Response(status=204)


async def _set_paused(request: web.Request, *, paused: bool) -> web.Response:
    row = await _find(request)
    now = utcnow()
    resume_at = None if paused or not row["paused"] else next_fire_time(row["cron"], row["timezone"], now)
    async with request.app[ENGINE].begin() as conn:
        await repo.set_paused(conn, str(row["id"]), paused, resume_at, now)
    return json_response(_view(await _find(request)))


async def _find(request: web.Request) -> ScheduleRow:
    schedule_id = request.match_info["schedule_id"]
    if not is_task_id(schedule_id):
        raise NotFound(f"schedule {schedule_id!r} not found")
    async with request.app[ENGINE].connect() as conn:
        row = await repo.get_schedule(conn, schedule_id, scope=principal_of(request).kb_ids)
    if row is None:
        raise NotFound(f"schedule {schedule_id!r} not found")
    return row


def _template(task: dict[str, Any], request: web.Request) -> ValidTask:
    """The task template, validated as a submission; its errors are named `task.<field>`."""
    errors = [FieldError(f"task.{name}", "not allowed in a schedule's task (each firing runs now)")
              for name in _NOT_IN_TEMPLATE if name in task]
    try:
        valid = validate_task_request(task, request.app[REGISTRY], request.app[LIMITS])
    except InvalidRequest as exc:
        errors.extend(FieldError(f"task.{e['field']}", e["message"]) for e in exc.errors)
        raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors) from None
    if valid.stored_payload != valid.payload:
        errors.append(FieldError("task.payload", "a schedule cannot hold a secret (e.g. a PDF password): "
                                                 "secrets are never stored"))
    if errors:
        raise InvalidRequest("; ".join(f"{e['field']}: {e['message']}" for e in errors), errors)
    return valid
