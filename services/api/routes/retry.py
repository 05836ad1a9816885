"""`POST /api/v1/tasks/{id}/retry`: run a failed or cancelled task again."""

from __future__ import annotations

from aiohttp import web

from services.api.http import json_response
from services.api.openapi import Operation, documented
from services.api.resources import ENGINE, PUBLISHER, REGISTRY
from services.api.routes.tasks import TASK_ID_SEGMENT, _find, _scope
from services.api.schemas import TaskView
from services.api.task_retry import TaskRetry
from services.api.views import task_view

routes = web.RouteTableDef()


@routes.post(f"/api/v1/tasks/{{task_id:{TASK_ID_SEGMENT}}}/retry")
@documented(Operation(
    summary="Retry a task",
    description="A failed or cancelled task runs again from its first stage as a new run: the same task id, a "
                "fresh attempt series; the events of earlier runs stay in its history (`GET /api/v1/events`).",
    errors=(409, 503),
    responses={200: (TaskView, "Queued again."),
               202: (TaskView, "Retry sent; the new run was not recorded yet.")},
))
async def retry_task(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    await _find(request, task_id)  # 404 for another tenant's task, as for cancel
    app = request.app
    row, recorded = await TaskRetry(app[ENGINE], app[PUBLISHER], app[REGISTRY]).retry(task_id, _scope(request))
    return json_response(task_view(row), 200 if recorded else 202)
