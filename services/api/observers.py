"""What the api watches besides requests, set up with the app (`cleanup_ctx`):
queue depths (sampled) and the live workers (from their heartbeats)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from services.api.queue_monitor import QueueMonitor
from services.api.queue_stats import QueueStats
from services.api.rabbitmq_management import ManagementApi
from services.api.resources import (
    CONNECTION,
    QUEUE_MONITOR,
    QUEUE_STATS,
    SETTINGS,
    TOPOLOGY,
    WORKER_REGISTRY,
)
from services.api.worker_registry import WorkerRegistry
from shared.health import metrics_handler


async def queue_monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    monitor = QueueMonitor(app[CONNECTION], app[TOPOLOGY])
    app[QUEUE_MONITOR] = monitor
    monitor.start()
    async with aiohttp.ClientSession() as session:
        app[QUEUE_STATS] = QueueStats(monitor, ManagementApi.from_settings(session, settings.amqp))
        yield
    await monitor.stop()


async def worker_registry_ctx(app: web.Application) -> AsyncIterator[None]:
    registry = WorkerRegistry()
    await registry.listen(app[CONNECTION])
    app[WORKER_REGISTRY] = registry
    yield


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    """/metrics, with the live-worker gauge brought up to date first (a worker
    that went quiet sends nothing that would lower it)."""
    request.app[WORKER_REGISTRY].refresh_gauges()
    return await metrics_handler(request)
