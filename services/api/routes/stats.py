"""`/api/v1/stats/*`: what the fleet is doing, for operators (an admin scope
covers these routes once authentication lands)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from loguru import logger

from services.api.http import json_response
from services.api.resources import QUEUE_MONITOR, QUEUE_STATS, WORKER_REGISTRY
from services.api.worker_registry import MISSED_HEARTBEATS, worker_view
from shared.errors import Unavailable
from shared.messages import utcnow

routes = web.RouteTableDef()

QUEUE_STATS_TIMEOUT_SECONDS = 5.0


@routes.get("/api/v1/stats/workers")
async def workers(request: web.Request) -> web.Response:
    """Every worker process heard from within `MISSED_HEARTBEATS` of its
    heartbeat intervals, and totals per stage (stages without workers included)."""
    now = utcnow()
    live = request.app[WORKER_REGISTRY].live()
    views = [worker_view(s, now) for s in live]
    stages: dict[str, dict[str, Any]] = {
        stage: {"stage": stage, "workers": 0, "pool_size": 0, "active": 0, "idle": 0, "processed": 0, "failed": 0}
        for stage in request.app[QUEUE_MONITOR].topology.stages
    }
    for view in views:
        totals = stages.setdefault(view["stage"], {"stage": view["stage"], "workers": 0, "pool_size": 0, "active": 0,
                                                   "idle": 0, "processed": 0, "failed": 0})
        totals["workers"] += 1
        for key in ("pool_size", "active", "idle", "processed", "failed"):
            totals[key] += view[key]
    return json_response({
        "generated_at": now,
        "count": len(views),
        "workers": views,
        "stages": list(stages.values()),
        "expiry": f"a worker is dropped after {MISSED_HEARTBEATS} missed heartbeat intervals, or at once when it stops",
    })


@routes.get("/api/v1/stats/queues")
async def queues(request: web.Request) -> web.Response:
    try:
        body = await asyncio.wait_for(request.app[QUEUE_STATS].snapshot(), QUEUE_STATS_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any broker failure means the same to the caller
        logger.warning("queue stats unavailable: {}: {}", type(exc).__name__, exc)
        raise Unavailable(f"RabbitMQ did not answer ({type(exc).__name__}); retry shortly") from None
    return json_response(body)
