"""The api application: REST routes, health, metrics, and the tm.submit consumer."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from services.api.http import error_middleware
from services.api.queue_monitor import QueueMonitor
from services.api.resources import (
    ADMISSION,
    CONNECTION,
    LIMITS,
    PUBLISHER,
    REGISTRY,
    SETTINGS,
    broker_ctx,
    check_broker,
    check_database,
    database_ctx,
)
from services.api.routes.kbs import routes as kb_routes
from services.api.routes.tasks import routes as task_routes
from services.api.submit_consumer import SubmitConsumer
from shared import metrics
from shared.health import health_routes, metrics_handler
from shared.settings import Settings
from shared.task_request import RequestLimits
from shared.task_types import TaskTypeRegistry, default_registry
from shared.topology import Topology

QUEUE_MONITOR = web.AppKey("queue_monitor", QueueMonitor)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        metrics.http_request_duration_seconds.labels(request.method, name, str(status)).observe(
            time.perf_counter() - started
        )


async def submit_consumer_ctx(app: web.Application) -> AsyncIterator[None]:
    channel = await app[CONNECTION].channel()
    consumer = SubmitConsumer(channel, app[ADMISSION], app[PUBLISHER], app[REGISTRY], app[LIMITS])
    await consumer.start()
    yield
    await channel.close()


async def queue_monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    monitor = QueueMonitor(app[CONNECTION], Topology(app[REGISTRY].stages(), settings.amqp.stage_queue_max_length))
    app[QUEUE_MONITOR] = monitor
    monitor.start()
    yield
    await monitor.stop()


def create_app(settings: Settings, registry: TaskTypeRegistry | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.api.max_body_bytes,
        middlewares=[metrics_middleware, error_middleware],
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry or default_registry()
    app[LIMITS] = RequestLimits(
        default_retry_limit=settings.retry.max_retry_attempts, max_retry_limit=settings.api.max_retry_limit
    )
    app.cleanup_ctx.extend([database_ctx, broker_ctx, submit_consumer_ctx, queue_monitor_ctx])

    checks = {"database": lambda: check_database(app), "broker": lambda: check_broker(app)}
    app.add_routes([*health_routes(checks, process="api"), web.get("/metrics", metrics_handler)])
    app.add_routes(task_routes)
    app.add_routes(kb_routes)
    return app
