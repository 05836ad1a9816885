"""The api application: REST routes, health, metrics, and the tm.submit consumer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from services.api.auth import auth_middleware
from services.api.http import error_middleware
from services.api.observers import metrics_endpoint, queue_monitor_ctx, worker_registry_ctx
from services.api.openapi import Operation, documented
from services.api.rate_limit import RATE_LIMITS, RateLimits, TokenBuckets
from services.api.resources import (
    ADMISSION,
    CHECKS,
    CONNECTION,
    LIMITS,
    PUBLISHER,
    REGISTRY,
    SETTINGS,
    TOPOLOGY,
    WORKFLOW_INTAKE,
    broker_ctx,
    check_broker,
    check_database,
    database_ctx,
)
from services.api.routes.bulk import routes as bulk_routes
from services.api.routes.console import routes as console_routes
from services.api.routes.dlq import routes as dlq_routes
from services.api.routes.docs import routes as docs_routes
from services.api.routes.document_chunks import routes as chunk_routes
from services.api.routes.document_reprocess import routes as reprocess_routes
from services.api.routes.events import end_streams_on_shutdown
from services.api.routes.events import routes as event_routes
from services.api.routes.identity import routes as identity_routes
from services.api.routes.kb_reembed import routes as reembed_routes
from services.api.routes.kbs import routes as kb_routes
from services.api.routes.retry import routes as retry_routes
from services.api.routes.schedules import routes as schedule_routes
from services.api.routes.stats import routes as stats_routes
from services.api.routes.tasks import routes as task_routes
from services.api.routes.uploads import routes as upload_routes
from services.api.routes.workflows import routes as workflow_routes
from services.api.schemas import HealthReport
from services.api.submit_consumer import SubmitConsumer
from services.api.upload_retention import IncomingSweeper, store_root_ready
from shared import metrics
from shared.health import health_routes
from shared.runtime import bounded
from shared.settings import Settings
from shared.task_request import RequestLimits
from shared.task_types import TaskTypeRegistry, default_registry


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
    consumer = SubmitConsumer(
        channel, app[ADMISSION], app[PUBLISHER], app[REGISTRY], app[LIMITS], app[CHECKS], app[TOPOLOGY],
        workflows=app[WORKFLOW_INTAKE],
    )
    await consumer.start()
    yield
    await bounded(channel.close(), "closing the tm.submit channel")


async def upload_sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    await asyncio.to_thread(store_root_ready, settings.files.upload_store_root)
    sweeper = IncomingSweeper(settings.files.upload_store_root, settings.retention.sweep_interval_seconds)
    sweeper.start()
    yield
    await sweeper.stop()


HEALTH_DOC = Operation(summary="Health", tag="operations", responses={
    200: (HealthReport, "Healthy (or alive)."), 503: (HealthReport, "Not ready: a dependency check failed.")})
METRICS_DOC = Operation(summary="Prometheus metrics", tag="operations", media_type="text/plain",
                        responses={200: (None, "Prometheus text format.")})


def _documented_ops_routes(routes: list[web.RouteDef]) -> list[web.RouteDef]:
    return [web.RouteDef(r.method, r.path, documented(HEALTH_DOC)(r.handler), r.kwargs) for r in routes]


def create_app(settings: Settings, registry: TaskTypeRegistry | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.api.max_body_bytes,
        # Errors outside auth so refusals get the same JSON shape; auth before any handler.
        middlewares=[metrics_middleware, error_middleware, auth_middleware()],
    )
    app[SETTINGS] = settings
    app[REGISTRY] = registry or default_registry(demo=settings.service.demo_task_types_enabled)
    app[LIMITS] = RequestLimits(
        default_retry_limit=settings.retry.max_retry_attempts,
        max_retry_limit=settings.api.max_retry_limit,
        max_timeout_seconds=settings.api.max_task_timeout_seconds,
    )
    app[RATE_LIMITS] = RateLimits(
        per_key=TokenBuckets(settings.auth.rate_limit_per_second, settings.auth.rate_limit_burst),
        per_kb=TokenBuckets(settings.auth.kb_rate_limit_per_second, settings.auth.kb_rate_limit_burst),
    )
    app.cleanup_ctx.extend(
        [database_ctx, broker_ctx, submit_consumer_ctx, queue_monitor_ctx, worker_registry_ctx, upload_sweeper_ctx]
    )

    checks = {"database": lambda: check_database(app), "broker": lambda: check_broker(app)}
    app.add_routes([*_documented_ops_routes(health_routes(checks, process="api")),
                    web.get("/metrics", documented(METRICS_DOC)(metrics_endpoint))])
    app.add_routes(task_routes)
    app.add_routes(retry_routes)
    app.add_routes(bulk_routes)
    app.add_routes(event_routes)
    app.on_shutdown.append(end_streams_on_shutdown)
    app.add_routes(upload_routes)
    app.add_routes(workflow_routes)
    app.add_routes(dlq_routes)
    app.add_routes(stats_routes)
    app.add_routes(docs_routes)
    app.add_routes(kb_routes)
    app.add_routes(schedule_routes)
    app.add_routes(chunk_routes)
    app.add_routes(reprocess_routes)
    app.add_routes(reembed_routes)
    app.add_routes(identity_routes)
    app.add_routes(console_routes)
    return app
