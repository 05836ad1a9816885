"""`/api/v1/workflows`: submit a set of dependent tasks at once, read its
aggregate state, cancel what is unfinished (docs/decisions/0101)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web

from services.api.auth import principal_of
from services.api.http import json_response, read_json
from services.api.openapi import Operation, documented, workflow_request_model
from services.api.rate_limit import RATE_LIMITS
from services.api.resources import ENGINE, PUBLISHER, WORKFLOW_INTAKE
from services.api.routes.tasks import IDEMPOTENCY_HEADER, idempotency_key
from services.api.workflow_views import WorkflowCreated, WorkflowView, read_workflow, workflow_view
from shared.errors import Conflict, NotFound
from shared.ids import is_task_id
from shared.messages import CancelTask, TaskCancelled, utcnow
from shared.status import TaskStatus

routes = web.RouteTableDef()

WORKFLOW_ID_SEGMENT = "[0-9A-Fa-f-]{32,36}"
_IDEMPOTENCY_DOC = {IDEMPOTENCY_HEADER: ("The same key (per API key) returns the same workflow instead of a second.",
                                         {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"})}


@routes.post("/api/v1/workflows")
@documented(Operation(
    summary="Submit a workflow", tag="workflows",
    description="Tasks that name each other by `ref` in `depends_on`, admitted all or nothing. A cycle, a "
                "dangling or duplicate ref is a 422 naming it.",
    body=workflow_request_model, headers=_IDEMPOTENCY_DOC, errors=(503,),
    responses={201: (WorkflowCreated, "Every task created."),
               200: (WorkflowCreated, "An earlier workflow with this Idempotency-Key.")},
))
async def submit_workflow(request: web.Request) -> web.Response:
    app = request.app
    intake = app[WORKFLOW_INTAKE]
    plan = intake.validate(await read_json(request))
    key = idempotency_key(request)
    app[RATE_LIMITS].charge_kbs(dict(Counter(v.request.kb_id for v in plan.tasks if v.request.kb_id)))
    admitted = await intake.admit(plan, principal_of(request), key)
    return json_response(await intake.created(admitted), status=201 if admitted.created else 200,
                         headers={"Location": f"/api/v1/workflows/{admitted.workflow_id}"})


@routes.get(f"/api/v1/workflows/{{workflow_id:{WORKFLOW_ID_SEGMENT}}}")
@documented(Operation(summary="Read a workflow", tag="workflows",
                      responses={200: (WorkflowView, "Its aggregate state and each task's.")}))
async def get_workflow(request: web.Request) -> web.Response:
    return json_response(workflow_view(await _find(request)))


@routes.delete(f"/api/v1/workflows/{{workflow_id:{WORKFLOW_ID_SEGMENT}}}")
@documented(Operation(
    summary="Cancel a workflow", tag="workflows", errors=(409, 503),
    description="Cancels every unfinished task; waiting ones never run.",
    responses={202: (WorkflowView, "Cancel requested for every unfinished task.")},
))
async def cancel_workflow(request: web.Request) -> web.Response:
    rows = await _find(request)
    if rows[0]["workflow_status"] != "running":
        raise Conflict(f"workflow {rows[0]['workflow_id']} already {rows[0]['workflow_status']}",
                       status=rows[0]["workflow_status"])
    publisher = request.app[PUBLISHER]
    unfinished = [r for r in rows if not TaskStatus(r["status"]).is_terminal]
    # The events make the cancels durable (dispatcher); broadcasts stop what already runs.
    await asyncio.gather(*(publisher.event(TaskCancelled(
        task_id=r["task_id"], run=r["run"], task_type=r["task_type"], kb_id=r["kb_id"],
        stage=r["stage"] or "default", attempt=max(r["attempts"], 1), reason="its workflow was cancelled",
        finished_at=utcnow())) for r in unfinished))
    await asyncio.gather(*(publisher.control(CancelTask(task_id=r["task_id"], reason="its workflow was cancelled"))
                           for r in unfinished if r["status"] != TaskStatus.WAITING))
    return json_response(workflow_view(await _find(request), cancel_requested=True), 202)


async def _find(request: web.Request) -> list[Any]:
    workflow_id = request.match_info["workflow_id"]
    if not is_task_id(workflow_id):
        raise NotFound(f"workflow {workflow_id!r} not found")
    async with request.app[ENGINE].connect() as conn:
        rows = await read_workflow(conn, workflow_id, scope=principal_of(request).kb_ids)
    if rows is None:
        raise NotFound(f"workflow {workflow_id!r} not found")
    return rows
